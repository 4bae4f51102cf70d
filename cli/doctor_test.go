package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/backend"
	"github.com/genid-project/genid/internal/hwbp"
)

// fakePlugin builds a shared object that looks like a CRIU plugin to
// doctor: CRIU's descriptor with the given plugin API version, and the
// CRIU it says it was built for ("" for none).
func fakePlugin(t *testing.T, api uint32, builtFor string) string {
	t.Helper()
	dir := t.TempDir()
	src := fmt.Sprintf(`struct desc { const char *name; void *init, *exit; unsigned version, max_hooks; void *hooks[12]; };
struct desc CR_PLUGIN_DESC = { "genid", 0, 0, %#x, 12 };
`, api)
	if builtFor != "" {
		src += fmt.Sprintf("const char genid_criu_built_for[] = %q;\n", builtFor)
	}
	if err := os.WriteFile(filepath.Join(dir, "p.c"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	so := filepath.Join(dir, "genid-criu.so")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "cc", "-shared", "-fPIC", "-o", so, filepath.Join(dir, "p.c")).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	os.Chmod(so, 0o644)
	return so
}

// fakeCRIU is a criu that prints version v.
func fakeCRIU(t *testing.T, v string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "criu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho Version: "+v+"\necho GitID: v"+v+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// testDoctor is a doctor of a host with no daemon and nothing installed,
// whose breakpoints fire.
func testDoctor(t *testing.T) *doctor {
	t.Helper()
	return &doctor{
		runDir: t.TempDir(), criu: filepath.Join(t.TempDir(), "no-criu"), plugin: filepath.Join(t.TempDir(), "none.so"),
		hooksDir: filepath.Join(t.TempDir(), "none"), ociHooks: []string{t.TempDir()}, cdiDirs: []string{t.TempDir()},
		probe: func() (hwbp.Verdict, string) { return hwbp.Fire, "" },
		available: func() map[string]error {
			return map[string]error{backend.NameVMGenID: nil, backend.NameVMClock: os.ErrNotExist}
		},
		getenv:  func(string) string { return "" },
		timeout: doctorCmdTimeout,
	}
}

// result runs d and returns each check's status and message.
func (d *doctor) result(t *testing.T) (map[string]string, map[string]string) {
	t.Helper()
	d.found = nil
	d.run(context.Background())
	status, msg := map[string]string{}, map[string]string{}
	for _, f := range d.found {
		status[f.Check], msg[f.Check] = f.Status, f.Message+" | fix: "+f.Fix
	}
	return status, msg
}

func TestDoctorPlugin(t *testing.T) {
	for _, tc := range []struct {
		name      string
		criu      string // version; "" for none
		api       uint32
		builtFor  string
		noPlugin  bool
		want      string
		wantInMsg string
	}{
		{"built for this CRIU", "4.1.1", 0x200, "4.1.1", false, "ok", "built for CRIU 4.1.1"},
		{"another patch level", "4.1.3", 0x200, "4.1.1", false, "ok", "built for CRIU 4.1.1"},
		{"another minor", "4.2", 0x200, "4.1.1", false, "warn", "but criu is 4.2"},
		{"does not say", "4.1.1", 0x200, "", false, "warn", "does not say which CRIU"},
		{"another plugin API", "4.1.1", 0x100, "4.1.1", false, "fail", "plugin API 0.1.0"},
		{"missing", "4.1.1", 0, "", true, "fail", "make install-plugin"},
		{"no criu, no plugin", "", 0, "", true, "ok", "not needed"},
		{"no criu", "", 0x200, "4.1.1", false, "warn", "no criu to load it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testDoctor(t)
			if tc.criu != "" {
				d.criu = fakeCRIU(t, tc.criu)
			}
			if !tc.noPlugin {
				d.plugin = fakePlugin(t, tc.api, tc.builtFor)
			}
			status, msg := d.result(t)
			if status["criu plugin"] != tc.want || !strings.Contains(msg["criu plugin"], tc.wantInMsg) {
				t.Errorf("%s: %s", status["criu plugin"], msg["criu plugin"])
			}
			if tc.criu != "" && (status["criu"] != "ok" || !strings.Contains(msg["criu"], "CRIU "+tc.criu)) {
				t.Errorf("criu: %s %s", status["criu"], msg["criu"])
			}
		})
	}
}

func TestDoctorPluginOthersMayWrite(t *testing.T) {
	d := testDoctor(t)
	d.criu = fakeCRIU(t, "4.1.1")
	d.plugin = fakePlugin(t, 0x200, "4.1.1")
	os.Chmod(d.plugin, 0o666)
	if status, msg := d.result(t); status["criu plugin"] != "fail" || !strings.Contains(msg["criu plugin"], "writable by its group or others") {
		t.Errorf("%s: %s", status["criu plugin"], msg["criu plugin"])
	}
}

func TestDoctorCRIU(t *testing.T) {
	d := testDoctor(t)
	d.criu = fakeCRIU(t, "3.19")
	if status, msg := d.result(t); status["criu"] != "fail" || !strings.Contains(msg["criu"], "needs 4.x") {
		t.Errorf("%s: %s", status["criu"], msg["criu"])
	}
	d.criu = filepath.Join(t.TempDir(), "criu")
	os.WriteFile(d.criu, []byte("#!/bin/sh\nsleep 60\n"), 0o755)
	start := time.Now()
	if status, _ := d.result(t); status["criu"] != "fail" {
		t.Errorf("a criu that hangs: %s", status["criu"])
	}
	if took := time.Since(start); took > doctorCmdTimeout+5*time.Second {
		t.Errorf("a criu that hangs held doctor %v", took)
	}
}

func TestDoctorBreakpoints(t *testing.T) {
	for _, tc := range []struct {
		verdict hwbp.Verdict
		criu    bool
		fault   string
		want    string
	}{
		{hwbp.Fire, true, "", "ok"},
		{hwbp.NotX86, true, "", "ok"},
		{hwbp.Never, true, "", "fail"},
		{hwbp.Never, true, "130", "warn"},
		{hwbp.Never, false, "", "warn"},
		{hwbp.Error, true, "", "warn"},
	} {
		d := testDoctor(t)
		d.probe = func() (hwbp.Verdict, string) { return tc.verdict, "why" }
		d.getenv = func(k string) string {
			if k == "CRIU_FAULT" {
				return tc.fault
			}
			return ""
		}
		if tc.criu {
			d.criu = fakeCRIU(t, "4.1.1")
		}
		status, msg := d.result(t)
		if status["hw breakpoints"] != tc.want {
			t.Errorf("%+v: %s %s", tc, status["hw breakpoints"], msg["hw breakpoints"])
		}
		if tc.want != "ok" && tc.verdict == hwbp.Never && !strings.Contains(msg["hw breakpoints"], "CRIU_FAULT=130") {
			t.Errorf("%+v: no advice: %s", tc, msg["hw breakpoints"])
		}
	}
}

func TestDoctorBackendsWithoutDaemon(t *testing.T) {
	d := testDoctor(t)
	status, msg := d.result(t)
	if status["daemon"] != "fail" || !strings.Contains(msg["daemon"], "genidctl --run-dir "+d.runDir+" daemon") {
		t.Errorf("daemon: %s %s", status["daemon"], msg["daemon"])
	}
	if status["backend vmgenid"] != "warn" || status["backend vmclock"] != "warn" || !strings.Contains(msg["backend vmclock"], os.ErrNotExist.Error()) {
		t.Errorf("backends: %v %v", status, msg)
	}
	if _, ok := status["admin socket"]; ok {
		t.Errorf("sockets checked without a daemon: %v", msg)
	}
	if d.ok() {
		t.Error("ok without a daemon")
	}
}

func TestDoctorHooks(t *testing.T) {
	d := testDoctor(t)
	d.hooksDir = t.TempDir()
	os.WriteFile(filepath.Join(d.hooksDir, "10-keys"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(d.hooksDir, "README"), []byte("not a hook"), 0o644)
	status, msg := d.result(t)
	if os.Geteuid() != 0 {
		// A hook of another user than root is refused.
		if status["hooks"] != "fail" {
			t.Errorf("hooks of uid %d: %s %s", os.Geteuid(), status["hooks"], msg["hooks"])
		}
		return
	}
	if status["hooks"] != "ok" || !strings.Contains(msg["hooks"], "run on each bump: 10-keys |") {
		t.Errorf("hooks: %s %s", status["hooks"], msg["hooks"])
	}
	os.Chmod(filepath.Join(d.hooksDir, "10-keys"), 0o757)
	if status, msg := d.result(t); status["hooks"] != "fail" || !strings.Contains(msg["hooks"], "would not run 10-keys") {
		t.Errorf("a hook others may write: %s %s", status["hooks"], msg["hooks"])
	}
}

func TestDoctorContainers(t *testing.T) {
	d := testDoctor(t)
	status, msg := d.result(t)
	if status["containers"] != "warn" || !strings.Contains(msg["containers"], "genidctl hooks-d") {
		t.Errorf("nothing installed: %s %s", status["containers"], msg["containers"])
	}
	self, _ := os.Executable()
	files, err := hooksFiles(self, d.runDir, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		os.WriteFile(filepath.Join(d.ociHooks[0], f.name), f.data, 0o644)
	}
	if status, msg := d.result(t); status["containers"] != "ok" || !strings.Contains(msg["containers"], "genid-createRuntime.json") {
		t.Errorf("hooks.d: %s %s", status["containers"], msg["containers"])
	}
	// A CDI spec for another run dir.
	spec, err := cdiSpec(self, "/run/other")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(d.cdiDirs[0], cdiSpecName), spec, 0o644)
	if status, msg := d.result(t); status["containers"] != "warn" || !strings.Contains(msg["containers"], "/run/other") {
		t.Errorf("CDI of another run dir: %s %s", status["containers"], msg["containers"])
	}
	// Hooks that run a genidctl that is gone.
	files, _ = hooksFiles("/nonexistent/genidctl", d.runDir, false)
	os.Remove(filepath.Join(d.cdiDirs[0], cdiSpecName))
	for _, f := range files {
		os.WriteFile(filepath.Join(d.ociHooks[0], f.name), f.data, 0o644)
	}
	if status, msg := d.result(t); status["containers"] != "fail" || !strings.Contains(msg["containers"], "/nonexistent/genidctl, which is missing") {
		t.Errorf("a missing genidctl: %s %s", status["containers"], msg["containers"])
	}
}

func TestDoctorPrint(t *testing.T) {
	d := testDoctor(t)
	d.run(context.Background())
	var text, js bytes.Buffer
	d.print(&text, false)
	if !strings.Contains(text.String(), "fail  daemon ") || !strings.Contains(text.String(), "fix: start it") {
		t.Errorf("text:\n%s", text.String())
	}
	d.print(&js, true)
	var rep struct {
		OK     bool      `json:"ok"`
		Checks []finding `json:"checks"`
	}
	if err := json.Unmarshal(js.Bytes(), &rep); err != nil || rep.OK || len(rep.Checks) != len(d.found) {
		t.Errorf("json: %v %+v\n%s", err, rep, js.String())
	}
}

func TestCRIULibdir(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "default.conf")
	os.WriteFile(conf, []byte("# comment\ntcp-established\nlibdir /opt/criu/plugins\n"), 0o644)
	if got := criuLibdir(conf); got != "/opt/criu/plugins" {
		t.Errorf("libdir %q", got)
	}
	os.WriteFile(conf, []byte("--libdir=/x\n"), 0o644)
	if got := criuLibdir(conf); got != "/x" {
		t.Errorf("libdir %q", got)
	}
	if got := criuLibdir(filepath.Join(t.TempDir(), "none")); got != "" {
		t.Errorf("libdir %q", got)
	}
}
