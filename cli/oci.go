package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/genid"
)

// Where a container sees genid: the host's run dir (page and socket) and,
// for AWS-LC and other sysgenid users, the page alone.
const (
	containerRunDir  = genid.DefaultRunDir
	containerSysgen  = "/dev/sysgenid"
	configJSON       = "config.json"
	ociConfigExample = `"mounts": [
  {"destination": "/run/genid", "type": "bind", "source": "/run/genid", "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]},
  {"destination": "/dev/sysgenid", "type": "bind", "source": "/run/genid/generation", "options": ["bind", "ro", "nosuid", "noexec"]}
]`
)

func ociCommand() *cli.Command {
	return &cli.Command{
		Name:      "oci-config",
		Usage:     "add genid's mounts to an OCI bundle's config.json",
		ArgsUsage: "BUNDLE_DIR",
		Description: "Bind-mounts the host run dir read-only at /run/genid and the page at /dev/sysgenid,\n" +
			"so processes in the container can mmap the page and watch the host's daemon. Running it\n" +
			"again replaces the same mounts. The snippet it adds:\n\n" + ociConfigExample,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError{errors.New("oci-config needs a bundle dir (holding config.json)")}
			}
			dir, err := filepath.Abs(runDir(c))
			if err != nil {
				return err
			}
			return addOCIMounts(filepath.Join(c.Args().First(), configJSON), dir)
		},
	}
}

// addOCIMounts edits config.json as a generic document, so that fields this
// program does not know survive.
func addOCIMounts(path, runDir string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("oci-config: %w", err)
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("oci-config: %s: %w", path, err)
	}
	want := []map[string]any{
		{"destination": containerRunDir, "type": "bind", "source": runDir,
			"options": []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
		{"destination": containerSysgen, "type": "bind", "source": filepath.Join(runDir, genid.PageFile),
			"options": []string{"bind", "ro", "nosuid", "noexec"}},
	}
	var mounts []any
	if m, ok := spec["mounts"].([]any); ok {
		for _, x := range m {
			if mm, ok := x.(map[string]any); ok && (mm["destination"] == containerRunDir || mm["destination"] == containerSysgen) {
				continue
			}
			mounts = append(mounts, x)
		}
	}
	for _, m := range want {
		mounts = append(mounts, m)
	}
	spec["mounts"] = mounts
	out, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".genid.tmp"
	if err := os.WriteFile(tmp, append(out, '\n'), st.Mode().Perm()); err != nil {
		return fmt.Errorf("oci-config: %w", err)
	}
	return os.Rename(tmp, path)
}
