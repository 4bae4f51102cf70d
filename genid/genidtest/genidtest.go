// Package genidtest runs a real genid daemon inside a test, on a temporary
// run directory, without root: so that an application's own tests can
// check that it reseeds when the generation changes, as net/http/httptest
// lets them check an HTTP client.
//
//	srv := genidtest.NewServer(t)
//	app := startApp(srv.RunDir)     // the application opens genid.Open(srv.RunDir)
//	srv.Bump(0, "test")             // as a restore would
//	// ... check that app rebuilt its secrets, and acked
//
// The daemon is the real one (the same code as `genidctl daemon`), with no
// hypervisor backend; the test's own process is its administrator.
package genidtest

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/server"
)

// Server is a daemon serving a temporary run directory.
type Server struct {
	// RunDir is the daemon's run directory: pass it to genid.Open.
	RunDir string

	srv  *server.Server
	stop context.CancelFunc
	done chan error
	t    testing.TB
}

// NewServer starts a daemon on a new temporary directory; it stops when the
// test ends. Its log goes nowhere unless the test fails (then it is logged).
func NewServer(t testing.TB) *Server {
	t.Helper()
	s := &Server{RunDir: t.TempDir(), t: t, done: make(chan error, 1)}
	s.start(t)
	t.Cleanup(s.Close)
	return s
}

func (s *Server) start(t testing.TB) {
	log := &logBuffer{}
	srv, err := server.New(server.Config{RunDir: s.RunDir, Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatalf("genidtest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.srv, s.stop = srv, cancel
	go func() { s.done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("genidtest daemon log:\n%s", log)
		}
	})
}

// Close stops the daemon; the page keeps its value. Closing twice is
// harmless.
func (s *Server) Close() {
	if s.stop == nil {
		return
	}
	s.stop()
	if err := <-s.done; err != nil {
		s.t.Errorf("genidtest: daemon: %v", err)
	}
	s.stop = nil
}

// Restart stops the daemon and starts a new one on the same run directory,
// as after a daemon restart: clients reconnect by themselves.
func (s *Server) Restart() {
	s.t.Helper()
	s.Close()
	s.start(s.t)
}

// Client opens a client of the host scope; it is closed when the test ends.
func (s *Server) Client() *genid.Client {
	s.t.Helper()
	c, err := genid.Open(s.RunDir)
	if err != nil {
		s.t.Fatalf("genidtest: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// Admin returns an administrator's handle; it is closed when the test ends.
func (s *Server) Admin() *genid.Admin {
	a, err := genid.OpenAdmin(s.RunDir)
	if err != nil {
		s.t.Fatalf("genidtest: %v", err)
	}
	s.t.Cleanup(func() { a.Close() })
	return a
}

// Bump bumps the host scope, as a restore would, and returns the new
// generation.
func (s *Server) Bump(min uint32, reason string) (uint32, error) {
	return s.srv.Bump("", min, reason)
}

// Status returns the host scope's status, as an administrator sees it.
func (s *Server) Status() (genid.Status, error) {
	return s.srv.Status("")
}

// SocketPath is the host scope's socket.
func (s *Server) SocketPath() string { return s.srv.SocketPath() }

// AdminSocketPath is the administrators' socket.
func (s *Server) AdminSocketPath() string { return s.srv.AdminSocketPath() }

// logBuffer keeps the daemon's log, written by its goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}
