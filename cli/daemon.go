package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/server"
	"github.com/genid-project/genid/genid/wire"
)

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "daemon",
		Usage: "run the genid daemon in the foreground",
		Description: "Keeps the generation page RUN_DIR/generation (resuming from its value) and serves\n" +
			"RUN_DIR/genid.sock. Stops cleanly on SIGTERM or SIGINT: the socket is removed, the page kept.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "max-watchers", Value: server.DefaultMaxWatchers, Usage: "most watchers at once"},
			&cli.IntFlag{Name: "max-conns", Value: server.DefaultMaxConns, Usage: "most client connections at once"},
			&cli.UintFlag{Name: "max-frame", Value: wire.DefaultMaxPayload, Usage: "largest request payload in bytes"},
			&cli.DurationFlag{Name: "frame-timeout", Value: server.DefaultFrameTimeout, Usage: "time a client has to finish a frame it started"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		},
		Action: runDaemon,
	}
}

func runDaemon(c *cli.Context) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return usageError{fmt.Errorf("--log-level: %w", err)}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	dir := c.String("run-dir")
	if dir == "" {
		dir = genid.DefaultRunDir
		if !writable(dir) {
			dir = userRunDir()
			log.Info("no access to the system run dir; using a per-user one", "system", genid.DefaultRunDir, "run_dir", dir)
		}
	}
	if c.Uint("max-frame") > 1<<20 {
		return usageError{fmt.Errorf("--max-frame %d exceeds 1 MiB", c.Uint("max-frame"))}
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
	return srv.Serve(c.Context)
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
