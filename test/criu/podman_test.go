package criu

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/servertest"
)

// integration is how a podman container asks for its scope.
type integration int

const (
	viaHooksD integration = iota // the annotation io.genid.scope=true, with genid's hooks.d files
	viaCDI                       // the CDI device genid.io/scope=container
)

func (i integration) String() string { return [...]string{"hooks.d", "CDI"}[i] }

// engine is podman as one host has it: its own storage and state, with
// genid's hooks.d files and CDI spec installed as an operator would, by
// genidctl, and one OCI runtime.
type engine struct {
	t       *testing.T
	h       *host
	runtime string
	dir     string // storage, state and hooks.d
}

const podmanImage = "localhost/genid-test:latest"

// The CDI spec goes where podman looks by default; the bed's /run is the
// run's own.
const cdiSpecDir = "/var/run/cdi"

func newEngine(t *testing.T, h *host, runtime string) *engine {
	t.Helper()
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman: %v: run through `make e2e-criu`, inside the test bed", err)
	}
	e := &engine{t: t, h: h, runtime: runtime, dir: t.TempDir()}
	// The operator's two commands (the hooks' run dir is the host's).
	h.mustCtl("hooks-d", "--genidctl", genidctl, "--dir", filepath.Join(e.dir, "hooks.d"))
	h.mustCtl("cdi-spec", "--genidctl", genidctl, "--dir", cdiSpecDir)
	t.Cleanup(func() {
		// Whatever the test left running goes, so its mounts do too.
		e.podman("rm", "-f", "-a", "-t", "0")
	})
	return e
}

// podman runs podman on the engine's storage, bounded.
func (e *engine) podman(args ...string) (string, error) {
	full := append([]string{
		"--runtime", e.runtime,
		"--root", filepath.Join(e.dir, "storage"),
		"--runroot", filepath.Join(e.dir, "run"),
		"--tmpdir", filepath.Join(e.dir, "tmp"),
		"--hooks-dir", filepath.Join(e.dir, "hooks.d"),
	}, args...)
	// Its output alone: a warning on stderr is not an answer.
	var stdout, stderr strings.Builder
	cmd := exec.Command("podman", full...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second // a container left behind may hold the pipes
	if _, err := runBounded(cmd, commandTimeout); err != nil {
		return "", fmt.Errorf("podman %s: %w\n%s%s(criu mode: %s)", strings.Join(args, " "), err, stdout.String(), stderr.String(), criuMode())
	}
	return strings.TrimSpace(stdout.String()), nil
}

func (e *engine) mustPodman(args ...string) string {
	e.t.Helper()
	out, err := e.podman(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// makeImage imports an image of busybox, genidctl and this test binary.
func (e *engine) makeImage() {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "image.tar")
	f, err := os.Create(path)
	if err != nil {
		e.t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	self, _ := os.Executable()
	for _, d := range []string{"bin/", "tmp/", "out/", "run/", "dev/"} {
		tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	for name, from := range map[string]string{"bin/busybox": "/usr/bin/busybox", "bin/genidctl": genidctl, "bin/genid-test": self} {
		b, err := os.ReadFile(from)
		if err != nil {
			e.t.Fatal(err)
		}
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(b))})
		tw.Write(b)
	}
	for _, a := range []string{"sh", "sleep", "cat", "ls", "touch", "rm"} {
		tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox"})
	}
	if err := errors.Join(tw.Close(), f.Close()); err != nil {
		e.t.Fatal(err)
	}
	// A command of its own, for containerd's pod sandbox.
	e.mustPodman("import", "--change", `CMD ["/bin/sleep", "1000000000"]`, path, podmanImage)
}

// copyImage gives other the engine's image, the same image ID.
func (e *engine) copyImage(other *engine) {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "image-save.tar")
	e.mustPodman("save", "-o", path, podmanImage)
	other.mustPodman("load", "-i", path)
}

// pctr is a podman container of the test image that runs a watcher of its
// scope, whose ack waits for the file /out/ack, and a process that maps
// /dev/sysgenid, each writing what it sees to a file of out.
type pctr struct {
	e    *engine
	name string
	out  string
}

const pctrScript = "genidctl watch --exec sh -c 'until [ -e /out/ack ]; do sleep 0.05; done' >>/out/watch.out 2>>/out/watch.err & " +
	"GENID_TEST_HELPER=mmap-reader OUT=/out/mmap.out genid-test >>/out/mmap.err 2>&1 & " +
	"while :; do sleep 1; done"

