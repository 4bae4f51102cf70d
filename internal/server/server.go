// Package server is the genid daemon. It owns a run directory, serves the
// host's generation counter and one per container (scopes, see
// docs/scopes.md), each with its page and its socket, and the
// administrators' socket, all on one event loop.
//
// The loop (loop.go) alone touches the daemon's state; other goroutines
// post work to it. Each scope's state machine is package scope: no I/O, it
// returns what is left to do, which publish.go carries out. The files:
//
//	server.go    configuration, start, stop, what other goroutines may call
//	loop.go      the epoll loop: accept, read, dispatch to the handlers
//	timers.go    the loop's timers
//	conn.go      a connection's state
//	read.go      input: peeking, holding and consuming requests
//	write.go     output: replies and events, never blocking; back-pressure
//	dispatch.go  the requests of the scopes' sockets and of the admin socket
//	publish.go   a change of a scope: page, events, waits; bumps
//	waits.go     wait-watchers
//	scopes.go    the scopes: their files, their processes, create, remove
//	pages.go     a scope's two pages: the generation page, the VMClock page
//	restore.go   a CRIU restore's scope
//	limits.go    per user, per scope, daemon-wide, and the reserve
//	peer.go      who is at the other end, and who is an administrator
//	diag.go      query-peer (sock_diag)
//	status.go    status and scope lists
//	history.go   the history of bumps, their barriers; historyfile.go its file
//	metrics.go   the metrics; hooks.go the after-restore hooks
//	sys.go       raw system calls
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/floor"
	"github.com/genid-project/genid/internal/slots"
	"github.com/genid-project/genid/internal/wire"
)

// Config holds the daemon's settings. Zero values mean the defaults.
type Config struct {
	RunDir string // default genid.DefaultRunDir
	// StateDir keeps what the run dir must not take with it, for the
	// boot: each scope's floor and the backends' marks (package floor,
	// docs/state.md). Empty: none, and removing the run dir resets the
	// generations (the daemon command always gives one).
	StateDir string
	// BootIDPath is where the boot's id is read; default floor.BootIDPath.
	BootIDPath string
	// BootID, if set, is the boot's id, for a daemon that cannot read
	// BootIDPath (systemd's ProcSubset=pid hides /proc/sys).
	BootID string

	MaxConns            int // connections at once, daemon-wide
	MaxWatchers         int // watchers at once, daemon-wide
	MaxConnsPerUser     int // per uid, root excepted
	MaxWatchersPerUser  int
	MaxConnsPerScope    int // per container scope
	MaxWatchersPerScope int
	ReserveConns        int // of MaxConns, kept for root on the host socket
	ReserveWatchers     int // of MaxWatchers, kept for root and restores
	MaxAdminConns       int // the admin socket's own pool
	MaxScopes           int // container scopes

	// AdminGroup, if not negative, is a group whose members are
	// administrators, besides root; the admin socket is then 0660 with
	// that group. Negative: root only (0600). The zero value means none.
	AdminGroup int

	// Listeners are listening sockets a service manager made for the
	// daemon (systemd's socket activation), by the run dir's file each is
	// for: genid.SocketFile, genid.AdminSocketFile. The daemon serves them
	// in place of binding its own, after checking them (see adopt), and
	// closes them, but leaves their files, which are their maker's. New
	// takes them over, even when it fails.
	Listeners map[string]int

	MaxPayload   uint32        // largest request payload; default wire.DefaultMaxPayload
	FrameTimeout time.Duration // a started frame (or metrics request header) must complete within it; default DefaultFrameTimeout
	Logger       *slog.Logger
	// Now is the clock of the bump records (tests); default time.Now.
	Now func() time.Time

	// HooksDir holds the after-restore hooks, run on each bump (hooks.go);
	// "" for none. HookTimeout bounds each (default hooks.DefaultTimeout).
	HooksDir    string
	HookTimeout time.Duration
}

