package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/backend"
	"github.com/genid-project/genid/internal/hooks"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/wire"
)

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "run the genid daemon in the foreground",
		Description: "Keeps the generation page RUN_DIR/generation (resuming from its value) and serves\n" +
			"RUN_DIR/genid.sock. Stops cleanly on SIGTERM or SIGINT: the socket is removed, the page kept.\n" +
			"Under systemd it takes genid.sock and admin.sock from its socket units (socket activation:\n" +
			"file descriptor names genid and admin; the files then stay) and reports readiness (Type=notify).\n" +
			"Hypervisor backends bump the generation when the VM is restored: vmgenid (the kernel's\n" +
			"vmgenid driver, seen through /dev/kmsg) and vmclock (/dev/vmclock0, event-driven on\n" +
			"Linux 7.0+). STATE_DIR keeps each scope's floor and what the backends saw, for the boot:\n" +
			"a removed run dir or a restart resumes from it, and a restore while no daemon ran is bumped.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "max-watchers", Value: server.DefaultMaxWatchers, Usage: "most watchers at once, daemon-wide"},
			&cli.IntFlag{Name: "max-conns", Value: server.DefaultMaxConns, Usage: "most client connections at once, daemon-wide"},
			&cli.IntFlag{Name: "max-watchers-per-user", Value: server.DefaultMaxWatchersPerUser, Usage: "most watchers of one uid (root is not limited per user)"},
			&cli.IntFlag{Name: "max-conns-per-user", Value: server.DefaultMaxConnsPerUser, Usage: "most connections of one uid (root is not limited per user)"},
			&cli.IntFlag{Name: "max-watchers-per-scope", Value: server.DefaultMaxWatchersPerScope, Usage: "most watchers of one container scope"},
			&cli.IntFlag{Name: "max-conns-per-scope", Value: server.DefaultMaxConnsPerScope, Usage: "most connections to one container scope"},
			&cli.IntFlag{Name: "reserve", Usage: fmt.Sprintf("of the daemon-wide limits, the connections and watchers kept for root on the host socket and for restores (default %d, at most an eighth of each)", server.DefaultReserveWatchers)},
			&cli.IntFlag{Name: "max-scopes", Value: server.DefaultMaxScopes, Usage: "most container scopes"},
			&cli.StringFlag{Name: "admin-group", Usage: "`GROUP` (name or gid) whose members are administrators besides root: may use RUN_DIR/admin.sock (default: root only)"},
			&cli.UintFlag{Name: "max-frame", Value: wire.DefaultMaxPayload, Usage: fmt.Sprintf("largest request payload in bytes (%d to %d)", minMaxFrame, maxMaxFrame)},
			&cli.DurationFlag{Name: "frame-timeout", Value: server.DefaultFrameTimeout, Usage: "time a client has to finish a frame it started (and a metrics request its headers)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "backends", Value: backend.ListAuto, Usage: "hypervisor backends that bump on VM restore: " +
				"auto (those this machine has), none, or a comma-separated list of " + strings.Join(backend.Names(), ", ")},
			&cli.DurationFlag{Name: "vmclock-poll", Usage: "check the VMClock device at this interval when it cannot notify " +
				"(default off: the vmclock backend is event-driven only)"},
			&cli.StringFlag{Name: "boot-id", Usage: "the boot's `ID` that ties the state dir to this boot, for a daemon that cannot read " +
				"/proc/sys/kernel/random/boot_id (systemd's ProcSubset=pid: the unit passes %b); default: read it there"},
			&cli.StringFlag{Name: "state-dir", Value: defaultStateDir, EnvVars: []string{"GENID_STATE_DIR"}, Usage: "`DIR` that keeps, for the boot, " +
				"each scope's floor and what the backends saw, so that neither a removed run dir nor a restart loses them " +
				"(docs/state.md); none: no state dir. A user who cannot write the default gets $XDG_STATE_HOME/genid"},
			&cli.StringFlag{Name: "hooks-dir", Value: defaultHooksDir, Usage: "`DIR` of after-restore hooks, run on each bump (\"\": none; see docs/observe.md)"},
			&cli.DurationFlag{Name: "hook-timeout", Value: hooks.DefaultTimeout, Usage: "time a hook may run before it is killed"},
			&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics at `ADDR`/metrics: HOST:PORT, or the path of a unix socket (default: off; genidctl metrics prints them)"},
		},
		Action: runDaemon,
	}
}

// minMaxFrame is the smallest --max-frame that still takes every request the
// protocol defines: a bump on the admin socket with the longest scope name
// and the longest reason.
const minMaxFrame = 1 + wire.MaxName + 8 + wire.MaxReason

// maxMaxFrame bounds --max-frame: the daemon buffers a frame whole.
const maxMaxFrame = 1 << 20

