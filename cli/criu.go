package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/plugin"
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
			r, err := plugin.ReadRecord(dir)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("image-info: %s has no %s: the checkpoint was taken without genid (a restore still bumps by one)", dir, plugin.RecordName)
			}
			if err != nil {
				return fmt.Errorf("image-info: %w", err)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			if r.Generation != nil {
				fmt.Printf("generation: %d\n", *r.Generation)
			} else {
				fmt.Printf("generation: none (no genid page on the checkpointed host)\n")
			}
			writer := r.Writer
			if writer == "" {
				writer = "criu plugin"
			}
			fmt.Printf("recorded:   %s by %s\n", r.Time, writer)
			fmt.Printf("daemon:     %s\n", r.Socket)
			fmt.Printf("sockets:    %d\n", len(r.Sockets))
			for _, s := range r.Sockets {
				kind := "client"
				if s.Watcher {
					kind = fmt.Sprintf("watcher, acked %d", s.Acked)
				}
				fmt.Printf("  inode %d: %s (%s)\n", s.Inode, kind, s.Path)
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
			"A checkpoint recorded by the plugin is left to the plugin.",
		Action: func(c *cli.Context) error {
			action := os.Getenv("CRTOOLS_SCRIPT_ACTION")
			dir := os.Getenv("CRTOOLS_IMAGE_DIR")
			if action == "" {
				return usageError{errors.New("criu-hook runs as a CRIU action script (CRTOOLS_SCRIPT_ACTION is not set)")}
			}
			switch action {
			case "post-dump":
				if err := plugin.RecordGeneration(dir, runDir(c), "action-script"); err != nil {
					return fmt.Errorf("criu-hook post-dump: %w", err)
				}
			case "post-restore":
				gen, err := plugin.Bump(c.Context, dir, runDir(c))
				if errors.Is(err, plugin.ErrPluginRecord) {
					return nil
				}
				if err != nil {
					return fmt.Errorf("criu-hook post-restore: %w", err)
				}
				fmt.Fprintf(os.Stderr, "genid: restored at generation %d\n", gen)
			}
			return nil
		},
	}
}
