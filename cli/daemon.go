package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/backend"
	"github.com/genid-project/genid/genid/server"
	"github.com/genid-project/genid/genid/wire"
)

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "run the genid daemon in the foreground",
		Description: "Keeps the generation page RUN_DIR/generation (resuming from its value) and serves\n" +
			"RUN_DIR/genid.sock. Stops cleanly on SIGTERM or SIGINT: the socket is removed, the page kept.\n" +
			"Hypervisor backends bump the generation when the VM is restored: vmgenid (the kernel's\n" +
			"vmgenid driver, seen through /dev/kmsg and, on Linux 6.8, its uevent) and vmclock\n" +
			"(/dev/vmclock0, event-driven on Linux 7.0+).",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "max-watchers", Value: server.DefaultMaxWatchers, Usage: "most watchers at once"},
			&cli.IntFlag{Name: "max-conns", Value: server.DefaultMaxConns, Usage: "most client connections at once"},
			&cli.UintFlag{Name: "max-frame", Value: wire.DefaultMaxPayload, Usage: fmt.Sprintf("largest request payload in bytes (%d to %d)", minMaxFrame, maxMaxFrame)},
			&cli.DurationFlag{Name: "frame-timeout", Value: server.DefaultFrameTimeout, Usage: "time a client has to finish a frame it started"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "backends", Value: backend.ListAuto, Usage: "hypervisor backends that bump on VM restore: " +
				"auto (those this machine has), none, or a comma-separated list of " + strings.Join(backend.Names(), ", ")},
			&cli.DurationFlag{Name: "vmclock-poll", Usage: "check the VMClock device at this interval when it cannot notify " +
				"(default off: the vmclock backend is event-driven only)"},
		},
		Action: runDaemon,
	}
}

// minMaxFrame is the smallest --max-frame that still takes every request the
// protocol defines: a bump with the longest reason (query-peer and attach
// need 8 bytes, the CRIU plugin's bump 8 plus its reason).
const minMaxFrame = 8 + wire.MaxReason

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
	if n := c.Int("max-conns"); n < 1 {
		return usageError{fmt.Errorf("daemon: --max-conns %d: must be at least 1", n)}
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
	srv, err := server.New(server.Config{
		RunDir:       dir,
		MaxWatchers:  c.Int("max-watchers"),
		MaxConns:     c.Int("max-conns"),
		MaxPayload:   uint32(c.Uint("max-frame")),
		FrameTimeout: c.Duration("frame-timeout"),
		Logger:       log,
	})
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
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
	return srv.Serve(c.Context)
}

// startBackends runs each backend in its own goroutine under the server,
// which stops them before it releases the page. A backend that fails is
// logged and dropped from status; the daemon goes on without it, since
// explicit bumps and the other backends still work.
func startBackends(srv *server.Server, log *slog.Logger, bs []backend.Backend) {
	var mu sync.Mutex
	active := backend.BackendNames(bs)
	srv.SetBackends(active)
	if len(bs) == 0 {
		log.Info("no hypervisor backend: the generation changes on explicit bumps only")
		return
	}
	log.Info("hypervisor backends", "active", strings.Join(active, ","))
	bump := func(reason string) error {
		_, err := srv.Bump(0, reason)
		return err
	}
	for _, b := range bs {
		srv.Go(func(ctx context.Context) {
			err := b.Run(ctx, bump)
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
