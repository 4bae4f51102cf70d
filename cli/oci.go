package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v2"
)

const configJSON = "config.json"

func ociCommand() *cli.Command {
	return &cli.Command{
		Name:      "oci-config",
		Usage:     "give an OCI bundle's container a scope of its own: add genid's hooks to its config.json",
		ArgsUsage: "BUNDLE_DIR",
		Description: "Adds to config.json a createRuntime hook (genidctl oci-hook createRuntime), which makes\n" +
			"the container's scope and mounts it at " + containerRunDir + " and " + containerPage + ", and a poststop\n" +
			"hook, which removes it; with the CRIU plugin installed, `runc checkpoint` and `runc restore`\n" +
			"then carry the scope across. Running it again replaces genid's hooks, and removes the mounts\n" +
			"of the host's run dir that earlier versions added. Every other field, value and key order of\n" +
			"config.json stays as it was.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "genidctl", Usage: "the genidctl `PATH` the runtime runs (default: this one)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError{errors.New("oci-config needs a bundle dir (holding config.json)")}
			}
			dir, err := filepath.Abs(runDir(c))
			if err != nil {
				return err
			}
			bin := c.String("genidctl")
			if bin == "" {
				if bin, err = os.Executable(); err != nil {
					return fmt.Errorf("oci-config: %w", err)
				}
			}
			path := filepath.Join(c.Args().First(), configJSON)
			b, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("oci-config: %w", err)
			}
			out, err := addHooks(b, genidHooks(bin, dir))
			if err != nil {
				return fmt.Errorf("oci-config: %s: %w", path, err)
			}
			return writeFileLike(path, out)
		},
	}
}

// genidHooks are the hooks oci-config adds, by stage.
func genidHooks(bin, runDir string) map[string]specs.Hook {
	hook := func(stage string) specs.Hook {
		return specs.Hook{Path: bin, Args: hookArgs(runDir, stage)}
	}
	return map[string]specs.Hook{
		stageCreateRuntime: hook(stageCreateRuntime),
		stagePoststop:      hook(stagePoststop),
	}
}

// isGenidHook tells genid's own hooks (of any version) from others.
func isGenidHook(raw json.RawMessage) bool {
	var h specs.Hook
	if json.Unmarshal(raw, &h) != nil {
		return false
	}
	return slices.Contains(h.Args, "oci-hook") && filepath.Base(h.Path) == "genidctl"
}

// isGenidMount tells the mounts of the host's run dir that oci-config
// added before scopes.
func isGenidMount(raw json.RawMessage) bool {
	var m specs.Mount
	if json.Unmarshal(raw, &m) != nil {
		return false
	}
	return m.Destination == containerRunDir || m.Destination == containerPage
}

// member is one key of a JSON object, its value as it was written.
type member struct {
	key string
	raw json.RawMessage
}

// addHooks returns config with hooks added (genid's earlier ones replaced)
// and genid's old mounts removed. The document is edited as written: every
// other key keeps its place and every value its exact text, known to the
// runtime-spec or not (a number too large for a float, say).
func addHooks(config []byte, hooks map[string]specs.Hook) ([]byte, error) {
	top, err := objectMembers(config)
	if err != nil {
		return nil, err
	}
	// hooks: each stage an array, genid's entries replaced by ours.
	var stages []member
	i := slices.IndexFunc(top, func(m member) bool { return m.key == "hooks" })
	if i >= 0 && string(bytes.TrimSpace(top[i].raw)) != "null" {
		if stages, err = objectMembers(top[i].raw); err != nil {
			return nil, fmt.Errorf("hooks: %w", err)
		}
	}
	for _, stage := range []string{stageCreateRuntime, stagePoststop} {
		j := slices.IndexFunc(stages, func(m member) bool { return m.key == stage })
		var list []json.RawMessage
		if j >= 0 && string(bytes.TrimSpace(stages[j].raw)) != "null" {
			if err := json.Unmarshal(stages[j].raw, &list); err != nil {
				return nil, fmt.Errorf("hooks.%s: %w", stage, err)
			}
		}
		list = slices.DeleteFunc(list, isGenidHook)
		h, err := marshal(hooks[stage])
		if err != nil {
			return nil, err
		}
		v := encodeArray(append(list, h))
		if j >= 0 {
			stages[j].raw = v
		} else {
			stages = append(stages, member{stage, v})
		}
	}
	if i >= 0 {
		top[i].raw = encodeObject(stages)
	} else {
		top = append(top, member{"hooks", encodeObject(stages)})
	}
	// mounts: the host's run dir no longer goes into the container.
	if j := slices.IndexFunc(top, func(m member) bool { return m.key == "mounts" }); j >= 0 && string(bytes.TrimSpace(top[j].raw)) != "null" {
		var list []json.RawMessage
		if err := json.Unmarshal(top[j].raw, &list); err != nil {
			return nil, fmt.Errorf("mounts: %w", err)
		}
		if kept := slices.DeleteFunc(slices.Clone(list), isGenidMount); len(kept) != len(list) {
			top[j].raw = encodeArray(kept)
		}
	}
	var out bytes.Buffer
	if err := json.Indent(&out, encodeObject(top), "", "\t"); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// objectMembers reads a JSON object's members in their order, each value's
// text untouched.
func objectMembers(b []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object: %v", err)
	}
	var out []member
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key := t.(string)
		if seen[key] {
			return nil, fmt.Errorf("key %q twice", key)
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		out = append(out, member{key, raw})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the object")
	}
	return out, nil
}

// encodeObject writes members as a compact JSON object, in their order.
func encodeObject(ms []member) json.RawMessage {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		json.Compact(&b, m.raw)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// encodeArray writes values as a compact JSON array, each as written.
func encodeArray(vs []json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, v := range vs {
		if i > 0 {
			b.WriteByte(',')
		}
		json.Compact(&b, v)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// marshal is json.Marshal without its HTML escapes, which would rewrite
// the text of a string holding <, > or &.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// writeFileLike replaces path by b atomically, keeping its mode.
func writeFileLike(path string, b []byte) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".genid.tmp"
	if err := os.WriteFile(tmp, b, st.Mode().Perm()); err != nil {
		return fmt.Errorf("oci-config: %w", err)
	}
	return os.Rename(tmp, path)
}