// Defaults of Config.
const (
	DefaultMaxConns            = 100000
	DefaultMaxWatchers         = 65536
	DefaultMaxConnsPerUser     = 4096
	DefaultMaxWatchersPerUser  = 4096
	DefaultMaxConnsPerScope    = 8192
	DefaultMaxWatchersPerScope = 4096
	DefaultReserveConns        = 1024
	DefaultReserveWatchers     = 1024
	DefaultMaxAdminConns       = 64
	DefaultMaxScopes           = 4096
	DefaultFrameTimeout        = 5 * time.Second
)

// noGroup is a group not given: Config.AdminGroup once defaults are set
// when there is no admin group (the zero value or any negative one), and
// a socket's file left with the daemon's own group.
const noGroup = -1

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.RunDir == "" {
		c.RunDir = genid.DefaultRunDir
	}
	if c.BootIDPath == "" {
		c.BootIDPath = floor.BootIDPath
	}
	def(&c.MaxConns, DefaultMaxConns)
	def(&c.MaxWatchers, DefaultMaxWatchers)
	def(&c.MaxConnsPerUser, DefaultMaxConnsPerUser)
	def(&c.MaxWatchersPerUser, DefaultMaxWatchersPerUser)
	def(&c.MaxConnsPerScope, DefaultMaxConnsPerScope)
	def(&c.MaxWatchersPerScope, DefaultMaxWatchersPerScope)
	def(&c.MaxAdminConns, DefaultMaxAdminConns)
	def(&c.MaxScopes, DefaultMaxScopes)
	if c.ReserveConns <= 0 {
		c.ReserveConns = min(DefaultReserveConns, c.MaxConns/8)
	}
	if c.ReserveWatchers <= 0 {
		c.ReserveWatchers = min(DefaultReserveWatchers, c.MaxWatchers/8)
	}
	if c.AdminGroup <= 0 {
		c.AdminGroup = noGroup
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
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Server is a running daemon.
type Server struct {
	cfg   Config
	log   *slog.Logger
	euid  uint32
	clock func() time.Time
	loop  *loop

	rundirfd, scopesfd, statefd int
	adminfd                     int
	adminSock                   string
	adminKept                   bool // the admin socket's file is its maker's

	// Owned by the loop goroutine.
	scopes     map[string]*scopeState // by name; the host scope is ""
	root       *scopeState
	users      map[uint32]*usage
	total      usage
	adminConns int
	queries    queries
	backends   []string
	floors     map[string]*floor.Scope // by scope name; nil entries without a state dir
	owners     *slots.File             // RUN_DIR/state/owners: the scopes' metas

	floor        *floor.Store // nil without a state dir
	fresh        bool         // the boot's first daemon of the run dir
	marks        map[string]json.RawMessage
	markMu       sync.Mutex
	pendingMarks map[string]json.RawMessage // saved while stopping, written by shutdown
	obs          observer                   // history, metrics, hooks (history.go)

	bgCtx    context.Context // ends when Serve shuts down: the backends' context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup // backend goroutines, waited for before the pages close
}

// New prepares the run directory: it takes the host scope's page (resuming
// from the generation stored there), serves the scopes a previous daemon
// left, and binds the sockets.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger, euid: uint32(os.Geteuid()), clock: cfg.Now,
		rundirfd: noFD, scopesfd: noFD, statefd: noFD, adminfd: noFD,
		scopes: map[string]*scopeState{}, users: map[uint32]*usage{}}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	passed := maps.Clone(cfg.Listeners)
	ok := false
	defer func() {
		if !ok {
			for _, fd := range passed {
				unix.Close(fd)
			}
			s.release()
		}
	}()
	// take returns the socket passed for a file of the run dir, now the
	// server's to close.
	take := func(file string) (int, bool) {
		fd, found := passed[file]
		delete(passed, file)
		return fd, found
	}
	for file := range passed {
		if file != genid.SocketFile && file != genid.AdminSocketFile {
			return nil, fmt.Errorf("a socket passed for %q: the daemon takes %s and %s only", file, genid.SocketFile, genid.AdminSocketFile)
		}
	}
	var err error
	if err := os.MkdirAll(filepath.Dir(cfg.RunDir), 0o755); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	if s.rundirfd, err = openDir(unix.AT_FDCWD, cfg.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("run dir %s: %w", cfg.RunDir, err)
	}
	if s.scopesfd, err = openDir(s.rundirfd, scopesDir, 0o700); err != nil {
		return nil, fmt.Errorf("run dir %s: %s: %w", cfg.RunDir, scopesDir, err)
	}
	if s.statefd, err = openDir(s.rundirfd, stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("run dir %s: %s: %w", cfg.RunDir, stateDir, err)
	}
	if s.loop, err = newLoop(s); err != nil {
		return nil, err
	}
	// The state before the host scope's page: the page resumes at its
	// floor, and a page already there means a daemon served the run dir
	// in this boot (or the run dir outlived one).
	var pst unix.Stat_t
	pageExisted := unix.Fstatat(s.rundirfd, genid.PageFile, &pst, unix.AT_SYMLINK_NOFOLLOW) == nil
	if err := s.openFloor(pageExisted); err != nil {
		return nil, err
	}
	// The host scope's page first: its lock proves that no other daemon
	// serves this run dir, so the sockets left by a crashed one can go.
	// Then the admin socket: whoever sees the host scope's socket appear
	// finds the admin socket there.
	if s.root, err = s.openPage("", cfg.RunDir, s.rundirfd); err != nil {
		return nil, err
	}
	if err := s.openOwners(); err != nil {
		return nil, err
	}
	s.observeInit() // the history's file is this daemon's now
	s.adminSock = filepath.Join(cfg.RunDir, genid.AdminSocketFile)
	mode := uint32(0o600)
	if cfg.AdminGroup != noGroup {
		mode = 0o660
	}
	if fd, found := take(genid.AdminSocketFile); found {
		s.adminfd, s.adminKept = fd, true
		if err := adopt(fd, s.rundirfd, genid.AdminSocketFile, s.adminSock, mode, cfg.AdminGroup, true); err != nil {
			return nil, err
		}
	} else {
		if err := unix.Unlinkat(s.rundirfd, genid.AdminSocketFile, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("stale admin socket: %w", err)
		}
		if s.adminfd, err = listen(s.adminSock, mode, cfg.AdminGroup, true); err != nil {
			return nil, fmt.Errorf("listen %s: %w", s.adminSock, err)
		}
	}
	if err := s.loop.watch(s.adminfd, special{kind: specialAdmin}); err != nil {
		return nil, err
	}
	if fd, found := take(genid.SocketFile); found {
		s.root.lfd, s.root.kept = fd, true
		if err := adopt(fd, s.rundirfd, genid.SocketFile, s.root.sock, 0o666, noGroup, false); err != nil {
			return nil, err
		}
	} else if err := s.listenScope(s.root); err != nil {
		return nil, err
	}
	if err := s.serveScope(s.root); err != nil {
		return nil, err
	}
	if err := s.loadScopes(); err != nil {
		return nil, err
	}
	if err := s.resumeFromFloor(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// release closes what New opened, for a New that failed or a Serve that
// ended. The files stay: the pages keep their values.
func (s *Server) release() {
	if s.loop != nil {
		s.loop.close() // every connection first: they may still write
	}
	for _, st := range s.scopes {
		if st.lfd != noFD {
			unix.Close(st.lfd)
			if !st.kept {
				unix.Unlinkat(st.dirfd, genid.SocketFile, 0)
			}
		}
		closeFD(st.pidfd)
		if err := st.page.Close(); err != nil {
			s.log.Warn("page close", "scope", st.label(), "err", err)
		}
		if st != s.root {
			unix.Close(st.dirfd)
		}
	}
	if s.root != nil && s.scopes[""] == nil { // opened, not yet served
		closeFD(s.root.lfd)
		s.root.page.Close()
	}
	if s.adminfd != noFD {
		unix.Close(s.adminfd)
		if !s.adminKept {
			unix.Unlinkat(s.rundirfd, genid.AdminSocketFile, 0)
		}
	}
	s.observeClose()
	if s.owners != nil {
		s.owners.Close()
	}
	for _, fd := range []int{s.statefd, s.scopesfd, s.rundirfd} {
		closeFD(fd)
	}
	s.closeFloors()
}

// SocketPath returns the path of the host scope's socket.
func (s *Server) SocketPath() string { return s.root.sock }

// AdminSocketPath returns the path of the administrators' socket.
func (s *Server) AdminSocketPath() string { return s.adminSock }

// SetBackends records the names of the active backends, for status.
func (s *Server) SetBackends(names []string) {
	names = append([]string{}, names...)
	s.loop.post(func() { s.backends = names })
}

// Go runs f (a backend) in its own goroutine, with a context that ends when
// Serve shuts down; Serve waits for f to return before it releases the
// pages, so a backend never bumps after that. Call it before Serve.
func (s *Server) Go(f func(ctx context.Context)) {
	s.bg.Go(func() { f(s.bgCtx) })
}

// ErrStopped is returned by the methods below once the daemon stopped.
var ErrStopped = errors.New("genid daemon stopped")

// do runs f on the loop and waits for it; it fails when the loop is gone.
// Before Serve, f waits until Serve runs it.
func (s *Server) do(f func()) error {
	done := make(chan struct{})
	if !s.loop.post(func() { f(); close(done) }) {
		return ErrStopped
	}
	select {
	case <-done:
		return nil
	case <-s.bgCtx.Done():
		return ErrStopped
	}
}

// Bump bumps scope name (the host's: "") on behalf of the daemon itself,
// and returns the new generation.
func (s *Server) Bump(name string, min uint32, reason string) (uint32, error) {
	var gen uint32
	var err error
	if derr := s.do(func() {
		st := s.scopes[name]
		if st == nil {
			err = fmt.Errorf("no scope %q: %w", name, errNotFound)
			return
		}
		gen, err = s.bump(st, min, s.daemonCause(reason, false))
	}); derr != nil {
		return 0, derr
	}
	return gen, err
}

// BumpAll bumps every scope: a backend saw the VM restored.
func (s *Server) BumpAll(reason string) error {
	return s.do(func() { s.bumpAll(s.daemonCause(reason, true)) })
}

// Status returns a scope's status as an administrator sees it.
func (s *Server) Status(name string) (genid.Status, error) {
	var st genid.Status
	var err error
	if derr := s.do(func() {
		sc := s.scopes[name]
		if sc == nil {
			err = fmt.Errorf("no scope %q: %w", name, errNotFound)
			return
		}
		st = s.status(sc, true)
	}); derr != nil {
		return st, derr
	}
	return st, err
}

// Serve serves until ctx ends, then removes the sockets, closes every
// connection and releases the pages (which keep their values).
func (s *Server) Serve(ctx context.Context) error {
	s.log.Info("serving", "socket", s.root.sock, "admin_socket", s.adminSock, "passed_sockets", len(s.cfg.Listeners), "generation", s.root.core.Generation(),
		"scopes", len(s.scopes)-1, "max_watchers", s.cfg.MaxWatchers, "max_conns", s.cfg.MaxConns)
	stop := context.AfterFunc(ctx, s.loop.stop)
	defer s.shutdown()
	// Deferred calls run last first: the stop is unregistered before
	// shutdown closes the loop (one already started is loop.stop's concern).
	defer stop()
	return s.loop.run()
}

func (s *Server) shutdown() {
	s.bgCancel()
	s.bg.Wait() // backends stopped by bgCancel above
	s.loop.runPosted()
	s.saveFinalMarks()
	gen := s.root.core.Generation()
	s.release()
	s.log.Info("stopped", "generation", gen)
}

// connClosed forgets a connection the loop closed: its watcher stops
// counting, its wait is dropped, its restore ends, its slot is free.
func (s *Server) connClosed(c *conn) {
	s.dropWait(c)
	if c.restore != nil {
		s.endRestore(c)
	}
	if w := c.watcher; w != nil {
		c.watcher = nil
		s.releaseWatcher(c)
		s.apply(c.scope, c.scope.core.Close(w))
	}
	s.releaseConn(c)
}
