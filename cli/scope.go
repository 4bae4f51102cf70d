package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/wire"
)

func scopeCommand() *cli.Command {
	return &cli.Command{
		Name:  "scope",
		Usage: "create, remove and list scopes: a generation counter per container (an administrator's)",
		Description: "A scope is a generation counter of its own, with its page and its socket in\n" +
			"RUN_DIR/scopes/NAME: bind-mount that directory at /run/genid in a container (and its\n" +
			"generation file at /dev/sysgenid, its vmclock file at /dev/vmclock0), and the\n" +
			"container's processes see their own counter, bumped when the container is restored,\n" +
			"and nothing of the host's or of other containers'. A VM restore bumps every scope.\n" +
			"See docs/scopes.md.",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a scope; prints its generation",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.Uint64Flag{Name: "start", Usage: "its first generation `N` (default 0)"},
					&cli.IntFlag{Name: "pid", Usage: "the process `PID` it belongs to: it goes when that process ends"},
					&cli.BoolFlag{Name: "exist-ok", Usage: "an existing scope of that name is no error"},
				},
				Action: func(c *cli.Context) error {
					name, err := scopeArg(c)
					if err != nil {
						return err
					}
					start, err := u32Flag(c, "start")
					if err != nil {
						return err
					}
					if c.Int("pid") < 0 {
						return usageError{fmt.Errorf("scope create: --pid %d", c.Int("pid"))}
					}
					a, err := openAdmin(c)
					if err != nil {
						return err
					}
					defer a.Close()
					gen, err := a.CreateScope(c.Context, name, genid.ScopeOptions{Start: start, PID: c.Int("pid"), ExistOK: c.Bool("exist-ok")})
					if err != nil {
						return err
					}
					fmt.Println(gen)
					return nil
				},
			},
			{
				Name:      "remove",
				Usage:     "remove a scope: its members are disconnected, its files removed",
				ArgsUsage: "NAME",
				Action: func(c *cli.Context) error {
					name, err := scopeArg(c)
					if err != nil {
						return err
					}
					a, err := openAdmin(c)
					if err != nil {
						return err
					}
					defer a.Close()
					return a.RemoveScope(c.Context, name)
				},
			},
			{
				Name:  "list",
				Usage: "list the scopes, the host's first",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					if err := noArgs(c); err != nil {
						return err
					}
					a, err := openAdmin(c)
					if err != nil {
						return err
					}
					defer a.Close()
					list, err := a.Scopes(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						enc := json.NewEncoder(os.Stdout)
						enc.SetIndent("", "  ")
						return enc.Encode(list)
					}
					tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "SCOPE\tGENERATION\tWATCHERS\tOUTDATED\tPID\tCREATED")
					for _, s := range list {
						name, pid, created := s.Scope, "-", "-"
						if name == "" {
							name = "(host)"
						}
						if s.PID != 0 {
							pid = strconv.Itoa(s.PID)
						}
						if !s.Created.IsZero() {
							created = s.Created.Format(time.RFC3339)
						}
						fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", name, s.Generation, s.Watchers, s.Outdated, pid, created)
					}
					return tw.Flush()
				},
			},
		},
	}
}

// scopeArg is the one NAME argument of a scope subcommand, checked.
func scopeArg(c *cli.Context) (string, error) {
	if c.NArg() > 1 && strings.HasPrefix(c.Args().Get(1), "-") {
		return "", usageError{fmt.Errorf("scope %s: the flags go before NAME: genidctl scope %s %s %s",
			c.Command.Name, c.Command.Name, strings.Join(c.Args().Tail(), " "), c.Args().First())}
	}
	if c.NArg() != 1 {
		return "", usageError{errors.New("scope " + c.Command.Name + " needs one scope NAME")}
	}
	name := c.Args().First()
	if err := wire.CheckName(name); err != nil {
		return "", usageError{fmt.Errorf("scope %s: %v", c.Command.Name, err)}
	}
	return name, nil
}
