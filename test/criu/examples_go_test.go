package criu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/servertest"
)

// goExamples are the programs of examples/go, built static
// (CGO_ENABLED=0) by `make e2e-criu` into GENID_GO_EXAMPLES.
var goExamples = []string{"watchdog", "eventloop", "hotpath", "orchestrator"}

func goExamplesDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("GENID_GO_EXAMPLES")
	if dir == "" {
		dir = "../../bin/examples/go" // from test/criu, where make runs the binary
	}
	for _, name := range goExamples {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("examples/go/%s not built (`make e2e-criu` builds them into bin/examples/go): %v", name, err)
		}
	}
	return dir
}

// newGoExamplesContainer is a runc container of a busybox bundle, given a
// genid scope by genidctl oci-config, that runs the four Go examples and a
// watcher that acks only once /out/go exists (a slow one, that the
// orchestrator waits for). The event loop reads its requests from the FIFO
// /tmp/req. Each writes what it prints to /out/NAME.out.
func newGoExamplesContainer(t *testing.T, h *host, exes string) *container {
	t.Helper()
	c := &container{t: t, h: h, id: containerID(), bundle: t.TempDir(), env: []string{"GENID_RUN_DIR=" + h.dir}}
	rootfs := filepath.Join(c.bundle, "rootfs")
	c.out = filepath.Join(c.bundle, "out")
	for _, d := range []string{"bin", "tmp"} {
		os.MkdirAll(filepath.Join(rootfs, d), 0o755)
	}
	os.MkdirAll(c.out, 0o777)
	copyFile(t, "/usr/bin/busybox", filepath.Join(rootfs, "bin/busybox"))
	for _, a := range []string{"sh", "sleep", "mkfifo"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", a))
	}
	copyFile(t, genidctl, filepath.Join(rootfs, "bin/genidctl"))
	for _, name := range goExamples {
		copyFile(t, filepath.Join(exes, name), filepath.Join(rootfs, "bin", name))
	}

	// By path: busybox's sh would run its own applet of a name (watchdog).
	script := "mkfifo /tmp/req && " +
		"{ while :; do sleep 1; done >/tmp/req & } && " + // the FIFO's writer, so it never ends
		"{ /bin/eventloop </tmp/req >/out/eventloop.out 2>/out/eventloop.err & } && " +
		"{ /bin/watchdog >/out/watchdog.out 2>/out/watchdog.err & } && " +
		"{ /bin/hotpath >/out/hotpath.out 2>/out/hotpath.err & } && " +
		"{ /bin/orchestrator -timeout 10m >/out/orchestrator.out 2>/out/orchestrator.err & } && " +
		"{ genidctl watch --exec sh -c 'until [ -e /out/go ]; do sleep 1; done' >/out/slow.out 2>/out/slow.err & } && " +
		"while :; do sleep 1; done"
	shellBundle(t, c.bundle, c.out, script)
	h.mustCtl("oci-config", c.bundle)
	return c
}

// outLines is what program name printed in the container.
func (c *container) outLines(name string) []string {
	return lines(filepath.Join(c.out, name+".out"))
}

// request sends a line to the event loop.
func (c *container) request(line string) {
	c.t.Helper()
	if out, err := runBounded(exec.Command("runc", "exec", c.id, "sh", "-c", "echo "+line+" >/tmp/req"), commandTimeout); err != nil {
		c.t.Fatalf("runc exec %s: %v\n%s", c.id, err, out)
	}
}