func (e *engine) run(name string, how integration) *pctr {
	e.t.Helper()
	c := &pctr{e: e, name: name, out: e.t.TempDir()}
	os.Chmod(c.out, 0o777)
	args := []string{"run", "-d", "--name", name, "--network", "none", "-v", c.out + ":/out"}
	switch how {
	case viaHooksD:
		args = append(args, "--annotation", "io.genid.scope=true")
	case viaCDI:
		args = append(args, "--device", "genid.io/scope=container")
	}
	e.mustPodman(append(args, podmanImage, "sh", "-c", pctrScript)...)
	c.ack(true)
	sc := c.scope()
	servertest.WaitFor(e.t, name+"'s watcher", func() bool { return e.h.scopeStatus(sc).Watchers == 1 })
	waitLine(e.t, filepath.Join(c.out, "mmap.out"), strconv.Itoa(int(e.h.scopeStatus(sc).Generation)))
	return c
}

// ack lets the container's watcher ack, or holds its acks.
func (c *pctr) ack(on bool) {
	c.e.t.Helper()
	p := filepath.Join(c.out, "ack")
	var err error
	if on {
		err = os.WriteFile(p, nil, 0o644)
	} else if err = os.Remove(p); errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err != nil {
		c.e.t.Fatal(err)
	}
}

func (c *pctr) inspect(format string) string {
	c.e.t.Helper()
	return c.e.mustPodman("inspect", "-f", format, c.name)
}

// scope is the name of the container's scope: the one bound to its pid.
func (c *pctr) scope() string {
	c.e.t.Helper()
	pid, err := strconv.Atoi(c.inspect("{{.State.Pid}}"))
	if err != nil || pid <= 0 {
		c.e.t.Fatalf("%s's pid: %v", c.name, err)
	}
	var name string
	servertest.WaitFor(c.e.t, c.name+"'s scope", func() bool {
		name = c.e.h.scopeOfPID(pid)
		return name != ""
	})
	return name
}

// exec runs a command in the container.
func (c *pctr) exec(args ...string) (string, error) {
	return c.e.podman(append([]string{"exec", c.name}, args...)...)
}

// rm removes the container, and checks that its scope goes with it.
func (c *pctr) rm() {
	c.e.t.Helper()
	sc := c.scope()
	c.e.mustPodman("rm", "-f", "-t", "0", c.name)
	servertest.WaitFor(c.e.t, c.name+"'s scope "+sc+" to go", func() bool { return !c.e.h.hasScope(sc) })
}

// checkpoint exports the container as podman does, and keeps its output
// files as they were: CRIU checks the size of the files its tasks had open,
// so each restore of the checkpoint starts from them.
type podCheckpoint struct {
	archive string
	id      string // the checkpointed container's
	out     string
	saved   map[string][]byte
}

func (c *pctr) checkpoint() *podCheckpoint {
	c.e.t.Helper()
	sc := c.scope()
	ck := &podCheckpoint{archive: filepath.Join(c.e.t.TempDir(), c.name+".tar.zst"), id: c.inspect("{{.ID}}"), out: c.out, saved: map[string][]byte{}}
	c.e.mustPodman("container", "checkpoint", "--export", ck.archive, c.name)
	servertest.WaitFor(c.e.t, c.name+"'s scope "+sc+" to go with it", func() bool { return !c.e.h.hasScope(sc) })
	ents, _ := os.ReadDir(c.out)
	for _, ent := range ents {
		if ent.Name() == "ack" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(c.out, ent.Name()))
		if err != nil {
			c.e.t.Fatal(err)
		}
		ck.saved[ent.Name()] = b
	}
	return ck
}

// restore imports the checkpoint into e as a container called name, its
// output files as they were and its acks held.
func (e *engine) restore(ck *podCheckpoint, name string) *pctr {
	e.t.Helper()
	c := e.restoreNoWait(ck, name)
	if c == nil {
		e.t.FailNow()
	}
	return c
}

