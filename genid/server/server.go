// Package server is the genid daemon: it owns a run directory (the page and
// the socket), serves the protocol of package wire on the socket, and drives
// one genid.Scope.
//
// Connections are served by one event loop (loop.go) over epoll: an idle
// connection is a small struct and a registered fd, with no goroutine, no
// timer and no buffer, so that ten thousand idle watchers cost little memory
// and wake nothing. conn.go answers requests, output.go writes replies and
// events without ever blocking, waiter.go serves wait-watchers, also without
// a goroutine.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/page"
	"github.com/genid-project/genid/genid/wire"
)

// Config holds the daemon's settings. Zero values mean the defaults.
type Config struct {
	RunDir       string        // default genid.DefaultRunDir
	MaxWatchers  int           // default DefaultMaxWatchers
	MaxConns     int           // default DefaultMaxConns
	MaxPayload   uint32        // largest request payload; default wire.DefaultMaxPayload
	FrameTimeout time.Duration // a started frame must complete within it; default DefaultFrameTimeout
	Logger       *slog.Logger
}

// Defaults of Config.
const (
	DefaultMaxWatchers  = 65536
	DefaultMaxConns     = 100000
	DefaultFrameTimeout = 5 * time.Second
)

func (c *Config) setDefaults() {
	if c.RunDir == "" {
		c.RunDir = genid.DefaultRunDir
	}
	if c.MaxWatchers <= 0 {
		c.MaxWatchers = DefaultMaxWatchers
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = wire.DefaultMaxPayload
	}
	if c.FrameTimeout <= 0 {
		c.FrameTimeout = DefaultFrameTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Server is a running daemon.
type Server struct {
	cfg   Config
	log   *slog.Logger
	page  *page.Writer
	scope *genid.Scope
	sock  string
	loop  *loop

	watchers atomic.Int64
	waits    waits // pending wait-watchers

	mu       sync.Mutex
	backends []string

	bgCtx    context.Context // ends when Serve shuts down: the backends' context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup // backend goroutines, waited for before the page closes
}

// New prepares the run directory: it takes the page (resuming from the
// generation stored there) and binds the socket.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	pg, err := page.Create(filepath.Join(cfg.RunDir, genid.PageFile))
	if err != nil {
		return nil, fmt.Errorf("page: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, page: pg}
	s.waits.srv = s
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	s.scope = genid.NewScope(pg.Load(), pg.Store)

	// The page lock proves no other daemon uses this run dir, so a socket
	// left by a crashed daemon can go.
	s.sock = filepath.Join(cfg.RunDir, genid.SocketFile)
	if err := os.Remove(s.sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		pg.Close()
		return nil, fmt.Errorf("stale socket: %w", err)
	}
	lfd, err := listen(s.sock)
	if err != nil {
		pg.Close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	if s.loop, err = newLoop(s, lfd); err != nil {
		unix.Close(lfd)
		os.Remove(s.sock)
		pg.Close()
		return nil, err
	}
	return s, nil
}

// listen binds a non-blocking unix stream socket at path, open to everyone:
// everyone may watch and ack; bump checks capabilities per request.
func listen(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := os.Chmod(path, 0o666); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return -1, err
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil { // the kernel caps it at net.core.somaxconn
		unix.Close(fd)
		os.Remove(path)
		return -1, err
	}
	return fd, nil
}

// Scope returns the counter the daemon serves, for backends that bump it.
func (s *Server) Scope() *genid.Scope { return s.scope }

// SocketPath returns the path of the daemon's socket.
func (s *Server) SocketPath() string { return s.sock }

// SetBackends records the names of the active backends, for status.
func (s *Server) SetBackends(names []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.backends = append([]string(nil), names...)
}

// Go runs f (a backend) in its own goroutine, with a context that ends when
// Serve shuts down; Serve waits for f to return before it releases the page,
// so a backend never bumps after that. Call it before Serve.
func (s *Server) Go(f func(ctx context.Context)) {
	s.bg.Go(func() { f(s.bgCtx) })
}

// Bump bumps the served scope on behalf of the daemon itself (backends).
func (s *Server) Bump(min uint32, reason string) (uint32, error) {
	gen, err := s.scope.Bump(min, reason)
	if err != nil {
		s.log.Error("bump refused", "reason", reason, "err", err)
		return 0, err
	}
	s.log.Info("bumped", "generation", gen, "reason", reason)
	return gen, nil
}

// Serve serves connections until ctx ends, then removes the socket, closes
// every connection and releases the page (which keeps its value).
func (s *Server) Serve(ctx context.Context) error {
	s.log.Info("serving", "socket", s.sock, "generation", s.scope.Generation(),
		"max_watchers", s.cfg.MaxWatchers, "max_conns", s.cfg.MaxConns)
	stop := context.AfterFunc(ctx, s.loop.stop)
	defer s.shutdown()
	// Deferred calls run last first: the stop is unregistered before
	// shutdown closes the loop (one already started is loop.stop's concern).
	defer stop()
	return s.loop.run()
}

func (s *Server) shutdown() {
	os.Remove(s.sock)
	s.bgCancel()
	s.loop.close() // every connection, and so every pending wait
	s.bg.Wait()    // backends stopped by bgCancel above
	if err := s.page.Close(); err != nil {
		s.log.Warn("page close", "err", err)
	}
	s.log.Info("stopped", "generation", s.scope.Generation())
}

// status assembles what OpStatus returns.
func (s *Server) status() genid.Status {
	st := genid.Status{Generation: s.scope.Generation(), WatcherList: s.scope.Watchers()}
	st.Watchers = len(st.WatcherList)
	for _, w := range st.WatcherList {
		if w.Outdated {
			st.Outdated++
		}
	}
	if last := s.scope.LastBump(); !last.Time.IsZero() {
		st.LastBump = &last
	}
	s.mu.Lock()
	st.Backends = append([]string{}, s.backends...)
	s.mu.Unlock()
	return st
}