// checkDaemonFlags refuses values the server would otherwise replace by its
// defaults without a word, or that would break clients.
func checkDaemonFlags(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	if n := c.Int("max-watchers"); n < 1 {
		return usageError{fmt.Errorf("daemon: --max-watchers %d: must be at least 1", n)}
	}
	for _, name := range []string{"max-conns", "max-watchers-per-user", "max-conns-per-user", "max-watchers-per-scope", "max-conns-per-scope", "max-scopes"} {
		if n := c.Int(name); n < 1 {
			return usageError{fmt.Errorf("daemon: --%s %d: must be at least 1", name, n)}
		}
	}
	if n := c.Int("reserve"); c.IsSet("reserve") && (n < 1 || n >= c.Int("max-conns") || n >= c.Int("max-watchers")) {
		return usageError{fmt.Errorf("daemon: --reserve %d: must be at least 1 and below --max-conns and --max-watchers", n)}
	}
	if n := c.Uint("max-frame"); n < minMaxFrame || n > maxMaxFrame {
		return usageError{fmt.Errorf("daemon: --max-frame %d: must be between %d (a bump with the longest reason) and %d (1 MiB)", n, minMaxFrame, maxMaxFrame)}
	}
	if d := c.Duration("frame-timeout"); d <= 0 {
		return usageError{fmt.Errorf("daemon: --frame-timeout %v: must be positive", d)}
	}
	if d := c.Duration("vmclock-poll"); d < 0 {
		return usageError{fmt.Errorf("daemon: --vmclock-poll %v is negative", d)}
	}
	if d := c.Duration("hook-timeout"); d <= 0 {
		return usageError{fmt.Errorf("daemon: --hook-timeout %v: must be positive", d)}
	}
	return nil
}

func runDaemon(c *cli.Context) error {
	if err := checkDaemonFlags(c); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return usageError{fmt.Errorf("--log-level: %w", err)}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	dir := runDirFlag(c)
	if dir == "" {
		dir = genid.DefaultRunDir
		if !writable(dir) {
			dir = userRunDir()
			if err := ownPrivateDir(dir); err != nil {
				return fmt.Errorf("daemon: per-user run dir: %w", err)
			}
			log.Info("no access to the system run dir; using a per-user one", "system", genid.DefaultRunDir, "run_dir", dir)
		}
	}
	// The socket's bound name is what clients' getpeername (and so the CRIU
	// plugin) sees: never a relative one.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("daemon: run dir: %w", err)
	}
	// Before the run dir is touched: a wrong list is a usage error.
	backends, err := backend.Parse(c.String("backends"), backend.Options{
		Logger:      log,
		VMClockPoll: c.Duration("vmclock-poll"),
	})
	if err != nil {
		return usageError{fmt.Errorf("--backends: %w", err)}
	}
	stateDir, err := stateDirFlag(c, log)
	if err != nil {
		return err
	}
	adminGroup := -1
	if g := c.String("admin-group"); g != "" {
		if adminGroup, err = lookupGroup(g); err != nil {
			return usageError{fmt.Errorf("--admin-group: %w", err)}
		}
	}
	passed, err := passedSockets()
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	srv, err := server.New(server.Config{
		Listeners:           passed,
		RunDir:              dir,
		StateDir:            stateDir,
		BootID:              c.String("boot-id"),
		MaxWatchers:         c.Int("max-watchers"),
		MaxConns:            c.Int("max-conns"),
		MaxWatchersPerUser:  c.Int("max-watchers-per-user"),
		MaxConnsPerUser:     c.Int("max-conns-per-user"),
		MaxWatchersPerScope: c.Int("max-watchers-per-scope"),
		MaxConnsPerScope:    c.Int("max-conns-per-scope"),
		ReserveConns:        c.Int("reserve"),
		ReserveWatchers:     c.Int("reserve"),
		MaxScopes:           c.Int("max-scopes"),
		AdminGroup:          adminGroup,
		MaxPayload:          uint32(c.Uint("max-frame")),
		FrameTimeout:        c.Duration("frame-timeout"),
		Logger:              log,
		HooksDir:            c.String("hooks-dir"),
		HookTimeout:         c.Duration("hook-timeout"),
	})
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	if addr := c.String("metrics-listen"); addr != "" {
		ln, err := listenMetrics(addr, adminGroup)
		if err != nil {
			return fmt.Errorf("daemon: --metrics-listen: %w", err)
		}
		srv.ServeMetrics(ln)
	}
	log.Info("run dir", "path", dir, "page", filepath.Join(dir, genid.PageFile))
	// All the daemon's work is its event loop's: a second processor only adds
	// wake-ups (with more, the scheduler wakes an idle thread to spin for work
	// that is not there: the bench's barrier at 10 000 watchers made 1 700
	// daemon context switches a round with one, 4 700 to 8 000 with two).
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	startBackends(srv, log, backends)
	notify(log, daemon.SdNotifyReady)
	stop := context.AfterFunc(c.Context, func() { notify(log, daemon.SdNotifyStopping) })
	defer stop()
	return srv.Serve(c.Context)
}

// Names of the sockets a service manager passes (systemd's
// FileDescriptorName=), by the run dir's file each is for.
var socketNames = map[string]string{
	"genid": genid.SocketFile,
	"admin": genid.AdminSocketFile,
}

