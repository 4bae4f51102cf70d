// Command genidctl is genid in one static binary: the daemon that keeps the
// system generation counter, and every client command.
//
// Exit codes: 0 success, 1 other failure, 2 usage, 3 daemon unreachable,
// 4 permission denied, 5 timeout, 6 stale generation, 7 interrupted,
// 8 generation overflow.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/genid"
)

// Exit codes, stable for scripts.
const (
	exitFailure     = 1
	exitUsage       = 2
	exitUnreachable = 3
	exitPermission  = 4
	exitTimeout     = 5
	exitStale       = 6
	exitInterrupted = 7
	exitOverflow    = 8
)

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	// CRIU runs an action script by path, without arguments: genidctl
	// itself is then the hook (`criu --action-script /usr/bin/genidctl`).
	if len(args) == 1 && os.Getenv("CRTOOLS_SCRIPT_ACTION") != "" {
		args = append(args, "criu-hook")
	}
	app := newApp()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := app.RunContext(ctx, args)
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "genidctl: %v\n", err)
	return exitCode(err)
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "genidctl",
		Usage: "system generation counter: tells processes that the machine or container was restored from a snapshot",
		Description: "The generation is a u32 that starts at 0 and grows each time the system is restored.\n" +
			"Processes read it from the page RUN_DIR/generation (mmap it), or watch it through the\n" +
			"daemon's socket RUN_DIR/genid.sock, rebuild what must not be shared between clones, and ack.",
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "run-dir",
				Usage:   "directory of the page and the socket (default /run/genid; for a non-root user without access, $XDG_RUNTIME_DIR/genid)",
				EnvVars: []string{"GENID_RUN_DIR"},
			},
		},
		Commands: []*cli.Command{
			daemonCommand(),
			getCommand(),
			statusCommand(),
			watchCommand(),
			bumpCommand(),
			waitWatchersCommand(),
			outdatedCommand(),
			imageInfoCommand(),
			criuHookCommand(),
			ociCommand(),
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // run() reports and maps errors
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
	}
}

// usageError marks a wrong command line.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func exitCode(err error) int {
	var u usageError
	switch {
	case errors.As(err, &u):
		return exitUsage
	case errors.Is(err, genid.ErrUnreachable):
		return exitUnreachable
	case errors.Is(err, genid.ErrPermission):
		return exitPermission
	case errors.Is(err, genid.ErrTimeout):
		return exitTimeout
	case errors.Is(err, genid.ErrStale):
		return exitStale
	case errors.Is(err, genid.ErrInterrupted):
		return exitInterrupted
	case errors.Is(err, genid.ErrOverflow):
		return exitOverflow
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return exitFailure
}

// runDir resolves the run directory for a client command: the flag or
// GENID_RUN_DIR, else the system one when it is there or we are root, else
// the per-user one a non-root daemon would pick.
func runDir(c *cli.Context) string {
	if d := c.String("run-dir"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return genid.DefaultRunDir
	}
	if _, err := os.Stat(filepath.Join(genid.DefaultRunDir, genid.PageFile)); err == nil {
		return genid.DefaultRunDir
	}
	return userRunDir()
}

// userRunDir is where an unprivileged daemon runs when /run/genid is not
// writable.
func userRunDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "genid")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("genid-%d", os.Getuid()))
}

func openClient(c *cli.Context) (*genid.Client, error) {
	dir := runDir(c)
	cl, err := genid.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("%w (is the daemon running? start it with: genidctl --run-dir %s daemon)", err, dir)
	}
	return cl, nil
}
