package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/page"
)

func getCommand() *cli.Command {
	return &cli.Command{
		Name:        "get",
		Usage:       "print the current generation",
		Description: "Reads the page RUN_DIR/generation; works without the daemon.",
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			path := filepath.Join(runDir(c), genid.PageFile)
			pg, err := page.Open(path)
			if err != nil {
				return fmt.Errorf("get: %w (has the daemon ever run on this run dir?)", noPage(err))
			}
			defer pg.Close()
			fmt.Println(pg.Load())
			return nil
		},
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the generation, the watchers and the last bump",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON (keys: generation, watchers, outdated, last_bump, watcher_list, backends)"}},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			cl, err := openClient(c)
			if err != nil {
				return err
			}
			defer cl.Close()
			st, err := cl.Status(c.Context)
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

func printStatus(st *genid.Status) {
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
	fmt.Fprintln(tw, "PID\tACKED\tOUTDATED")
	for _, w := range st.WatcherList {
		fmt.Fprintf(tw, "%d\t%d\t%v\n", w.PID, w.Acked, w.Outdated)
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
			"if CMD succeeded; a failed CMD leaves the watcher outdated until the next change.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "once", Usage: "exit after the first change (0 if acked)"},
			&cli.BoolFlag{Name: "exec", Usage: "run the arguments that follow as a command on each change"},
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
	cl, err := openClient(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	w, err := cl.Watch(c.Context)
	if err != nil {
		return err
	}
	defer w.Close()

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
		if err := w.Ack(c.Context, gen); err != nil {
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
		Usage: "move the generation forward (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)",
		Description: "The new generation is max(current+1, MIN); --avoid N means MIN = N+1, so the result\n" +
			"is greater than both the current generation and N. Prints the new generation.",
		Flags: []cli.Flag{
			&cli.Uint64Flag{Name: "min", Usage: "the new generation is at least `N`"},
			&cli.Uint64Flag{Name: "avoid", Usage: "the new generation is greater than `N`"},
			&cli.StringFlag{Name: "reason", Value: "manual", Usage: "recorded with the bump (shown by status)"},
		},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			if c.IsSet("min") && c.IsSet("avoid") {
				return usageError{errors.New("bump: --min and --avoid exclude each other")}
			}
			var min uint32
			switch {
			case c.IsSet("min"):
				v, err := u32Flag(c, "min")
				if err != nil {
					return err
				}
				min = v
			case c.IsSet("avoid"):
				v, err := u32Flag(c, "avoid")
				if err != nil {
					return err
				}
				if min, err = genid.MinAvoiding(v); err != nil {
					return fmt.Errorf("bump: %w", err)
				}
			}
			cl, err := openClient(c)
			if err != nil {
				return err
			}
			defer cl.Close()
			gen, err := cl.Bump(c.Context, min, c.String("reason"))
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
		return 0, usageError{fmt.Errorf("bump: --%s %d does not fit a u32", name, v)}
	}
	return uint32(v), nil
}

func waitWatchersCommand() *cli.Command {
	return &cli.Command{
		Name:        "wait-watchers",
		Usage:       "wait until every watcher has acked the current generation",
		Description: "Exits 0 when no watcher is outdated; exits 5 with a message when --timeout passes first.",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Usage: "give up after this long (0: wait forever)"},
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
			cl, err := openClient(c)
			if err != nil {
				return err
			}
			defer cl.Close()
			return cl.WaitWatchers(c.Context, c.Duration("timeout"))
		},
	}
}

func outdatedCommand() *cli.Command {
	return &cli.Command{
		Name:  "outdated",
		Usage: "print the number of watchers that have not acked the current generation",
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			cl, err := openClient(c)
			if err != nil {
				return err
			}
			defer cl.Close()
			n, err := cl.Outdated(c.Context)
			if err != nil {
				return err
			}
			fmt.Println(n)
			return nil
		},
	}
}