// passedSockets takes the listening sockets a service manager passed
// (socket activation), by the run dir's file each is for; nil when
// started otherwise. The server checks each and owns them.
func passedSockets() (map[string]int, error) {
	files := activation.Files(true)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if len(files) == 0 {
		return nil, nil
	}
	fds := map[string]int{}
	fail := func(err error) (map[string]int, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, err
	}
	for _, f := range files {
		file, ok := socketNames[f.Name()]
		if !ok {
			return fail(fmt.Errorf("socket activation: a socket named %q: name them genid and admin (FileDescriptorName=)", f.Name()))
		}
		if _, dup := fds[file]; dup {
			return fail(fmt.Errorf("socket activation: two sockets named %q", f.Name()))
		}
		// The server's own copy: the File closes its fd when collected.
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return fail(fmt.Errorf("socket activation: %s: %w", f.Name(), err))
		}
		fds[file] = fd
	}
	return fds, nil
}

// notify tells a service manager (systemd's NOTIFY_SOCKET, Type=notify)
// the daemon's state; without one it does nothing.
func notify(log *slog.Logger, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("sd_notify", "state", state, "err", err)
	}
}

// startBackends runs each backend in its own goroutine under the server,
// which stops them before it releases the pages, and one more that turns
// their events into bumps of every scope (a VM restore duplicated every
// process's memory). A backend that fails is logged and dropped from
// status; the daemon goes on without it, since explicit bumps and the
// other backends still work.
func startBackends(srv *server.Server, log *slog.Logger, bs []backend.Backend) {
	var mu sync.Mutex
	active := backend.BackendNames(bs)
	srv.SetBackends(active)
	if len(bs) == 0 {
		log.Info("no hypervisor backend: the generation changes on explicit bumps only")
		return
	}
	log.Info("hypervisor backends", "active", strings.Join(active, ","))
	events := make(chan backend.Event)
	srv.Go(func(ctx context.Context) {
		for {
			select {
			case ev := <-events:
				if ev.MarkOnly {
					srv.SaveMark(ev.Backend, ev.Mark)
					continue
				}
				if err := srv.BumpAll(ev.Backend); err != nil {
					log.Error("bump failed", "backend", ev.Backend, "err", err)
				}
				srv.SaveMark(ev.Backend, ev.Mark)
			case <-ctx.Done():
				return
			}
		}
	})
	marks, first := srv.Lookback()
	for _, b := range bs {
		srv.Go(func(ctx context.Context) {
			err := b.Run(ctx, backend.Lookback{Mark: marks[b.Name()], First: first}, events)
			srv.SaveMark(b.Name(), b.Mark())
			if ctx.Err() != nil {
				return // the daemon is stopping
			}
			if err == nil {
				err = errors.New("stopped")
			}
			log.Error("backend failed; going on without it", "backend", b.Name(), "err", err)
			mu.Lock()
			defer mu.Unlock()
			active = slices.DeleteFunc(active, func(n string) bool { return n == b.Name() })
			srv.SetBackends(active)
		})
	}
}

// defaultStateDir is the system daemon's state dir (systemd's
// StateDirectory=genid).
const defaultStateDir = "/var/lib/genid"

// stateDirFlag returns the state dir to use ("" for none): --state-dir, or
// for a user who cannot write the default, $XDG_STATE_HOME/genid (default
// ~/.local/state/genid), made private to the user.
func stateDirFlag(c *cli.Context, log *slog.Logger) (string, error) {
	dir := c.String("state-dir")
	switch {
	case dir == "none":
		log.Warn("no state dir: removing the run dir resets the generations")
		return "", nil
	case dir == "":
		return "", usageError{errors.New("daemon: --state-dir: empty (none: no state dir)")}
	case c.IsSet("state-dir") || writable(dir):
		return filepath.Abs(dir)
	}
	user := os.Getenv("XDG_STATE_HOME")
	if user == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("daemon: no access to the state dir %s, and no home for a per-user one: %w (give --state-dir)", dir, err)
		}
		user = filepath.Join(home, ".local", "state")
	}
	user = filepath.Join(user, "genid")
	if err := ownPrivateDir(user); err != nil {
		return "", fmt.Errorf("daemon: per-user state dir: %w (give --state-dir)", err)
	}
	log.Info("no access to the system state dir; using a per-user one", "system", dir, "state_dir", user)
	return user, nil
}

// lookupGroup resolves a group name or number.
func lookupGroup(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil && n >= 0 {
		return n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(gr.Gid)
}

// ownPrivateDir creates dir for this user, or checks that an existing one
// is ours and writable by no one else: under /tmp its name can be guessed.
func ownPrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return fmt.Errorf("%s is not a directory owned by uid %d and writable only by it", dir, os.Geteuid())
	}
	return nil
}

// writable tells whether the daemon can use dir (creating it if need be).
func writable(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			return unix.Access(d, unix.W_OK|unix.X_OK) == nil
		}
		if d == filepath.Dir(d) {
			return false
		}
	}
}
