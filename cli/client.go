package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/page"
	"github.com/genid-project/genid/internal/wire"
)

// scopeFlag names the scope a command is about: the host scope if unset.
var scopeFlag = &cli.StringFlag{
	Name:  "scope",
	Usage: "the container scope `NAME` (default: the host scope; in a container, /run/genid is its own scope)",
}

// scopeOf returns the --scope flag, checked.
func scopeOf(c *cli.Context) (string, error) {
	name := c.String("scope")
	if name != "" {
		if err := wire.CheckName(name); err != nil {
			return "", usageError{fmt.Errorf("%s: --scope: %v", c.Command.Name, err)}
		}
	}
	return name, nil
}

// scopeRunDir is where a scope's page and socket are: the run dir for the
// host scope, RUN_DIR/scopes/NAME for another (only root may look there).
func scopeRunDir(c *cli.Context, name string) string {
	if name == "" {
		return runDir(c)
	}
	return filepath.Join(runDir(c), "scopes", name)
}

func getCommand() *cli.Command {
	return &cli.Command{
		Name:  "get",
		Usage: "print the current generation",
		Description: "Reads the page (RUN_DIR/generation, or the scope's); works without the daemon.\n" +
			"Without a page, it connects to the socket: a socket unit then starts the daemon.",
		Flags: []cli.Flag{scopeFlag},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			name, err := scopeOf(c)
			if err != nil {
				return err
			}
			dir := scopeRunDir(c, name)
			pg, err := page.Open(filepath.Join(dir, genid.PageFile))
			if fi, serr := os.Stat(filepath.Join(dir, genid.SocketFile)); errors.Is(err, fs.ErrNotExist) && serr == nil && fi.Mode().Type() == fs.ModeSocket {
				pg, err = activate(c.Context, dir)
			}
			if err != nil {
				return fmt.Errorf("get: %w (has the daemon ever run on this run dir?)", noPage(err))
			}
			defer pg.Close()
			fmt.Println(pg.Load())
			return nil
		},
	}
}

// activate starts a daemon that a socket unit stands for (systemd's socket
// activation: the first connection starts it), when there is no page yet
// but its socket is there, and opens the page it makes. The daemon makes
// the page before it serves; ctx bounds the wait.
func activate(ctx context.Context, dir string) (*page.Reader, error) {
	var d net.Dialer
	sock := filepath.Join(dir, genid.SocketFile)
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("no page yet, and %w at %s: %v", genid.ErrUnreachable, sock, err)
	}
	defer conn.Close()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		pg, err := page.Open(filepath.Join(dir, genid.PageFile))
		if !errors.Is(err, fs.ErrNotExist) {
			return pg, err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("no page in %s: %w", dir, context.Cause(ctx))
		}
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show a scope's generation, watchers and last bump",
		Description: "An administrator (root) sees each watcher's process, through the admin socket; anyone\n" +
			"else sees the counts of the scope they are a member of (the host's, or in a container its own).",
		Flags: []cli.Flag{
			scopeFlag,
			&cli.BoolFlag{Name: "json", Usage: "print JSON (keys: scope, generation, watchers, outdated, last_bump, watcher_list, backends)"},
		},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			name, err := scopeOf(c)
			if err != nil {
				return err
			}
			st, err := scopeStatus(c, name)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(st)
			return nil
		},
	}
}

// scopeStatus asks the admin socket when this user may use it (a named
// scope always needs it), else the scope's own socket.
func scopeStatus(c *cli.Context, name string) (*genid.Status, error) {
	if name != "" || canAdmin(c) {
		a, err := openAdmin(c)
		if err != nil {
			return nil, err
		}
		defer a.Close()
		return a.Status(c.Context, name)
	}
	cl, err := openClient(runDir(c))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return cl.Status(c.Context)
}

// canAdmin tells whether this user may connect to the admin socket (the
// daemon still judges each request).
func canAdmin(c *cli.Context) bool {
	return unix.Access(filepath.Join(runDir(c), genid.AdminSocketFile), unix.W_OK) == nil
}

