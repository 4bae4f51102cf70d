package criu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/servertest"
)

// examplesC are the four programs of examples/c.
var examplesC = []string{"watchdog", "eventloop", "hotpath", "orchestrator"}

// buildExamplesC builds examples/c statically with the bed's gcc, so that
// they run in a busybox container.
func buildExamplesC(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	exes := map[string]string{}
	for _, name := range examplesC {
		exe := filepath.Join(dir, name)
		cc := exec.Command("gcc", "-static", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
			"-I../../plugin/criu", "-o", exe, "../../examples/c/"+name+".c")
		if b, err := cc.CombinedOutput(); err != nil {
			t.Fatalf("gcc %s: %v\n%s", name, err, b)
		}
		exes[name] = exe
	}
	return exes
}

// newExamplesContainer is a busybox container with a scope of its own that
// runs the four C examples, each writing its output to /out/NAME.out, and a
// `genidctl watch` that acks only once /out/go exists: until then it holds
// the orchestrator's barrier.
func newExamplesContainer(t *testing.T, h *host, exes map[string]string) *container {
	t.Helper()
	c := &container{t: t, h: h, id: containerID(), bundle: t.TempDir(), env: []string{"GENID_RUN_DIR=" + h.dir}}
	rootfs := filepath.Join(c.bundle, "rootfs")
	c.out = filepath.Join(c.bundle, "out")
	for _, d := range []string{"bin", "tmp", "ex"} {
		os.MkdirAll(filepath.Join(rootfs, d), 0o755)
	}
	os.MkdirAll(c.out, 0o777)
	copyFile(t, "/usr/bin/busybox", filepath.Join(rootfs, "bin/busybox"))
	for _, a := range []string{"sh", "sleep", "test"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", a))
	}
	copyFile(t, genidctl, filepath.Join(rootfs, "bin/genidctl"))
	var script strings.Builder
	for _, name := range examplesC {
		// Not on PATH: busybox's sh would run its own applet "watchdog".
		copyFile(t, exes[name], filepath.Join(rootfs, "ex", name))
		args := ""
		if name == "orchestrator" {
			args = " /run/genid 60000" // long enough to be blocked in it at checkpoint
		}
		fmt.Fprintf(&script, "/ex/%s%s >/out/%s.out 2>/out/%s.err & ", name, args, name, name)
	}
	script.WriteString("genidctl watch --exec test -e /out/go >/out/holdout.out 2>&1 & while :; do sleep 1; done")

	shellBundle(t, c.bundle, c.out, script.String())
	h.mustCtl("oci-config", c.bundle)
	return c
}

// TestExamplesCRunc runs the four C examples in one runc container with a
// scope of its own, across `runc checkpoint` and `runc restore` with the
// plugin, taken while the watchdog is blocked waiting for the next
// generation and the orchestrator in its barrier (a watcher has not acked).
// After the restore each has rebuilt its state exactly once, the
// orchestrator has resumed, and none hangs: a later bump finds them all.
func TestExamplesCRunc(t *testing.T) {
	exes := buildExamplesC(t)
	h := newHost(t, "examples-c")
	h.start(0)
	c := newExamplesContainer(t, h, exes)
	runcDetached(t, c.bundle, c.env, "run", "-d", c.id)
	t.Cleanup(func() { runBounded(exec.Command("runc", "delete", "-f", c.id), commandTimeout) })
	out := func(name string) string { return filepath.Join(c.out, name+".out") }
	defer func() {
		if t.Failed() {
			for _, name := range append(slices.Clone(examplesC), "holdout") {
				b, _ := os.ReadFile(out(name))
				e, _ := os.ReadFile(filepath.Join(c.out, name+".err"))
				t.Logf("%s:\n%s%s", name, b, e)
			}
		}
	}()
	for _, name := range examplesC {
		waitLine(t, out(name), "ready at generation 0")
	}
	servertest.WaitFor(t, "five watchers in the container's scope", func() bool { return c.scopeStatus().Watchers == 5 })

	// Generation 1: all four rebuild, the holdout does not ack, and the
	// orchestrator waits for it.
	h.mustCtl("bump", "--scope", c.id, "--reason", "setup")
	for _, name := range examplesC {
		waitLine(t, out(name), "rebuilt at generation 1")
	}
	servertest.WaitFor(t, "only the holdout outdated", func() bool { return c.scopeStatus().Outdated == 1 })
	time.Sleep(300 * time.Millisecond) // the orchestrator goes from its ack into its barrier

	images := c.checkpoint()
	r := readRecord(t, images)
	if sr := r.Scope(c.id); sr == nil || sr.Generation == nil || *sr.Generation != 1 || len(r.Sockets) != 5 {
		t.Fatalf("record %+v", r)
	}
	for _, s := range r.Sockets {
		if !s.Watcher || s.Scope != c.id {
			t.Fatalf("recorded socket %+v: want a watcher of %s", s, c.id)
		}
	}
	// The holdout acks from now on.
	if err := os.WriteFile(filepath.Join(c.out, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}

	c.restore(images)
	if st := c.scopeStatus(); st.Generation != 2 || st.LastBump == nil || st.LastBump.Reason != "criu-restore" {
		t.Fatalf("restored scope %+v: want generation 2 by criu-restore", st)
	}
	for _, name := range examplesC {
		waitLine(t, out(name), "rebuilt at generation 2")
	}
	waitLine(t, out("orchestrator"), "resumed at generation 2")
	if _, err := h.ctl("wait-watchers", "--scope", c.id, "--timeout", "15s"); err != nil {
		t.Fatalf("the restored scope's barrier: %v", err)
	}
	if st := c.scopeStatus(); st.Watchers != 5 || st.Outdated != 0 {
		t.Fatalf("restored scope %+v: want 5 watchers, none outdated", st)
	}

	// None hangs: a bump after the restore reaches every one.
	h.mustCtl("bump", "--scope", c.id, "--reason", "after restore")
	for _, name := range examplesC {
		waitLine(t, out(name), "rebuilt at generation 3")
	}
	waitLine(t, out("orchestrator"), "resumed at generation 3")
	if _, err := h.ctl("wait-watchers", "--scope", c.id, "--timeout", "15s"); err != nil {
		t.Fatalf("the barrier after the restore: %v", err)
	}

	// Each rebuilt exactly once per generation; the orchestrator's barrier
	// at 1, cut by the checkpoint, ended in the restored generation's.
	rebuilt := []string{"ready at generation 0", "rebuilt at generation 1", "rebuilt at generation 2", "rebuilt at generation 3"}
	for _, name := range []string{"watchdog", "eventloop", "hotpath"} {
		if got := lines(out(name)); !slices.Equal(got, rebuilt) {
			t.Errorf("%s printed %q, want %q", name, got, rebuilt)
		}
	}
	orchestrated := []string{"ready at generation 0", "paused at generation 1", "rebuilt at generation 1",
		"paused at generation 2", "rebuilt at generation 2", "resumed at generation 2",
		"paused at generation 3", "rebuilt at generation 3", "resumed at generation 3"}
	if got := lines(out("orchestrator")); !slices.Equal(got, orchestrated) {
		t.Errorf("orchestrator printed %q, want %q", got, orchestrated)
	}
}
