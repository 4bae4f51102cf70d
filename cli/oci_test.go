package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A config as `runc spec` writes it, with what an older oci-config added, a
// value no float holds and a field the runtime-spec does not know.
const bundleConfig = `{
	"ociVersion": "1.0.2-dev",
	"process": {
		"terminal": false,
		"args": ["sh"],
		"rlimits": [{"type": "RLIMIT_NOFILE", "hard": 9223372036854775807, "soft": 1024}]
	},
	"root": {"path": "rootfs", "readonly": false},
	"x-vendor": {"keep": [1, 2.50, "three"]},
	"mounts": [
		{"destination": "/proc", "type": "proc", "source": "proc"},
		{"destination": "/run/genid", "type": "bind", "source": "/run/genid", "options": ["rbind", "ro"]},
		{"destination": "/dev/sysgenid", "type": "bind", "source": "/run/genid/generation", "options": ["bind", "ro"]}
	],
	"hooks": {"poststart": [{"path": "/bin/true"}], "createRuntime": [{"path": "/usr/bin/other", "args": ["other"]}]},
	"linux": {"namespaces": [{"type": "pid"}]}
}`

func TestAddHooks(t *testing.T) {
	hooks := genidHooks("/usr/bin/genidctl", "/run/genid")
	out, err := addHooks([]byte(bundleConfig), hooks)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	// Every value as written, in its place; unknown fields kept.
	for _, want := range []string{`"hard": 9223372036854775807`, `2.50`, `"x-vendor"`, `"/usr/bin/other"`, `"poststart"`} {
		if !strings.Contains(s, want) {
			t.Errorf("%q lost:\n%s", want, s)
		}
	}
	order := []string{`"ociVersion"`, `"process"`, `"root"`, `"x-vendor"`, `"mounts"`, `"hooks"`, `"linux"`}
	last := -1
	for _, k := range order {
		i := strings.Index(s, k)
		if i < last {
			t.Fatalf("key %s moved:\n%s", k, s)
		}
		last = i
	}
	var spec specs.Spec
	if err := json.Unmarshal(out, &spec); err != nil {
		t.Fatal(err)
	}
	if n := len(spec.Mounts); n != 1 || spec.Mounts[0].Destination != "/proc" {
		t.Fatalf("mounts %+v: the host's run dir must go", spec.Mounts)
	}
	cr := spec.Hooks.CreateRuntime
	if len(cr) != 2 || cr[0].Path != "/usr/bin/other" || cr[1].Path != "/usr/bin/genidctl" ||
		strings.Join(cr[1].Args, " ") != "genidctl --run-dir /run/genid oci-hook createRuntime" {
		t.Fatalf("createRuntime hooks %+v", cr)
	}
	if ps := spec.Hooks.Poststop; len(ps) != 1 || ps[0].Args[len(ps[0].Args)-1] != "poststop" {
		t.Fatalf("poststop hooks %+v", ps)
	}
	// Again: the same, not twice the hooks.
	again, err := addHooks(out, genidHooks("/usr/bin/genidctl", "/run/genid"))
	if err != nil || string(again) != s {
		t.Fatalf("a second oci-config changed the config (%v):\n%s", err, again)
	}
	for _, bad := range []string{`[]`, `{"a": 1} x`, `{"a": 1, "a": 2}`, `{"hooks": {"createRuntime": 5}}`} {
		if _, err := addHooks([]byte(bad), hooks); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestScopeName(t *testing.T) {
	for id, want := range map[string]string{
		"web":                   "web",
		"c+1":                   "c_1",
		strings.Repeat("a", 64): strings.Repeat("a", 64),
		"":                      "",
		"-x":                    "",
		strings.Repeat("a", 65): "",
	} {
		got, err := scopeName(id)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("scopeName(%q) = %q, %v; want %q", id, got, err, want)
		}
	}
}

func TestContainerRoot(t *testing.T) {
	bundle := t.TempDir()
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"root": {"path": "rootfs"}}`), 0o644)
	for _, tc := range []struct {
		st   hookState
		want string
	}{
		{hookState{State: specs.State{Bundle: bundle}}, filepath.Join(bundle, "rootfs")},
		{hookState{State: specs.State{Bundle: bundle}, Root: "/abs/root"}, "/abs/root"}, // crun tells it
		{hookState{State: specs.State{Bundle: bundle}, Root: "other"}, filepath.Join(bundle, "other")},
	} {
		if got, err := containerRoot(tc.st); err != nil || got != tc.want {
			t.Errorf("containerRoot(%+v) = %q, %v; want %q", tc.st, got, err, tc.want)
		}
	}
	if _, err := containerRoot(hookState{State: specs.State{Bundle: t.TempDir()}}); err == nil {
		t.Error("a bundle without config.json: no error")
	}
}

// FuzzAddHooks edits configs made by real tools (`runc spec`, podman) and
// what the fuzzer makes of them. Whatever it is given, oci-config either
// refuses it or writes a config holding genid's hooks once per stage, every
// other member as it was, the other hooks in their order, and that a second
// run leaves alone.
func FuzzAddHooks(f *testing.F) {
	f.Add([]byte(bundleConfig))
	seeds, _ := filepath.Glob("testdata/*.json")
	if len(seeds) == 0 {
		f.Fatal("no configs in testdata")
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	hooks := genidHooks("/usr/bin/genidctl", "/run/genid")
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := addHooks(in, hooks)
		if err != nil {
			return
		}
		again, err := addHooks(out, hooks)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("a second run changed the config (%v):\n%s\n%s", err, out, again)
		}
		before, _ := objectMembers(in)
		after, err := objectMembers(out)
		if err != nil {
			t.Fatal(err)
		}
		// The members other than hooks and mounts, as they were.
		var kept []string
		for _, m := range after {
			if m.key != "hooks" && m.key != "mounts" {
				kept = append(kept, m.key+"="+compact(t, m.raw))
			}
		}
		var want []string
		for _, m := range before {
			if m.key != "hooks" && m.key != "mounts" {
				want = append(want, m.key+"="+compact(t, m.raw))
			}
		}
		if !slices.Equal(kept, want) {
			t.Fatalf("members changed:\n%q\n%q", want, kept)
		}
		// Each stage: the others' hooks in order, then genid's, once.
		stagesBefore := stageLists(t, before)
		stagesAfter := stageLists(t, after)
		for _, stage := range []string{stageCreateRuntime, stagePoststop} {
			own, _ := marshal(hooks[stage])
			others := slices.DeleteFunc(stagesBefore[stage], func(s string) bool { return isGenidHook(json.RawMessage(s)) })
			if got, want := stagesAfter[stage], append(others, compact(t, own)); !slices.Equal(got, want) {
				t.Fatalf("%s hooks\n%q, want\n%q", stage, got, want)
			}
		}
		for stage, list := range stagesBefore {
			if stage != stageCreateRuntime && stage != stagePoststop && !slices.Equal(stagesAfter[stage], list) {
				t.Fatalf("%s hooks changed: %q to %q", stage, list, stagesAfter[stage])
			}
		}
		// A config the runtime-spec reads stays one.
		var spec specs.Spec
		if json.Unmarshal(in, &spec) == nil {
			if err := json.Unmarshal(out, &spec); err != nil {
				t.Fatalf("the runtime-spec no longer reads it: %v\n%s", err, out)
			}
		}
	})
}

func compact(t *testing.T, raw []byte) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// stageLists reads the hooks member's stages, each hook compacted.
func stageLists(t *testing.T, top []member) map[string][]string {
	out := map[string][]string{}
	i := slices.IndexFunc(top, func(m member) bool { return m.key == "hooks" })
	if i < 0 || string(bytes.TrimSpace(top[i].raw)) == "null" {
		return out
	}
	stages, err := objectMembers(top[i].raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stages {
		var list []json.RawMessage
		if err := json.Unmarshal(s.raw, &list); err != nil {
			continue // not a list: a stage the runtime-spec does not know
		}
		for _, h := range list {
			out[s.key] = append(out[s.key], compact(t, h))
		}
	}
	return out
}
