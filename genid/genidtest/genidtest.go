// Package genidtest runs a real genid daemon inside a test, on a temporary
// run directory, without root, so that an application's own tests can check
// that it rebuilds its secrets when the generation changes, as
// net/http/httptest lets them check an HTTP client:
//
//	func TestReseed(t *testing.T) {
//		srv := genidtest.NewServer(t)      // stopped when the test ends
//		app := startApp(t, srv.RunDir)     // the application calls genid.Open(srv.RunDir)
//		srv.WaitRegistered(1)              // its watcher is up
//		old := app.Key()
//		srv.Bump(0, "test")                // as a restore would
//		srv.WaitAcked()                    // it rebuilt, and acked
//		if app.Key() == old {
//			t.Fatal("the same key after a restore")
//		}
//	}
//
// The daemon is the real one, the code of `genidctl daemon`, with no
// hypervisor backend; the test's own process is its administrator. The
// helpers that wait fail the test when what they wait for does not come,
// rather than hang it: call them from the test's goroutine.
//
// Where no testing.TB is at hand, as in an Example, Start does the same:
//
//	srv, err := genidtest.Start()
//	if err != nil { ... }
//	defer srv.Close()
package genidtest

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/servertest"
)

// Patience is how long the helpers that wait (WaitRegistered, WaitAcked)
// wait before they fail the test.
const Patience = 20 * time.Second

// Server is a daemon serving a temporary run directory.
type Server struct {
	// RunDir is the daemon's run directory: pass it to genid.Open, as
	// the application would get genid.DefaultRunDir.
	RunDir string

	t servertest.TB
	d *servertest.Daemon
	// alone is the TB of a Server made by Start, nil with a testing.TB.
	alone *standalone
}

// NewServer starts a daemon on a new temporary directory, at generation 0;
// it stops when the test ends. Its log is shown if the test fails.
func NewServer(t testing.TB) *Server {
	t.Helper()
	d := servertest.Start(t, "", server.Config{})
	return &Server{RunDir: d.RunDir, t: t, d: d}
}

// Start starts a daemon, as NewServer does, for a program that has no
// testing.TB: an Example, a program's self-test. Close stops it, closes
// what its Client and Admin opened, and removes the directory. The
// helpers that would fail a test (Client, WaitAcked...) panic instead,
// with what went wrong.
func Start() (srv *Server, err error) {
	alone := &standalone{}
	defer func() {
		if f, ok := recover().(*failure); ok {
			alone.cleanup()
			srv, err = nil, f
		}
	}()
	d := servertest.Start(alone, "", server.Config{})
	return &Server{RunDir: d.RunDir, t: alone, d: d, alone: alone}, nil
}

// Close stops the daemon; the page keeps its value, and clients wait for a
// daemon to come back. Closing twice is harmless. For a Server made by
// Start, Close also closes its clients and removes its directory.
func (s *Server) Close() {
	s.d.Stop()
	if s.alone != nil {
		s.alone.cleanup()
	}
}

// Restart stops the daemon and starts a new one on the same run directory,
// as after a daemon restart: the generation is kept, clients reconnect by
// themselves and watchers register again.
func (s *Server) Restart() {
	s.t.Helper()
	s.d.Stop()
	s.d = servertest.Start(s.t, s.RunDir, server.Config{})
}

// Client opens a client of the daemon; it is closed when the test ends.
func (s *Server) Client() *genid.Client {
	s.t.Helper()
	c, err := genid.Open(s.RunDir)
	if err != nil {
		s.t.Fatalf("genidtest: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

// Admin returns an administrator's handle on the daemon; it is closed when
// the test ends.
func (s *Server) Admin() *genid.Admin {
	s.t.Helper()
	a, err := genid.OpenAdmin(s.RunDir)
	if err != nil {
		s.t.Fatalf("genidtest: %v", err)
	}
	s.t.Cleanup(func() { a.Close() })
	return a
}

// Bump moves the generation to max(current+1, min), as a restore does,
// and returns the new generation. Its error is the daemon's refusal, such
// as one matching genid.ErrOverflow.
func (s *Server) Bump(min uint32, reason string) (uint32, error) {
	return s.d.Bump("", min, reason)
}

// Generation returns the current generation.
func (s *Server) Generation() uint32 {
	s.t.Helper()
	return s.Status().Generation
}

// Status returns the daemon's status, as an administrator sees it: with
// the list of watchers.
func (s *Server) Status() genid.Status {
	s.t.Helper()
	st, err := s.d.Status("")
	if err != nil {
		s.t.Fatalf("genidtest: status: %v", err)
	}
	return st
}

// WaitRegistered waits until exactly n watchers are registered: for a
// watcher of the application to arrive (or, with n = 0, to go). It fails
// the test after Patience.
func (s *Server) WaitRegistered(n int) {
	s.t.Helper()
	s.d.WaitRegistered("", n)
}

// WaitAcked waits until no watcher is outdated: every one has acked the
// current generation. It fails the test after Patience. A test that expects
// a watcher not to ack asks Admin().WaitWatchers, which fails with
// genid.ErrTimeout.
func (s *Server) WaitAcked() {
	s.t.Helper()
	s.d.WaitAcked("")
}

// SocketPath is the socket of the clients.
func (s *Server) SocketPath() string { return s.d.SocketPath() }

// AdminSocketPath is the administrators' socket.
func (s *Server) AdminSocketPath() string { return s.d.AdminSocketPath() }

// standalone is the servertest.TB of a Server that Start made: a failure
// panics, and the cleanups run at Close.
type standalone struct {
	cleanups []func()
	failed   bool
}

// failure is what a standalone Server's failures panic with.
type failure struct{ msg string }

func (f *failure) Error() string { return "genidtest: " + f.msg }

func (a *standalone) Helper() {}

func (a *standalone) TempDir() string {
	dir, err := os.MkdirTemp("", "genidtest-")
	if err != nil {
		a.Fatalf("%v", err)
	}
	a.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (a *standalone) Cleanup(f func()) { a.cleanups = append(a.cleanups, f) }

func (a *standalone) Failed() bool { return a.failed }

// Logf writes to stderr: the daemon's log, after a failure.
func (a *standalone) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func (a *standalone) Errorf(format string, args ...any) {
	a.failed = true
	a.Logf(format, args...)
}

func (a *standalone) Fatalf(format string, args ...any) {
	a.failed = true
	panic(&failure{fmt.Sprintf(format, args...)})
}

// cleanup runs the cleanups, the last first, as testing does.
func (a *standalone) cleanup() {
	for len(a.cleanups) > 0 {
		f := a.cleanups[len(a.cleanups)-1]
		a.cleanups = a.cleanups[:len(a.cleanups)-1]
		f()
	}
}
