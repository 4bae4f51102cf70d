package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containers/common/pkg/hooks"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// The hooks.d files, read back by the library podman and CRI-O read them
// with: the hooks apply to the containers they should, at their stages.
func TestHooksD(t *testing.T) {
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		always      bool
		annotations map[string]string
		want        bool
	}{
		{false, nil, false},
		{false, map[string]string{scopeAnnotation: "true"}, true},
		{false, map[string]string{scopeAnnotation: "1"}, true},
		{false, map[string]string{scopeAnnotation: "false"}, false},
		{false, map[string]string{scopeAnnotation: "truest"}, false},
		{false, map[string]string{"x" + scopeAnnotation: "true"}, false},
		{true, nil, true},
	} {
		dir := t.TempDir()
		files, err := hooksFiles(bin, "/run/x", tc.always)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := emit(dir, f.name, f.data); err != nil {
				t.Fatal(err)
			}
		}
		m, err := hooks.New(context.Background(), []string{dir}, []string{"poststop"})
		if err != nil {
			t.Fatal(err)
		}
		spec := &specs.Spec{Hooks: &specs.Hooks{Poststart: []specs.Hook{{Path: "/bin/true"}}}}
		ext, err := m.Hooks(spec, tc.annotations, false)
		if err != nil {
			t.Fatal(err)
		}
		var got []specs.Hook
		got = append(got, spec.Hooks.CreateRuntime...)
		got = append(got, ext["poststop"]...)
		if !tc.want {
			if len(got) != 0 || len(spec.Hooks.Poststop) != 0 {
				t.Errorf("always=%v %v: hooks %+v, want none", tc.always, tc.annotations, got)
			}
			continue
		}
		want := []specs.Hook{
			{Path: bin, Args: hookArgs("/run/x", stageCreateRuntime)},
			{Path: bin, Args: hookArgs("/run/x", stagePoststop)},
		}
		if !slices.EqualFunc(got, want, hookEqual) {
			t.Errorf("always=%v %v: hooks %+v, want %+v", tc.always, tc.annotations, got, want)
		}
		if len(spec.Hooks.Poststart) != 1 {
			t.Errorf("the container's own hooks changed: %+v", spec.Hooks)
		}
	}
}

// A hooks.d file naming a genidctl that is not there yet is still
// checked, with this program in its place, and written as asked.
func TestHooksDNotInstalledYet(t *testing.T) {
	files, err := hooksFiles("/nonexistent/genidctl", "/run/genid", false)
	if err != nil {
		t.Fatal(err)
	}
	h, err := hooksRead(t, files[0])
	if err == nil {
		t.Fatalf("the library took a hook whose program is missing: %+v", h)
	}
}

func hooksRead(t *testing.T, f namedFile) (any, error) {
	path := filepath.Join(t.TempDir(), f.name)
	if err := os.WriteFile(path, f.data, 0o644); err != nil {
		t.Fatal(err)
	}
	return hooks.Read(path, []string{"poststop"})
}

// The CDI spec, injected by the CDI library as an engine would: the
// device adds genid's hooks and nothing else.
func TestCDISpec(t *testing.T) {
	data, err := cdiSpec("/usr/bin/genidctl", "/run/x")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := emit(dir, cdiSpecName, data); err != nil {
		t.Fatal(err)
	}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) != 0 {
		t.Fatalf("the library refuses the spec: %v\n%s", errs, data)
	}
	spec := &specs.Spec{Process: &specs.Process{Env: []string{"A=1"}}}
	if _, err := cache.InjectDevices(spec, cdiKind+"="+cdiDevice); err != nil {
		t.Fatal(err)
	}
	if got, want := spec.Hooks.CreateRuntime, []specs.Hook{{Path: "/usr/bin/genidctl", Args: hookArgs("/run/x", stageCreateRuntime)}}; !slices.EqualFunc(got, want, hookEqual) {
		t.Errorf("createRuntime %+v, want %+v", got, want)
	}
	if got, want := spec.Hooks.Poststop, []specs.Hook{{Path: "/usr/bin/genidctl", Args: hookArgs("/run/x", stagePoststop)}}; !slices.EqualFunc(got, want, hookEqual) {
		t.Errorf("poststop %+v, want %+v", got, want)
	}
	if len(spec.Mounts) != 0 || spec.Linux != nil && len(spec.Linux.Devices) != 0 || len(spec.Process.Env) != 1 {
		t.Errorf("the device changed more than hooks: %+v", spec)
	}
	if _, err := cache.InjectDevices(&specs.Spec{}, cdiKind+"=other"); err == nil {
		t.Error("an unknown device was injected")
	}
}

func hookEqual(a, b specs.Hook) bool {
	return a.Path == b.Path && slices.Equal(a.Args, b.Args) && slices.Equal(a.Env, b.Env) && a.Timeout == b.Timeout
}
