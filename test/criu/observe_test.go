package criu

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/servertest"
	"github.com/genid-project/genid/internal/testbed"
)

type doctorReport struct {
	OK     bool `json:"ok"`
	Checks []struct {
		Check   string `json:"check"`
		Status  string `json:"status"`
		Message string `json:"message"`
		Fix     string `json:"fix"`
	} `json:"checks"`
}

// doctor in the test bed sees the real CRIU, the real plugin where CRIU
// loads it, built for that CRIU, and what the bed's probe saw of hardware
// breakpoints.
func TestDoctorInBed(t *testing.T) {
	h := newHost(t, "doctor")
	h.start(0)
	cmd := exec.Command(genidctl, "--run-dir", h.dir, "doctor", "--json", "--hooks-dir", t.TempDir())
	out, err := cmd.Output()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatal(err)
	}
	var rep doctorReport
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		t.Fatalf("doctor: %v %v\n%s", err, jerr, out)
	}
	t.Logf("doctor:\n%s", out)
	checks := map[string]string{}
	messages := map[string]string{}
	for _, c := range rep.Checks {
		checks[c.Check], messages[c.Check] = c.Status, c.Message
	}
	v, _ := exec.Command("criu", "--version").Output()
	criuVersion := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(string(v), "\n", 2)[0], "Version:"))
	if checks["daemon"] != "ok" || checks["criu"] != "ok" || !strings.Contains(messages["criu"], "CRIU "+criuVersion) {
		t.Errorf("daemon %s, criu %s %q (criu --version %q)", checks["daemon"], checks["criu"], messages["criu"], criuVersion)
	}
	if checks["criu plugin"] != "ok" || !strings.Contains(messages["criu plugin"], "built for CRIU "+criuVersion) ||
		!strings.Contains(messages["criu plugin"], "/usr/lib/criu/genid-criu.so") {
		t.Errorf("plugin: %s %q", checks["criu plugin"], messages["criu plugin"])
	}
	facts, ferr := testbed.ReadFacts(manifestPath)
	if ferr != nil {
		t.Fatal(ferr)
	}
	want := map[string]string{"fire": "ok", "never": "warn"}[facts["run.hw_breakpoints"]] // the bed gives criu CRIU_FAULT=130 where they never fire
	if checks["hw breakpoints"] != want || !strings.HasPrefix(messages["hw breakpoints"], facts["run.hw_breakpoints"]) {
		t.Errorf("hw breakpoints: %s %q; the bed's probe: %s (%s)", checks["hw breakpoints"], messages["hw breakpoints"],
			facts["run.hw_breakpoints"], testbed.CRIUMode(facts))
	}
	wantExit := 0
	if !rep.OK {
		wantExit = 1
	}
	if code := exitCode(err); code != wantExit {
		t.Errorf("exit %d with ok %v", code, rep.OK)
	}
	for _, c := range rep.Checks {
		if c.Status == "fail" {
			t.Errorf("in the bed, %s fails: %s", c.Check, c.Message)
		}
	}
}

// A real CRIU restore is in the history: by a restore, past the recorded
// generation, its restored watcher's barrier cleared; the log says the same.
func TestHistoryOfRestore(t *testing.T) {
	h := newHost(t, "history")
	images, pid, out := checkpointWatcher(t, h)
	h.start(0)
	gen := restoreOn(t, h, images, pid, out)
	var list []genid.HistoryEntry
	servertest.WaitFor(t, "the restore's barrier to clear", func() bool {
		if err := json.Unmarshal([]byte(h.mustCtl("history", "--json")), &list); err != nil {
			t.Fatal(err)
		}
		return len(list) > 0 && list[len(list)-1].Barrier == genid.BarrierCleared
	})
	e := list[len(list)-1]
	if e.By != "restore" || e.Reason != "criu-restore" || e.Generation != gen || e.Restore == nil ||
		e.Restore.RecordedGeneration == nil || *e.Restore.RecordedGeneration != 5 || e.Min != 6 || e.UID != 0 {
		t.Fatalf("restore's entry: %+v %+v", e, e.Restore)
	}
	if e.PID <= 0 || e.PID == pid {
		t.Errorf("the restore's asker is criu, not pid %d", e.PID)
	}
	if abs, _ := filepath.Abs(images); e.Restore.ImagesDir != abs {
		t.Errorf("the restore's images dir: %q, want %q", e.Restore.ImagesDir, abs)
	}
	if out := h.mustCtl("history"); !strings.Contains(out, "images "+e.Restore.ImagesDir) {
		t.Errorf("genidctl history does not name the images:\n%s", out)
	}
	// The history of the first daemon's run dir (the same dir, restarted)
	// holds the setup bump before it.
	if len(list) < 2 || list[len(list)-2].Reason != "setup" {
		t.Errorf("history: %+v", list)
	}
	if !strings.Contains(h.log.String(), "msg=bumped") || !strings.Contains(h.log.String(), "recorded_generation=5") {
		t.Errorf("no log line of the restore's bump:\n%s", h.log.String())
	}
	syscall.Kill(pid, syscall.SIGKILL)
}
