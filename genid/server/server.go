// Package server is the genid daemon: it owns a run directory (the page and
// the socket), serves the protocol of package wire on the socket, and drives
// one genid.Scope.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

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
	ln    *net.UnixListener
	sock  string

	nconns   atomic.Int64
	watchers atomic.Int64
	serving  sync.WaitGroup // connection goroutines

	mu       sync.Mutex
	conns    map[*conn]struct{}
	backends []string
	closed   bool

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
	s := &Server{cfg: cfg, log: cfg.Logger, page: pg, conns: make(map[*conn]struct{})}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	s.scope = genid.NewScope(pg.Load(), pg.Store)

	// The page lock proves no other daemon uses this run dir, so a socket
	// left by a crashed daemon can go.
	s.sock = filepath.Join(cfg.RunDir, genid.SocketFile)
	if err := os.Remove(s.sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		pg.Close()
		return nil, fmt.Errorf("stale socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.sock, Net: "unix"})
	if err != nil {
		pg.Close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	// Everyone may watch and ack; bump checks capabilities per request.
	if err := os.Chmod(s.sock, 0o666); err != nil {
		ln.Close()
		pg.Close()
		return nil, fmt.Errorf("socket: %w", err)
	}
	s.ln = ln
	return s, nil
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

// Serve accepts connections until ctx ends, then removes the socket, closes
// every connection and releases the page (which keeps its value).
func (s *Server) Serve(ctx context.Context) error {
	s.log.Info("serving", "socket", s.sock, "generation", s.scope.Generation(),
		"max_watchers", s.cfg.MaxWatchers, "max_conns", s.cfg.MaxConns)
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	defer s.shutdown()

	var delay time.Duration
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				// Out of fds or similar: back off instead of spinning.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept", "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		if s.nconns.Add(1) > int64(s.cfg.MaxConns) {
			s.nconns.Add(-1)
			c.Close()
			s.log.Warn("connection refused: too many connections", "max_conns", s.cfg.MaxConns)
			continue
		}
		cn, err := newConn(s, c)
		if err != nil {
			s.nconns.Add(-1)
			c.Close()
			s.log.Warn("connection dropped", "err", err)
			continue
		}
		if !s.track(cn) {
			cn.cleanup()
			return nil
		}
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			cn.serve()
		}()
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.nconns.Add(-1)
}

func (s *Server) shutdown() {
	s.ln.Close()
	s.bgCancel()
	s.mu.Lock()
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.hangUp()
	}
	s.serving.Wait()
	s.bg.Wait() // backends stopped by bgCancel above
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