// 5. The four Go examples in one container, across `runc checkpoint` and
// `runc restore` with the plugin: at checkpoint time the watchdog is
// blocked in Wait and the orchestrator in WaitWatchers (a slow watcher has
// not acked). After the restore each has rebuilt exactly once, at the
// scope's new generation, and acked; the event loop serves with the new
// key; the orchestrator, whose wait was lost with its connection, is
// answered (it was outdated itself: it starts over), and resumes once the
// slow watcher acked. None hangs.
func TestGoExamplesRunc(t *testing.T) {
	exes := goExamplesDir(t)
	h := newHost(t, "goexamples")
	h.start(0)
	c := newGoExamplesContainer(t, h, exes)
	runcDetached(t, c.bundle, c.env, "run", "-d", c.id)
	t.Cleanup(func() { runBounded(exec.Command("runc", "delete", "-f", c.id), commandTimeout) })
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range append(slices.Clone(goExamples), "slow") {
				b, _ := os.ReadFile(filepath.Join(c.out, name+".err"))
				t.Logf("%s printed %q; stderr %q", name, c.outLines(name), b)
			}
		}
	})
	checkCgroup(t, c.id)
	servertest.WaitFor(t, "the five watchers", func() bool { return c.scopeStatus().Watchers == 5 })
	for _, name := range goExamples {
		waitLine(t, filepath.Join(c.out, name+".out"), "ready at generation 0")
	}
	c.request("before")
	waitLine(t, filepath.Join(c.out, "eventloop.out"), "served before at generation 0")

	// Generation 1: the four rebuild and ack; the orchestrator waits for
	// the slow one.
	h.mustCtl("bump", "--scope", c.id, "--reason", "setup")
	for _, name := range goExamples {
		waitLine(t, filepath.Join(c.out, name+".out"), "rebuilt at generation 1")
	}
	servertest.WaitFor(t, "only the slow watcher outdated", func() bool {
		st := c.scopeStatus()
		return st.Outdated == 1 && st.Generation == 1
	})
	time.Sleep(300 * time.Millisecond) // the orchestrator's wait on its way
	if l := c.outLines("orchestrator"); slices.Contains(l, "resumed at generation 1") {
		t.Fatalf("the orchestrator resumed with the slow watcher outdated: %q", l)
	}

	images := c.checkpoint()
	r := readRecord(t, images)
	if sr := r.Scope(c.id); sr == nil || sr.Generation == nil || *sr.Generation != 1 || len(r.Sockets) != 5 {
		t.Fatalf("record %+v: want the scope at 1 and five sockets", r.Record)
	}
	for _, s := range r.Sockets {
		if !s.Watcher || s.Scope != c.id {
			t.Fatalf("recorded socket %+v: want a watcher of %s", s, c.id)
		}
	}
	servertest.WaitFor(t, "the scope to go with the container", func() bool { return !c.hasScope() })

	c.restore(images)
	st := c.scopeStatus()
	gen := st.Generation
	if gen <= 1 || st.LastBump == nil || st.LastBump.Reason != "criu-restore" {
		t.Fatalf("the restored scope %+v: want past 1, by criu-restore", st)
	}
	rebuilt := fmt.Sprintf("rebuilt at generation %d", gen)
	for _, name := range goExamples {
		waitLine(t, filepath.Join(c.out, name+".out"), rebuilt)
	}
	c.request("after")
	waitLine(t, filepath.Join(c.out, "eventloop.out"), fmt.Sprintf("served after at generation %d", gen))
	// The slow watcher is outdated again, so the orchestrator waits on.
	time.Sleep(300 * time.Millisecond)
	if st := c.scopeStatus(); st.Watchers != 5 || st.Outdated != 1 {
		t.Fatalf("after the restore, the slow watcher not yet done: %+v", st)
	}
	if err := os.WriteFile(filepath.Join(c.out, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitLine(t, filepath.Join(c.out, "orchestrator.out"), fmt.Sprintf("resumed at generation %d", gen))
	if _, err := h.ctl("wait-watchers", "--scope", c.id, "--timeout", "15s"); err != nil {
		t.Fatalf("the restored scope's barrier: %v", err)
	}
	if st := c.scopeStatus(); st.Watchers != 5 || st.Outdated != 0 {
		t.Fatalf("at the end: %+v", st)
	}

	// What each printed, whole: one rebuild a generation.
	want := map[string][]string{
		"watchdog": {"ready at generation 0", "rebuilt at generation 1", rebuilt},
		"hotpath":  {"ready at generation 0", "rebuilt at generation 1", rebuilt},
		"eventloop": {"ready at generation 0", "served before at generation 0", "rebuilt at generation 1",
			rebuilt, fmt.Sprintf("served after at generation %d", gen)},
		"orchestrator": {"ready at generation 0", "paused at generation 1", "rebuilt at generation 1",
			fmt.Sprintf("paused at generation %d", gen), rebuilt, fmt.Sprintf("resumed at generation %d", gen)},
	}
	for _, name := range goExamples {
		if got := c.outLines(name); !slices.Equal(got, want[name]) {
			t.Errorf("%s printed %q, want %q", name, got, want[name])
		}
		if b, _ := os.ReadFile(filepath.Join(c.out, name+".err")); len(b) > 0 {
			t.Errorf("%s's stderr: %s", name, b)
		}
	}
	if l := c.outLines("slow"); len(l) == 0 || l[len(l)-1] != fmt.Sprint(gen) {
		t.Errorf("the slow watcher printed %q, want %d last", l, gen)
	}
}
