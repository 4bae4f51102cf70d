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
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
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
	if msg := err.Error(); msg != "" { // cli.Exit("", code) has said all already
		fmt.Fprintf(os.Stderr, "genidctl: %v\n", msg)
	}
	return exitCode(err)
}

func newApp() *cli.App {
	commands := []*cli.Command{
		daemonCommand(),
		getCommand(),
		statusCommand(),
		watchCommand(),
		bumpCommand(),
		waitWatchersCommand(),
		outdatedCommand(),
		scopeCommand(),
		imageInfoCommand(),
		criuHookCommand(),
		ociCommand(),
		ociHookCommand(),
		hooksDCommand(),
		cdiSpecCommand(),
		historyCommand(),
		metricsCommand(),
		doctorCommand(),
		generateCommand(),
	}
	// The commands that ask the daemon and return: each bounded by
	// --timeout (watch and wait-watchers bound their own exchanges).
	for _, cmd := range commands {
		switch cmd.Name {
		case "get", "status", "bump", "outdated", "history", "metrics", "criu-hook", "oci-hook":
			boundCommand(cmd)
		case "scope":
			for _, sub := range cmd.Subcommands {
				boundCommand(sub)
			}
		}
	}
	var each func([]*cli.Command)
	each = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			if cmd.Action != nil {
				cmd.Action = withStartHint(cmd.Action)
			}
			// urfave/cli parses a command's flags with the command's own
			// set: --run-dir after the command needs a flag there too, and
			// a bad flag there reaches the command's OnUsageError, not the
			// App's.
			cmd.Flags = append(cmd.Flags, &cli.StringFlag{
				Name:  "run-dir",
				Usage: "`DIR` of the page and the socket, as before the command (overrides it and GENID_RUN_DIR)",
			})
			cmd.OnUsageError = onUsageError
			each(cmd.Subcommands)
		}
	}
	each(commands)
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
		Commands:             commands,
		EnableBashCompletion: true,
		Action:               rootAction,
		HideHelpCommand:      true,
		ExitErrHandler:       func(*cli.Context, error) {}, // run() reports and maps errors
		OnUsageError:         onUsageError,
	}
}

func onUsageError(c *cli.Context, err error, isSubcommand bool) error {
	if isSubcommand {
		return usageError{fmt.Errorf("%s: %w", c.Command.Name, err)}
	}
	return usageError{err}
}

// rootAction runs when no command matched. urfave/cli's default would print
// "No help topic" and exit 3, which scripts would read as "daemon
// unreachable".
func rootAction(c *cli.Context) error {
	args := c.Args().Slice()
	switch {
	case len(args) == 0:
		return cli.ShowAppHelp(c)
	case args[0] == "help" && len(args) == 1:
		return cli.ShowAppHelp(c)
	case args[0] == "help" && len(args) == 2 && c.App.Command(args[1]) != nil:
		return cli.ShowCommandHelp(c, args[1])
	case args[0] == "help":
		return usageError{fmt.Errorf("help %s: no such command (see genidctl --help)", strings.Join(args[1:], " "))}
	}
	return usageError{fmt.Errorf("unknown command %q (see genidctl --help)", args[0])}
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
	if d := runDirFlag(c); d != "" {
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

// runDirFlag is --run-dir as given after the command, else as given before
// it or by GENID_RUN_DIR; "" if none. Each context's lookup stops at the
// first flag set that defines the name, so the command's empty flag would
// hide the global one: ask each level in turn.
func runDirFlag(c *cli.Context) string {
	for _, cc := range c.Lineage() {
		if d := cc.String("run-dir"); d != "" {
			return d
		}
	}
	return ""
}

// userRunDir is where an unprivileged daemon runs when /run/genid is not
// writable.
func userRunDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "genid")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("genid-%d", os.Getuid()))
}

// openClient opens a client of the scope whose run dir (or scope dir) is
// dir.
func openClient(dir string) (*genid.Client, error) {
	cl, err := genid.Open(dir)
	if err != nil {
		return nil, noPage(err)
	}
	return cl, nil
}

// openAdmin opens the admin socket of the run dir.
func openAdmin(c *cli.Context) (*genid.Admin, error) {
	a, err := genid.OpenAdmin(runDir(c))
	if err != nil {
		return nil, noPage(err)
	}
	return a, nil
}

// noPage marks a missing page as the daemon being unreachable (exit 3): the
// daemon never ran on this run dir, or a container lacks the mount.
func noPage(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", genid.ErrUnreachable, err)
	}
	return err
}

// noArgs refuses positional arguments to a command that takes none.
func noArgs(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", c.Command.Name, c.Args().Slice())}
	}
	return nil
}
