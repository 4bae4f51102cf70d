package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/checkpoint"
	"github.com/genid-project/genid/genid"
)

func imageInfoCommand() *cli.Command {
	return &cli.Command{
		Name:      "image-info",
		Usage:     "print what genid recorded in a CRIU checkpoint",
		ArgsUsage: "IMAGES_DIR",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the record as JSON"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError{errors.New("image-info needs the checkpoint's images dir")}
			}
			dir := c.Args().First()
			r, err := checkpoint.ReadRecord(dir)
			switch {
			case errors.Is(err, checkpoint.ErrOldRecord):
				fmt.Fprintf(os.Stderr, "genidctl: image-info: %v\n", err)
			case errors.Is(err, fs.ErrNotExist):
				return fmt.Errorf("image-info: %s has no %s: the checkpoint was taken without genid (a restore still bumps the host scope by one)", dir, checkpoint.RecordName)
			case err != nil:
				return fmt.Errorf("image-info: %w", err)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			writer := r.Writer
			if writer == "" {
				writer = "criu plugin"
			}
			fmt.Printf("recorded:   %s by %s (record version %d)\n", r.Time.Format(time.RFC3339), writer, r.Version)
			if r.RunDir != "" {
				fmt.Printf("daemon:     %s\n", r.RunDir)
			}
			for _, s := range r.Scopes {
				name := s.Name
				if name == "" {
					name = "(host)"
				}
				gen := "none (no page)"
				if s.Generation != nil {
					gen = strconv.FormatUint(uint64(*s.Generation), 10)
				}
				fmt.Printf("scope %s: generation %s\n", name, gen)
				for _, m := range s.Mounts {
					what := "directory"
					switch {
					case m.VMClock:
						what = "VMClock page"
					case m.File:
						what = "page"
					}
					fmt.Printf("  mount %d: its %s at %s\n", m.ID, what, m.Path)
				}
			}
			fmt.Printf("sockets:    %d\n", len(r.Sockets))
			for _, s := range r.Sockets {
				kind := "client"
				if s.Watcher {
					kind = fmt.Sprintf("watcher, acked %d", s.Acked)
				}
				fmt.Printf("  inode %d: %s of scope %q (%s)\n", s.Inode, kind, s.Scope, s.Path)
			}
			return nil
		},
	}
}

func criuHookCommand() *cli.Command {
	return &cli.Command{
		Name:  "criu-hook",
		Usage: "CRIU action script: record the generation at post-dump, bump past it at post-restore",
		Description: "CRIU runs action scripts by path without arguments, so give it genidctl itself:\n" +
			"`criu --action-script /usr/bin/genidctl` (run dir from GENID_RUN_DIR), or an\n" +
			"action-script line in /etc/criu/runc.conf for runc. Run without arguments while\n" +
			"CRTOOLS_SCRIPT_ACTION is set, genidctl acts as this command. It reads CRTOOLS_IMAGE_DIR\n" +
			"and ignores actions other than post-dump and post-restore. Unlike the CRIU plugin it\n" +
			"cannot re-attach watcher sockets:\n" +
			"restored watchers learn of the restore when they reconnect or read the page.\n" +
			"Every restore is bumped past the record, except one the plugin bumped already: it says\n" +
			"so in criu's environment (GENID_CRIU_RESTORED), which the script inherits.",
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			action := os.Getenv("CRTOOLS_SCRIPT_ACTION")
			dir := os.Getenv("CRTOOLS_IMAGE_DIR")
			if action == "" {
				return usageError{errors.New("criu-hook runs as a CRIU action script (CRTOOLS_SCRIPT_ACTION is not set)")}
			}
			switch action {
			case "post-dump":
				if err := checkpoint.RecordGeneration(dir, runDir(c), "action-script"); err != nil {
					return fmt.Errorf("criu-hook post-dump: %w", err)
				}
			case "post-restore":
				return postRestore(c, dir)
			}
			return nil
		},
	}
}

// postRestore bumps past the checkpoint's record. A daemon that cannot be
// reached fails the restore, unless GENID_CRIU_BEST_EFFORT is set: the C
// plugin honours it too, and when it let the restore go on without a daemon
// this hook must not stop it.
func postRestore(c *cli.Context, imagesDir string) error {
	r, err := checkpoint.Restore(c.Context, imagesDir, runDir(c))
	if err != nil {
		err = noPage(err)
		if errors.Is(err, genid.ErrUnreachable) && bestEffort() {
			fmt.Fprintf(os.Stderr, "genid: WARNING: %v; restoring anyway (GENID_CRIU_BEST_EFFORT): processes are not told of this restore\n", err)
			return nil
		}
		return fmt.Errorf("criu-hook post-restore: %w", err)
	}
	fmt.Fprintf(os.Stderr, "genid: post-restore: %s\n", r)
	return nil
}

// bestEffort reads GENID_CRIU_BEST_EFFORT as the C plugin does.
func bestEffort() bool {
	switch os.Getenv("GENID_CRIU_BEST_EFFORT") {
	case "1", "yes", "true":
		return true
	}
	return false
}
