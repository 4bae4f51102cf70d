package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	hooks "github.com/containers/common/pkg/hooks/1.0.0"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v2"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// The container engines' own ways in: an OCI hooks dir (podman, CRI-O) and
// a CDI device (podman --device, containerd, CRI-O, Docker). Both run the
// same hook, genidctl oci-hook, at createRuntime and poststop.
const (
	// ScopeAnnotation asks for a scope, with hooks.d files installed
	// without --always.
	scopeAnnotation = "io.genid.scope"
	// cdiKind and cdiDevice make the CDI device genid.io/scope=container.
	cdiKind       = "genid.io/scope"
	cdiDevice     = "container"
	cdiSpecName   = "genid.io-scope.json"
	hooksFileBase = "genid"
)

// Where the engines look for these files by default.
const (
	hooksDir = "/usr/share/containers/oci/hooks.d"
	cdiDir   = "/etc/cdi"
)

// integrationFlags are what the hook needs to know where it runs, and where
// the files go.
func integrationFlags(dir string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "genidctl", Value: "/usr/bin/genidctl", Usage: "the genidctl `PATH` the runtime runs"},
		&cli.StringFlag{Name: "dir", Value: dir, Usage: "write the files into `DIR`"},
	}
}

func hooksDCommand() *cli.Command {
	return &cli.Command{
		Name:  "hooks-d",
		Usage: "write genid's OCI hooks for podman and CRI-O (oci-hooks(5), hooks.d)",
		Description: "Two hook files: " + hooksFileBase + "-createRuntime.json (the container's scope and its mounts) and\n" +
			hooksFileBase + "-poststop.json (the scope goes). Without --always they apply to containers with the\n" +
			"annotation " + scopeAnnotation + "=true (podman run --annotation " + scopeAnnotation + "=true ...); with --always,\n" +
			"to every container. By default they go to " + hooksDir + ", which podman reads by\n" +
			"default (CRI-O reads it and /etc/containers/oci/hooks.d). The hooks' --run-dir is this\n" +
			"command's, and the runtime runs --genidctl.",
		Flags: append(integrationFlags(hooksDir),
			&cli.BoolFlag{Name: "always", Usage: "give every container a scope, not only those with the annotation"}),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			if c.String("dir") == "-" {
				return usageError{errors.New("hooks-d writes two files: give it a --dir")}
			}
			files, err := hooksFiles(c.String("genidctl"), runDirFlagOr(c), c.Bool("always"))
			if err != nil {
				return err
			}
			for _, f := range files {
				if err := emit(c.String("dir"), f.name, f.data); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func cdiSpecCommand() *cli.Command {
	return &cli.Command{
		Name:  "cdi-spec",
		Usage: "write genid's CDI spec: the device " + cdiKind + "=" + cdiDevice,
		Description: "A container given the CDI device " + cdiKind + "=" + cdiDevice + " gets genid's hooks, and so its own\n" +
			"scope: podman run --device " + cdiKind + "=" + cdiDevice + " ..., containerd's CRI with enable_cdi, CRI-O,\n" +
			"Docker with CDI. By default it goes to " + cdiDir + " (--dir - prints it). Made and checked with\n" +
			"the CDI project's own library. The hooks' --run-dir is this command's, and the runtime runs --genidctl.",
		Flags: integrationFlags(cdiDir),
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			data, err := cdiSpec(c.String("genidctl"), runDirFlagOr(c))
			if err != nil {
				return err
			}
			return emit(c.String("dir"), cdiSpecName, data)
		},
	}
}

// runDirFlagOr is the run dir the hooks will use: given, or the default.
func runDirFlagOr(c *cli.Context) string {
	if d := runDirFlag(c); d != "" {
		return d
	}
	return containerRunDir
}

// hookArgs is how the runtime runs the hook at stage.
func hookArgs(runDir, stage string) []string {
	return []string{"genidctl", "--run-dir", runDir, "oci-hook", stage}
}

type namedFile struct {
	name string
	data []byte
}

// hooksFiles are genid's hooks.d files, each checked by the hooks library
// podman and CRI-O read them with.
func hooksFiles(bin, runDir string, always bool) ([]namedFile, error) {
	when := hooks.When{Annotations: map[string]string{`^` + regexp.QuoteMeta(scopeAnnotation) + `$`: `^(true|1|yes)$`}}
	if always {
		when = hooks.When{Always: &always}
	}
	var out []namedFile
	for _, stage := range []string{stageCreateRuntime, stagePoststop} {
		h := hooks.Hook{
			Version: hooks.Version,
			Hook:    specs.Hook{Path: bin, Args: hookArgs(runDir, stage)},
			When:    when,
			Stages:  []string{stage},
		}
		// The library checks that the hook's program exists: where it is
		// not installed yet, the rest is checked with this program's path.
		check := h
		if _, err := os.Stat(bin); errors.Is(err, os.ErrNotExist) {
			if check.Hook.Path, err = os.Executable(); err != nil {
				return nil, err
			}
		}
		// podman runs poststop hooks itself: an extension stage to it.
		if err := check.Validate([]string{"poststop"}); err != nil {
			return nil, fmt.Errorf("hooks-d: %s: %w", stage, err)
		}
		b, err := json.MarshalIndent(h, "", "  ")
		if err != nil {
			return nil, err
		}
		out = append(out, namedFile{fmt.Sprintf("%s-%s.json", hooksFileBase, stage), append(b, '\n')})
	}
	return out, nil
}

// cdiSpec is genid's CDI spec, written and checked by the CDI library.
func cdiSpec(bin, runDir string) ([]byte, error) {
	hook := func(stage string) *cdispec.Hook {
		return &cdispec.Hook{HookName: stage, Path: bin, Args: hookArgs(runDir, stage)}
	}
	raw := &cdispec.Spec{
		Version: cdispec.CurrentVersion,
		Kind:    cdiKind,
		Devices: []cdispec.Device{{
			Name: cdiDevice,
			ContainerEdits: cdispec.ContainerEdits{
				Hooks: []*cdispec.Hook{hook(stageCreateRuntime), hook(stagePoststop)},
			},
		}},
	}
	version, err := cdispec.MinimumRequiredVersion(raw)
	if err != nil {
		return nil, fmt.Errorf("cdi-spec: %w", err)
	}
	raw.Version = version
	// The library's own writer validates what it writes.
	dir, err := os.MkdirTemp("", "genid-cdi-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("cdi-spec: %w", err)
	}
	if err := cache.WriteSpec(raw, cdiSpecName); err != nil {
		return nil, fmt.Errorf("cdi-spec: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, cdiSpecName))
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// emit writes data as dir/name, or prints it when dir is "-".
func emit(dir, name string, data []byte) error {
	if dir == "-" {
		_, err := os.Stdout.Write(data)
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "genidctl: wrote %s\n", filepath.Join(dir, name))
	return nil
}