func printStatus(st *genid.Status) {
	if st.Scope != "" {
		fmt.Printf("scope:      %s\n", st.Scope)
	}
	fmt.Printf("generation: %d\n", st.Generation)
	fmt.Printf("watchers:   %d (%d outdated)\n", st.Watchers, st.Outdated)
	if st.LastBump != nil {
		fmt.Printf("last bump:  to %d, reason %q, at %s\n", st.LastBump.Generation, st.LastBump.Reason, st.LastBump.Time.Format(time.RFC3339))
	} else {
		fmt.Printf("last bump:  none since the daemon started\n")
	}
	if len(st.Backends) > 0 {
		fmt.Printf("backends:   %v\n", st.Backends)
	}
	if len(st.WatcherList) == 0 {
		return
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tUID\tACKED\tOUTDATED")
	for _, w := range st.WatcherList {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%v\n", w.PID, w.UID, w.Acked, w.Outdated)
	}
	tw.Flush()
}

func watchCommand() *cli.Command {
	return &cli.Command{
		Name:      "watch",
		Usage:     "register as a watcher and print each new generation",
		ArgsUsage: "[--exec CMD ARGS...]",
		Description: "For each change, prints the new generation on its own line, runs CMD if given\n" +
			"(with GENID_GENERATION and GENID_PREVIOUS in its environment), then acks, but only\n" +
			"if CMD succeeded; a failed CMD leaves the watcher outdated until the next change.\n" +
			"With --page it does not register: it sleeps on the page (a futex the daemon wakes\n" +
			"with each bump), needs no daemon between changes and acks nothing, so\n" +
			"wait-watchers does not wait for it.",
		Flags: []cli.Flag{
			scopeFlag,
			&cli.BoolFlag{Name: "page", Usage: "sleep on the page instead of registering: no connection, no ack"},
			&cli.BoolFlag{Name: "once", Usage: "exit after the first change (0 if acked, or with --page if CMD succeeded)"},
			&cli.BoolFlag{Name: "exec", Usage: "run the arguments that follow as a command on each change"},
			&cli.DurationFlag{Name: "timeout", Value: defaultTimeout, Usage: "give up when the daemon has not answered a registration or an ack within `DURATION` (exit 5); the wait for a change is not bounded"},
		},
		Action: runWatch,
	}
}

func runWatch(c *cli.Context) error {
	argv := c.Args().Slice()
	if !c.Bool("exec") && len(argv) > 0 {
		return usageError{fmt.Errorf("watch: unexpected arguments %q (use --exec CMD ARGS...)", argv)}
	}
	if c.Bool("exec") && len(argv) == 0 {
		return usageError{errors.New("watch: --exec needs a command")}
	}
	name, err := scopeOf(c)
	if err != nil {
		return err
	}
	timeout := c.Duration("timeout")
	if timeout <= 0 {
		return usageError{fmt.Errorf("watch: --timeout %v: must be positive", timeout)}
	}
	cl, err := openClient(scopeRunDir(c, name))
	if err != nil {
		return err
	}
	defer cl.Close()
	if c.Bool("page") {
		return watchPage(c, cl, argv)
	}
	ctx, cancel := exchangeContext(c, timeout)
	w, err := cl.Watch(ctx)
	err = noAnswer(ctx, fmt.Sprintf("%v (--timeout)", timeout), err)
	cancel()
	if err != nil {
		return err
	}
	defer w.Close()
	// An ack finds the daemon gone when it restarts: it is sent again, to
	// the next daemon, until the timeout (the watcher re-registers first,
	// with what it acked before).
	ack := func(gen uint32) error {
		ctx, cancel := exchangeContext(c, timeout)
		defer cancel()
		for {
			err := w.Ack(ctx, gen)
			if !errors.Is(err, genid.ErrUnreachable) {
				return noAnswer(ctx, fmt.Sprintf("%v (--timeout)", timeout), err)
			}
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return err
			}
		}
	}

	handled := w.Acked()
	for {
		gen, err := w.WaitAfter(c.Context, handled)
		if err != nil {
			if c.Context.Err() != nil {
				return nil // signalled: a normal end
			}
			return fmt.Errorf("watch: %w", err)
		}
		prev := w.Acked()
		fmt.Println(gen)
		handled = gen
		if len(argv) > 0 {
			if err := runHook(c.Context, argv, gen, prev); err != nil {
				fmt.Fprintf(os.Stderr, "genidctl: watch: %v; generation %d not acked\n", err, gen)
				if c.Bool("once") {
					return cli.Exit("", exitFailure)
				}
				continue
			}
		}
		if err := ack(gen); err != nil {
			if errors.Is(err, genid.ErrStale) {
				continue // a newer generation came meanwhile: handle it next
			}
			return fmt.Errorf("watch: %w", err)
		}
		if c.Bool("once") {
			return nil
		}
	}
}

// watchPage is watch --page: each change the page's futex wakes it at is
// printed and handed to the command, with no daemon involved.
func watchPage(c *cli.Context, cl *genid.Client, argv []string) error {
	seen := cl.Generation()
	for {
		gen, err := cl.WaitChange(c.Context, seen)
		if err != nil {
			if c.Context.Err() != nil {
				return nil // signalled: a normal end
			}
			return fmt.Errorf("watch: %w", err)
		}
		fmt.Println(gen)
		prev := seen
		seen = gen
		if len(argv) > 0 {
			if err := runHook(c.Context, argv, gen, prev); err != nil {
				fmt.Fprintf(os.Stderr, "genidctl: watch: %v\n", err)
				if c.Bool("once") {
					return cli.Exit("", exitFailure)
				}
				continue
			}
		}
		if c.Bool("once") {
			return nil
		}
	}
}

func runHook(ctx context.Context, argv []string, gen, prev uint32) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(),
		"GENID_GENERATION="+strconv.FormatUint(uint64(gen), 10),
		"GENID_PREVIOUS="+strconv.FormatUint(uint64(prev), 10))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", argv[0], err)
	}
	return nil
}

