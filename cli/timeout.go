package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/genid"
)

// defaultTimeout bounds a client command's exchanges with the daemon. A
// stopped daemon is reported at once (exit 3); this is for one that
// accepts and never answers: stuck, or a socket unit whose service fails
// to start, which holds the connection for the next start.
const defaultTimeout = 10 * time.Second

// timeoutFlag is --timeout of the commands that ask the daemon and return.
func timeoutFlag() *cli.DurationFlag {
	return &cli.DurationFlag{
		Name:  "timeout",
		Value: defaultTimeout,
		Usage: "give up when the daemon has not answered within `DURATION` (exit 5)",
	}
}

// boundCommand gives cmd --timeout, which bounds its whole run.
func boundCommand(cmd *cli.Command) {
	cmd.Flags = append(cmd.Flags, timeoutFlag())
	action := cmd.Action
	cmd.Action = func(c *cli.Context) error {
		d := c.Duration("timeout")
		if d <= 0 {
			return usageError{fmt.Errorf("%s: --timeout %v: must be positive", c.Command.Name, d)}
		}
		ctx, cancel := exchangeContext(c, d)
		defer cancel()
		parent := c.Context
		c.Context = ctx
		defer func() { c.Context = parent }()
		return noAnswer(ctx, fmt.Sprintf("%v (--timeout)", d), action(c))
	}
}

// errNoAnswer is the cause of an exchange context's end at its deadline.
var errNoAnswer = errors.New("no answer in time")

// exchangeContext bounds an exchange with the daemon by d.
func exchangeContext(c *cli.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(c.Context, d, errNoAnswer)
}

// noAnswer turns the failure of a call cut short by its exchange context's
// deadline (limit says what it was) into a timeout (exit 5) that says so:
// the call's own error is the deadline, or a connect that it ended.
func noAnswer(ctx context.Context, limit string, err error) error {
	if !errors.Is(context.Cause(ctx), errNoAnswer) || !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, genid.ErrUnreachable) {
		return err
	}
	return &genid.Error{Code: genid.CodeTimeout, Msg: "the daemon did not answer within " + limit + ": is it stuck, or failing to start? see its log"}
}

// withStartHint completes the error of a daemon that cannot be reached
// with what to start.
func withStartHint(action cli.ActionFunc) cli.ActionFunc {
	return func(c *cli.Context) error {
		err := action(c)
		if errors.Is(err, genid.ErrUnreachable) {
			return fmt.Errorf("%w; start it: %s", err, startHint(runDir(c)))
		}
		return err
	}
}

// startHint is the command that starts the daemon of run dir dir: its
// socket units on a system that runs systemd and has them, else the
// daemon itself.
func startHint(dir string) string {
	if dir == genid.DefaultRunDir && systemdUnit("genid.socket") {
		return "systemctl start genid.socket"
	}
	if dir == genid.DefaultRunDir {
		return "genidctl daemon"
	}
	return "genidctl --run-dir " + dir + " daemon"
}

// systemdUnit tells whether systemd runs this system (sd_booted) and has
// unit name installed.
func systemdUnit(name string) bool {
	if fi, err := os.Stat("/run/systemd/system"); err != nil || !fi.IsDir() {
		return false
	}
	for _, d := range []string{"/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(d, name)); err == nil {
			return true
		}
	}
	return false
}
