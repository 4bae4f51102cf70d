package main

import (
	"encoding/json"
	"os"
	"path/filepath"
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
