package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/genid"
)

func historyCommand() *cli.Command {
	return &cli.Command{
		Name:  "history",
		Usage: "show the last bumps: when, why, who asked, how long the barrier took, what the hooks did (an administrator's)",
		Description: "The daemon keeps its last 256 bumps, across its restarts. Without --scope, every scope's.\n" +
			"BARRIER is the time from the bump until no watcher was outdated (pending while some are;\n" +
			"superseded when a later bump came first). See docs/observe.md.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "scope", Usage: "only the bumps of scope `NAME` (--scope \"\": the host scope's)"},
			&cli.IntFlag{Name: "last", Usage: "only the last `N`"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON: a list of entries, oldest first (see docs/observe.md)"},
		},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			opts := genid.HistoryOptions{EveryScope: !c.IsSet("scope"), Max: c.Int("last")}
			if opts.Max < 0 {
				return usageError{fmt.Errorf("history: --last %d is negative", opts.Max)}
			}
			if c.IsSet("scope") {
				name, err := scopeOf(c)
				if err != nil {
					return err
				}
				opts.Scope = name
			}
			a, err := openAdmin(c)
			if err != nil {
				return err
			}
			defer a.Close()
			list, err := a.History(c.Context, opts)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			printHistory(list)
			return nil
		},
	}
}

func printHistory(list []genid.HistoryEntry) {
	if len(list) == 0 {
		fmt.Println("no bumps recorded")
		return
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tSCOPE\tGENERATION\tREASON\tBY\tBARRIER\tHOOKS")
	for _, e := range list {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d -> %d\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Local().Format(time.DateTime),
			scopeLabel(e.Scope), e.Previous, e.Generation, e.Reason, who(e), barrier(e), hooksText(e))
	}
	tw.Flush()
}

// scopeLabel names a scope for people: the host's is "host".
func scopeLabel(name string) string {
	if name == "" {
		return "host"
	}
	return name
}

// who tells who asked for a bump, and what it asked.
func who(e genid.HistoryEntry) string {
	var b strings.Builder
	switch e.By {
	case "admin":
		fmt.Fprintf(&b, "admin pid %d uid %d", e.PID, e.UID)
	case "restore":
		fmt.Fprintf(&b, "restore by pid %d", e.PID)
		if r := e.Restore; r != nil {
			if r.RecordedScope != "" {
				fmt.Fprintf(&b, ", checkpoint of %s", r.RecordedScope)
			}
			if r.RecordedGeneration != nil {
				fmt.Fprintf(&b, " at %d", *r.RecordedGeneration)
			}
			if r.TasksPID != 0 {
				fmt.Fprintf(&b, ", tasks pid %d", r.TasksPID)
			}
			if r.ImagesDir != "" {
				fmt.Fprintf(&b, ", images %s", r.ImagesDir)
			}
		}
	default:
		b.WriteString(e.By)
	}
	if e.Min != 0 && e.By != "restore" {
		fmt.Fprintf(&b, ", min %d", e.Min)
	}
	if e.AllScopes {
		b.WriteString(", all scopes")
	}
	return b.String()
}

func barrier(e genid.HistoryEntry) string {
	if d, ok := e.BarrierTime(); ok {
		if e.Outdated == 0 {
			return "none outdated"
		}
		return fmt.Sprintf("%v (%d)", d.Round(time.Microsecond), e.Outdated)
	}
	if e.Barrier == genid.BarrierPending {
		return fmt.Sprintf("pending (%d)", e.Outdated)
	}
	return e.Barrier
}

func hooksText(e genid.HistoryEntry) string {
	if e.Hooks != genid.HooksDone {
		if e.Hooks == "" {
			return "-"
		}
		return e.Hooks
	}
	if len(e.HookResults) == 0 {
		return "none"
	}
	var parts []string
	for _, r := range e.HookResults {
		switch {
		case r.OK():
			parts = append(parts, r.Name+" ok")
		case r.TimedOut:
			parts = append(parts, r.Name+" timed out")
		case r.Error != "":
			parts = append(parts, r.Name+" failed: "+r.Error)
		default:
			parts = append(parts, fmt.Sprintf("%s exit %d", r.Name, r.Exit))
		}
	}
	return strings.Join(parts, "; ")
}