func bumpCommand() *cli.Command {
	return &cli.Command{
		Name:  "bump",
		Usage: "move a scope's generation forward (an administrator's: root, or --admin-group)",
		Description: "The new generation is max(current+1, MIN); --avoid N means MIN = N+1, so the result\n" +
			"is greater than both the current generation and N. Prints the new generation.\n" +
			"A bump that would leave the counter at its maximum (4294967295) is refused.",
		Flags: []cli.Flag{
			scopeFlag,
			&cli.BoolFlag{Name: "all-scopes", Usage: "bump every scope, as a VM restore does (prints the host scope's generation)"},
			&cli.Uint64Flag{Name: "min", Usage: "the new generation is at least `N`"},
			&cli.Uint64Flag{Name: "avoid", Usage: "the new generation is greater than `N`"},
			&cli.StringFlag{Name: "reason", Value: "manual", Usage: "recorded with the bump (shown by status)"},
		},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			name, err := scopeOf(c)
			if err != nil {
				return err
			}
			if c.IsSet("min") && c.IsSet("avoid") {
				return usageError{errors.New("bump: --min and --avoid exclude each other")}
			}
			if c.Bool("all-scopes") && (name != "" || c.IsSet("min") || c.IsSet("avoid")) {
				return usageError{errors.New("bump: --all-scopes bumps each by one: no --scope, --min or --avoid")}
			}
			var min uint32
			switch {
			case c.IsSet("min"):
				if min, err = u32Flag(c, "min"); err != nil {
					return err
				}
			case c.IsSet("avoid"):
				v, err := u32Flag(c, "avoid")
				if err != nil {
					return err
				}
				if min, err = genid.MinAvoiding(v); err != nil {
					return fmt.Errorf("bump: %w", err)
				}
			}
			a, err := openAdmin(c)
			if err != nil {
				return err
			}
			defer a.Close()
			var gen uint32
			if c.Bool("all-scopes") {
				gen, err = a.BumpAll(c.Context, c.String("reason"))
			} else {
				gen, err = a.Bump(c.Context, name, min, c.String("reason"))
			}
			if err != nil {
				return err
			}
			fmt.Println(gen)
			return nil
		},
	}
}

// u32Flag reads a generation given on the command line.
func u32Flag(c *cli.Context, name string) (uint32, error) {
	v := c.Uint64(name)
	if v > 1<<32-1 {
		return 0, usageError{fmt.Errorf("%s: --%s %d does not fit a u32", c.Command.Name, name, v)}
	}
	return uint32(v), nil
}

// defaultWaitTimeout is wait-watchers' own: a watcher that never acks
// would hold a waiter without one for ever.
const defaultWaitTimeout = 30 * time.Second

func waitWatchersCommand() *cli.Command {
	return &cli.Command{
		Name:  "wait-watchers",
		Usage: "wait until every watcher of a scope has acked its current generation",
		Description: "Exits 0 when no watcher is outdated; exits 5 with a message when --timeout passes first.\n" +
			"Another scope than one's own (--scope) is waited on through the admin socket.",
		Flags: []cli.Flag{
			scopeFlag,
			&cli.DurationFlag{Name: "timeout", Value: defaultWaitTimeout, Usage: "give up after this long (0: wait forever)"},
		},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			// The protocol's timeout is unsigned: a negative one would wrap
			// to about 49.7 days.
			if d := c.Duration("timeout"); d < 0 {
				return usageError{fmt.Errorf("wait-watchers: --timeout %v is negative (0 waits forever)", d)}
			}
			name, err := scopeOf(c)
			if err != nil {
				return err
			}
			// The daemon ends the wait at the timeout; the client gives it
			// the usual time to answer after that.
			timeout := c.Duration("timeout")
			limit := fmt.Sprintf("%v (--timeout %v, then %v for the answer)", timeout+defaultTimeout, timeout, defaultTimeout)
			ctx := c.Context
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = exchangeContext(c, timeout+defaultTimeout)
				defer cancel()
			}
			if name != "" {
				a, err := openAdmin(c)
				if err != nil {
					return err
				}
				defer a.Close()
				return noAnswer(ctx, limit, a.WaitWatchers(ctx, name, timeout))
			}
			cl, err := openClient(runDir(c))
			if err != nil {
				return err
			}
			defer cl.Close()
			return noAnswer(ctx, limit, cl.WaitWatchers(ctx, timeout))
		},
	}
}

func outdatedCommand() *cli.Command {
	return &cli.Command{
		Name:  "outdated",
		Usage: "print the number of a scope's watchers that have not acked its current generation",
		Flags: []cli.Flag{scopeFlag},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			name, err := scopeOf(c)
			if err != nil {
				return err
			}
			var n int
			if name != "" {
				var a *genid.Admin
				if a, err = openAdmin(c); err != nil {
					return err
				}
				defer a.Close()
				n, err = a.Outdated(c.Context, name)
			} else {
				var cl *genid.Client
				if cl, err = openClient(runDir(c)); err != nil {
					return err
				}
				defer cl.Close()
				n, err = cl.Outdated(c.Context)
			}
			if err != nil {
				return err
			}
			fmt.Println(n)
			return nil
		},
	}
}