func (ck *podCheckpoint) resetFiles(t *testing.T) {
	t.Helper()
	os.Remove(filepath.Join(ck.out, "ack"))
	for name, b := range ck.saved {
		if err := os.WriteFile(filepath.Join(ck.out, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// restoreNoWait is restore for concurrent use: it reports a failure and
// returns nil, without resetting the files.
func (e *engine) restoreNoWait(ck *podCheckpoint, name string) *pctr {
	if _, err := e.podman("container", "restore", "--import", ck.archive, "--name", name); err != nil {
		e.t.Error(err)
		return nil
	}
	return &pctr{e: e, name: name, out: ck.out}
}

// 2. Podman, with crun and with runc, and the two ways a container asks for
// its scope: a container restored from `podman container checkpoint
// --export` by `podman container restore --import` under a new name, on
// this host, twice at once, and on second hosts behind and ahead, gets a
// scope of its own past the recorded generation, with its watcher
// re-attached and woken and its barrier its own; the other container and
// the host see nothing.
func TestPodmanScopes(t *testing.T) {
	for _, tc := range []struct {
		runtime       string
		target, other integration
	}{
		{"crun", viaHooksD, viaCDI},
		{"runc", viaCDI, viaHooksD},
	} {
		t.Run(tc.runtime+"/"+tc.target.String(), func(t *testing.T) {
			podmanScopes(t, tc.runtime, tc.target, tc.other)
		})
	}
}

func podmanScopes(t *testing.T, runtime string, target, other integration) {
	// podman passes criu no environment: the plugin finds the daemon at
	// its default run dir.
	h := newHostAt(t, genid.DefaultRunDir)
	h.start(0)
	hostOut := filepath.Join(t.TempDir(), "host-watch.out")
	spawn(t, hostOut, nil, genidctl, "--run-dir", h.dir, "watch", "--exec", "false")
	servertest.WaitFor(t, "the host's watcher", func() bool { return h.status().Watchers == 1 })
	h.mustCtl("bump", "--reason", "host outdated")

	e := newEngine(t, h, runtime)
	e.makeImage()
	a, b := e.run("a", target), e.run("b", other)
	aScope, bScope := a.scope(), b.scope()
	if id := a.inspect("{{.ID}}"); aScope != id {
		t.Fatalf("a's scope is %q, not its id %s", aScope, id)
	}
	h.mustCtl("bump", "--scope", aScope, "--min", "5", "--reason", "setup")
	h.mustCtl("bump", "--scope", bScope, "--min", "2", "--reason", "setup")
	waitLine(t, filepath.Join(a.out, "watch.out"), "5")
	waitLine(t, filepath.Join(a.out, "mmap.out"), "5")
	waitLine(t, filepath.Join(b.out, "mmap.out"), "2")
	if _, err := h.ctl("wait-watchers", "--scope", aScope, "--timeout", "15s"); err != nil {
		t.Fatalf("a's barrier, the host's watcher outdated: %v", err)
	}
	// A container sees its own scope and nothing of the host's or b's.
	if out, err := a.exec("ls", "/run/genid"); err != nil || strings.Join(strings.Fields(out), " ") != "generation genid.sock vmclock" {
		t.Fatalf("a's /run/genid: %v %q", err, out)
	}
	if out, err := a.exec("genidctl", "bump"); err == nil {
		t.Fatalf("a bump from inside a: %s", out)
	}
	hostBefore, bBefore := h.gen(), h.scopeStatus(bScope).Generation

	ck := a.checkpoint()

	// check checks a restored container: its own scope past the record,
	// named as the runtime's path through restore has it, its watcher and
	// mmap reader woken, and a barrier that waits for its watcher's ack.
	check := func(where string, c *pctr, want uint32) string {
		t.Helper()
		sc := c.scope()
		switch runtime {
		case "runc": // runc runs the createRuntime hook at restore
			if id := c.inspect("{{.ID}}"); sc != id {
				t.Fatalf("%s: %s's scope is %q, not its id %s", where, c.name, sc, id)
			}
		case "crun": // crun runs no hook at restore: the plugin names it
			if sc != ck.id && !strings.HasPrefix(sc, ck.id+"-") {
				t.Fatalf("%s: %s's scope is %q, not named after the checkpointed %s", where, c.name, sc, ck.id)
			}
		}
		if st := h.scopeStatus(sc); st.Generation != want || st.LastBump == nil || st.LastBump.Reason != "criu-restore" {
			t.Fatalf("%s: %s's scope %+v, want generation %d by criu-restore", where, c.name, st, want)
		}
		waitLine(t, filepath.Join(c.out, "watch.out"), strconv.Itoa(int(want)))
		waitLine(t, filepath.Join(c.out, "mmap.out"), strconv.Itoa(int(want)))
		// /dev/vmclock0 is the restored scope's VMClock page: its magic,
		// and its vm_generation_counter.
		if out, err := c.exec("busybox", "od", "-An", "-tx4", "-N4", "/dev/vmclock0"); err != nil || strings.TrimSpace(out) != "4b4c4356" {
			t.Fatalf("%s: %s's /dev/vmclock0 magic: %v %q", where, c.name, err, out)
		}
		if out, err := c.exec("busybox", "od", "-An", "-tu8", "-j104", "-N8", "/dev/vmclock0"); err != nil || strings.TrimSpace(out) != strconv.Itoa(int(want)) {
			t.Fatalf("%s: %s's /dev/vmclock0 counter: %v %q, want %d", where, c.name, err, out, want)
		}
		// The barrier waits for the restored watcher's ack, and no longer:
		// on the admin socket, and inside the container (a readiness
		// probe's command, see docs/kubernetes.md).
		if out, err := h.ctl("wait-watchers", "--scope", sc, "--timeout", "1s"); exitCode(err) != 5 {
			t.Fatalf("%s: wait-watchers before the watcher acked: %v %q, want a timeout", where, err, out)
		}
		if out, err := c.exec("genidctl", "wait-watchers", "--timeout", "1s"); exitCode(err) != 5 {
			t.Fatalf("%s: wait-watchers in %s before its watcher acked: %v %q, want a timeout", where, c.name, err, out)
		}
		c.ack(true)
		if _, err := h.ctl("wait-watchers", "--scope", sc, "--timeout", "15s"); err != nil {
			t.Fatalf("%s: %s's barrier: %v", where, c.name, err)
		}
		if _, err := c.exec("genidctl", "wait-watchers", "--timeout", "15s"); err != nil {
			t.Fatalf("%s: wait-watchers in %s: %v", where, c.name, err)
		}
		if st := h.scopeStatus(sc); st.Watchers != 1 || st.Outdated != 0 || st.WatcherList[0].Acked != want {
			t.Fatalf("%s: %s's restored watcher %+v", where, c.name, st)
		}
		return sc
	}

	// On this host: past the record, the others untouched.
	ck.resetFiles(t)
	a1 := e.restore(ck, "a1")
	check("restored here", a1, 6)
	if g := h.gen(); g != hostBefore {
		t.Fatalf("the host's generation moved from %d to %d", hostBefore, g)
	}
	if g := h.scopeStatus(bScope).Generation; g != bBefore {
		t.Fatalf("b's generation moved from %d to %d", bBefore, g)
	}
	if l := lines(filepath.Join(b.out, "watch.out")); l[len(l)-1] != "2" {
		t.Fatalf("b's watcher saw %v", l)
	}
	if l := slices.DeleteFunc(lines(hostOut), func(l string) bool { return strings.HasPrefix(l, "genidctl:") }); len(l) != 1 {
		t.Fatalf("the host's watcher saw %v, want only the one bump", l)
	}
	a1.rm()

	// Twice at once, two clones: a scope each, each its own stream.
	ck.resetFiles(t)
	clones := make([]*pctr, 2)
	var wg sync.WaitGroup
	for i := range clones {
		wg.Go(func() { clones[i] = e.restoreNoWait(ck, fmt.Sprintf("clone%d", i)) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var cs [2]string
	for i, c := range clones {
		cs[i] = c.scope()
		if st := h.scopeStatus(cs[i]); st.Generation != 6 {
			t.Fatalf("%s's scope %s at %d, want 6", c.name, cs[i], st.Generation)
		}
		servertest.WaitFor(t, c.name+"'s watcher", func() bool { return h.scopeStatus(cs[i]).Watchers == 1 })
	}
	if cs[0] == cs[1] {
		t.Fatalf("the two clones share the scope %s", cs[0])
	}
	clones[0].ack(true)
	h.mustCtl("bump", "--scope", cs[0], "--min", "20", "--reason", "one clone")
	for i, want := range []string{"20", "6"} {
		if out, err := clones[i].exec("genidctl", "get"); err != nil || out != want {
			t.Fatalf("%s sees generation %q (%v), want %s", clones[i].name, out, err, want)
		}
	}
	for _, c := range clones {
		c.rm()
	}
	b.rm()

	// On a second host, behind and then ahead of the record: a fresh daemon
	// and run dir, fresh podman storage.
	for _, hostGen := range []uint32{2, 9} {
		where := fmt.Sprintf("restored on a second host at %d", hostGen)
		h.fresh(hostGen)
		e2 := newEngine(t, h, runtime)
		e.copyImage(e2)
		ck.resetFiles(t)
		c := e2.restore(ck, "a2")
		check(where, c, 6)
		if g := h.gen(); g != hostGen {
			t.Fatalf("%s: the host's generation moved to %d", where, g)
		}
		c.rm()
	}
}

// exitCode is the exit status of a failed genidctl, or 0.
func exitCode(err error) int {
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return 0
}

// scopeStatus is a scope as an administrator sees it.
func (h *host) scopeStatus(name string) status {
	h.t.Helper()
	var st status
	if err := json.Unmarshal([]byte(h.mustCtl("status", "--scope", name, "--json")), &st); err != nil {
		h.t.Fatal(err)
	}
	return st
}

// hasScope tells whether the daemon has scope name.
func (h *host) hasScope(name string) bool {
	_, err := h.ctl("get", "--scope", name)
	return err == nil
}

// scopeOfPID returns the scope bound to process pid, or "".
func (h *host) scopeOfPID(pid int) string {
	h.t.Helper()
	var list []struct {
		Scope string `json:"scope"`
		PID   int    `json:"pid"`
	}
	if err := json.Unmarshal([]byte(h.mustCtl("scope", "list", "--json")), &list); err != nil {
		h.t.Fatal(err)
	}
	for _, s := range list {
		if s.PID == pid && s.Scope != "" {
			return s.Scope
		}
	}
	return ""
}
