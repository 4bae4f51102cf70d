package criu

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/genid-project/genid/checkpoint"
	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/servertest"
	"github.com/genid-project/genid/internal/testbed"

	"golang.org/x/sys/unix"
)

// commandTimeout bounds each criu and runc command of these tests: one that
// hangs (a criu waiting for a breakpoint that never fires, say) fails the
// test that ran it within a minute, with criu's log, long before the
// binary's -test.timeout stops everything.
const commandTimeout = time.Minute

// runHelper is the test binary's second life, inside a container: it maps
// /dev/sysgenid (a Go hot-path reader; sysgenidread is AWS-LC's way in C)
// and writes every value it sees to OUT; or, as page-waiter, sleeps on the
// container's page with Client.WaitChange and writes each generation it is
// woken at.
func runHelper(name string) int {
	switch name {
	case "mmap-reader":
	case "page-waiter":
		return pageWaiter(os.Getenv("OUT"))
	case "flood":
		return flood(os.Getenv("SOCK"))
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
		return 2
	}
	f, err := os.Open("/dev/sysgenid")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out, err := os.OpenFile(os.Getenv("OUT"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	last := int64(-1)
	for {
		// A hot-path reader: the check is one load, so it can run often.
		g := int64(uint32(mem[0]) | uint32(mem[1])<<8 | uint32(mem[2])<<16 | uint32(mem[3])<<24)
		if g != last {
			fmt.Fprintln(out, g)
			last = g
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pageWaiter prints the generation of the default run dir's page to out at
// start and each time WaitChange wakes.
func pageWaiter(out string) int {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		var c *genid.Client
		if c, err = genid.Open(genid.DefaultRunDir); err == nil {
			for g := c.Generation(); err == nil; g, err = c.WaitChange(context.Background(), g) {
				fmt.Fprintln(f, g)
			}
		}
	}
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// container is a runc container of a busybox bundle, given a genid scope by
// genidctl oci-config, that runs a watcher of its scope, a process that
// maps /dev/sysgenid, C readers of /dev/sysgenid and /dev/vmclock0
// (sysgenidread and vmclockread, which read them as AWS-LC does), and two
// threads asleep on the page (pagewait with genid.h, page-waiter with the Go
// client), each writing what it sees to a file of out.
type container struct {
	t      *testing.T
	h      *host
	id     string
	bundle string
	out    string // seen as /out inside
	env    []string
	saved  map[string][]byte // the output files at checkpoint
}

func newContainer(t *testing.T, h *host) *container {
	t.Helper()
	c := &container{t: t, h: h, id: containerID(), bundle: t.TempDir(), env: []string{"GENID_RUN_DIR=" + h.dir}}
	rootfs := filepath.Join(c.bundle, "rootfs")
	c.out = filepath.Join(c.bundle, "out")
	for _, d := range []string{"bin", "tmp"} {
		os.MkdirAll(filepath.Join(rootfs, d), 0o755)
	}
	os.MkdirAll(c.out, 0o777)
	copyFile(t, "/usr/bin/busybox", filepath.Join(rootfs, "bin/busybox"))
	for _, a := range []string{"sh", "sleep", "cat", "ls"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", a))
	}
	copyFile(t, genidctl, filepath.Join(rootfs, "bin/genidctl"))
	self, _ := os.Executable()
	copyFile(t, self, filepath.Join(rootfs, "bin/genid-test"))
	buildStatic(t, "../e2e/testdata/vmclockread.c", filepath.Join(rootfs, "bin/vmclockread"))
	buildStatic(t, "../e2e/testdata/sysgenidread.c", filepath.Join(rootfs, "bin/sysgenidread"))
	buildStatic(t, "../e2e/testdata/pagewait.c", filepath.Join(rootfs, "bin/pagewait"))

	script := "genidctl watch >/out/watch.out 2>/out/watch.err & " +
		"GENID_TEST_HELPER=mmap-reader OUT=/out/mmap.out genid-test >/out/mmap.err 2>&1 & " +
		"vmclockread /dev/vmclock0 watch >/out/vmclock.out 2>/out/vmclock.err & " +
		"sysgenidread /dev/sysgenid watch >/out/sysgenid.out 2>/out/sysgenid.err & " +
		"pagewait /dev/sysgenid >/out/pagewait.out 2>/out/pagewait.err & " +
		"GENID_TEST_HELPER=page-waiter OUT=/out/pagewait-go.out genid-test >/out/pagewait-go.err 2>&1 & " +
		"while :; do sleep 1; done"
	shellBundle(t, c.bundle, c.out, script)
	// What a user runs: the hooks that give the container its scope.
	h.mustCtl("oci-config", c.bundle)
	return c
}

// shellBundle makes bundle's config (runc spec) run script with sh, on a
// writable root, with out bind-mounted at /out for what it prints.
func shellBundle(t *testing.T, bundle, out, script string) {
	t.Helper()
	run(t, bundle, "runc", "spec")
	editSpec(t, filepath.Join(bundle, "config.json"), func(s map[string]any) {
		p := s["process"].(map[string]any)
		p["terminal"] = false
		p["args"] = []string{"sh", "-c", script}
		s["root"].(map[string]any)["readonly"] = false
		s["mounts"] = append(s["mounts"].([]any), map[string]any{
			"destination": "/out", "type": "bind", "source": out, "options": []string{"rbind", "rw"},
		})
	})
}

func (c *container) run() {
	c.t.Helper()
	runcDetached(c.t, c.bundle, c.env, "run", "-d", c.id)
	c.t.Cleanup(func() { runBounded(exec.Command("runc", "delete", "-f", c.id), commandTimeout) })
	checkCgroup(c.t, c.id)
	servertest.WaitFor(c.t, "the container's watcher", func() bool { return c.scopeStatus().Watchers == 1 })
	waitLine(c.t, filepath.Join(c.out, "mmap.out"), strconv.Itoa(int(c.scopeStatus().Generation)))
	waitLine(c.t, filepath.Join(c.out, "vmclock.out"), fmt.Sprint("counter ", c.scopeStatus().Generation))
	waitLine(c.t, filepath.Join(c.out, "sysgenid.out"), strconv.Itoa(int(c.scopeStatus().Generation)))
	c.waitPageWaiters(c.scopeStatus().Generation)
}

// waitPageWaiters waits for both threads asleep on the page to have been
// woken at gen.
func (c *container) waitPageWaiters(gen uint32) {
	c.t.Helper()
	waitLine(c.t, filepath.Join(c.out, "pagewait.out"), strconv.Itoa(int(gen)))
	waitLine(c.t, filepath.Join(c.out, "pagewait-go.out"), strconv.Itoa(int(gen)))
}

// vmclock reads /dev/vmclock0 in the container once, as a new process.
func (c *container) vmclock() string {
	c.t.Helper()
	out, err := runBounded(exec.Command("runc", "exec", c.id, "vmclockread", "/dev/vmclock0"), commandTimeout)
	if err != nil {
		c.t.Fatalf("vmclockread /dev/vmclock0 in %s: %v\n%s", c.id, err, out)
	}
	return strings.TrimSpace(out)
}

// buildStatic compiles the C program src into a static binary at out, for
// a container that has no libc.
func buildStatic(t *testing.T, src, out string) {
	t.Helper()
	cc := exec.Command("gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-static", "-I../../plugin/criu", "-o", out, src)
	if b, err := runBounded(cc, commandTimeout); err != nil {
		t.Fatalf("gcc %s: %v\n%s", src, err, b)
	}
}

// checkpoint checkpoints the container, and keeps its output files as they
// were: CRIU checks the size of the files its tasks had open, so each
// restore of the checkpoint starts from them.
func (c *container) checkpoint() string {
	c.t.Helper()
	images := filepath.Join(c.t.TempDir(), "ckpt")
	runcLogged(c.t, c.bundle, c.env, filepath.Join(c.t.TempDir(), "dump-work"), "checkpoint", "--image-path", images)(c.id)
	c.saved = map[string][]byte{}
	ents, _ := os.ReadDir(c.out)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(c.out, e.Name()))
		if err != nil {
			c.t.Fatal(err)
		}
		c.saved[e.Name()] = b
	}
	return images
}

func (c *container) restore(images string) {
	c.t.Helper()
	for name, b := range c.saved {
		if err := os.WriteFile(filepath.Join(c.out, name), b, 0o644); err != nil {
			c.t.Fatal(err)
		}
	}
	runcLogged(c.t, c.bundle, c.env, filepath.Join(c.t.TempDir(), "restore-work"), "restore", "-d", "--image-path", images)(c.id)
}

func (c *container) delete() {
	c.t.Helper()
	if out, err := runBounded(exec.Command("runc", "delete", "-f", c.id), commandTimeout); err != nil {
		c.t.Fatalf("runc delete %s: %v\n%s", c.id, err, out)
	}
}

// scopeStatus is the container's scope as an administrator sees it.
func (c *container) scopeStatus() status {
	c.t.Helper()
	return c.h.scopeStatus(c.id)
}

// hasScope tells whether the daemon has the container's scope.
func (c *container) hasScope() bool { return c.h.hasScope(c.id) }

// 4. Two busybox containers get a scope each from genid's hooks, and see
// their own counter at /run/genid, /dev/sysgenid and /dev/vmclock0.
// Unmodified `runc checkpoint` and `runc restore` (the plugin is in CRIU's
// default dir) carry one of them across, on this host and on a second one
// (a fresh daemon and run dir): its scope is past its record, its watcher
// and its readers of both pages (mapped before the checkpoint) see it, as
// does a new reader of /dev/vmclock0; its threads asleep on the page are
// woken by the restore and by later bumps; its barrier is its own; the other
// container and the host see no change.
func TestRuncScopes(t *testing.T) {
	h := newHost(t, "runc")
	h.start(0)
	hostOut := filepath.Join(t.TempDir(), "host-watch.out")
	// A host watcher that never acks: no barrier but the host's may wait
	// for it.
	spawn(t, hostOut, nil, genidctl, "--run-dir", h.dir, "watch", "--exec", "false")
	servertest.WaitFor(t, "the host's watcher", func() bool { return h.status().Watchers == 1 })
	h.mustCtl("bump", "--reason", "host outdated")

	a, b := newContainer(t, h), newContainer(t, h)
	a.run()
	b.run()
	h.mustCtl("bump", "--scope", a.id, "--min", "5", "--reason", "setup")
	h.mustCtl("bump", "--scope", b.id, "--min", "2", "--reason", "setup")
	waitLine(t, filepath.Join(a.out, "watch.out"), "5")
	waitLine(t, filepath.Join(a.out, "mmap.out"), "5")
	waitLine(t, filepath.Join(a.out, "vmclock.out"), "counter 5")
	waitLine(t, filepath.Join(a.out, "sysgenid.out"), "5")
	a.waitPageWaiters(5)
	waitLine(t, filepath.Join(b.out, "mmap.out"), "2")
	waitLine(t, filepath.Join(b.out, "vmclock.out"), "counter 2")
	vmclockPage := func(counter uint32) string {
		return fmt.Sprintf("magic=0x4b4c4356 size=4096 version=1 flags=0x100 counter=%d poll=0x1", counter)
	}
	if got := a.vmclock(); got != vmclockPage(5) {
		t.Fatalf("a's /dev/vmclock0:\n got %s\nwant %s", got, vmclockPage(5))
	}
	if _, err := h.ctl("wait-watchers", "--scope", a.id, "--timeout", "15s"); err != nil {
		t.Fatalf("a's barrier, the host's watcher outdated: %v", err)
	}
	// A container sees its own scope and nothing of the host's or b's.
	if out, err := runBounded(exec.Command("runc", "exec", a.id, "ls", "/run/genid"), commandTimeout); err != nil ||
		strings.Fields(out)[0] != "generation" || strings.Contains(out, "admin") || strings.Contains(out, "scopes") {
		t.Fatalf("a's /run/genid: %v %q", err, out)
	}
	if out, err := runBounded(exec.Command("runc", "exec", a.id, "genidctl", "bump"), commandTimeout); err == nil {
		t.Fatalf("a bump from inside a: %s", out)
	}
	hostBefore, bBefore := h.gen(), b.scopeStatus().Generation

	images := a.checkpoint()
	r := readRecord(t, images)
	sr := r.Scope(a.id)
	if r.Scope("") != nil || sr == nil || sr.Generation == nil || *sr.Generation != 5 || len(sr.Mounts) != 3 ||
		!slices.ContainsFunc(sr.Mounts, func(m checkpoint.Mount) bool { return m.VMClock && m.File && m.Path == "/dev/vmclock0" }) ||
		r.Version != 3 || len(r.Sockets) != 1 || !r.Sockets[0].Watcher || r.Sockets[0].Scope != a.id {
		t.Fatalf("record of a's checkpoint %+v (scope %+v)", r, sr)
	}
	servertest.WaitFor(t, "a's scope to go with it", func() bool { return !a.hasScope() })

	check := func(where string, want uint32) {
		t.Helper()
		if st := a.scopeStatus(); st.Generation != want || st.LastBump == nil || st.LastBump.Reason != "criu-restore" {
			t.Fatalf("%s: a's scope %+v, want generation %d by criu-restore", where, st, want)
		}
		waitLine(t, filepath.Join(a.out, "watch.out"), strconv.Itoa(int(want)))
		waitLine(t, filepath.Join(a.out, "mmap.out"), strconv.Itoa(int(want)))
		waitLine(t, filepath.Join(a.out, "vmclock.out"), fmt.Sprint("counter ", want))
		waitLine(t, filepath.Join(a.out, "sysgenid.out"), strconv.Itoa(int(want)))
		if got := a.vmclock(); got != vmclockPage(want) {
			t.Fatalf("%s: a's /dev/vmclock0:\n got %s\nwant %s", where, got, vmclockPage(want))
		}
		if _, err := h.ctl("wait-watchers", "--scope", a.id, "--timeout", "15s"); err != nil {
			t.Fatalf("%s: a's barrier: %v", where, err)
		}
		if st := a.scopeStatus(); st.Watchers != 1 || st.Outdated != 0 || st.WatcherList[0].Acked != want {
			t.Fatalf("%s: a's restored watcher %+v", where, st)
		}
		// The threads asleep on the page, restored asleep, are woken by
		// the restore's bump and by the next one.
		a.waitPageWaiters(want)
		h.mustCtl("bump", "--scope", a.id, "--reason", "after restore")
		a.waitPageWaiters(want + 1)
	}

	// On this host: past the record, the others untouched.
	a.restore(images)
	check("restored here", 6)
	if g := h.gen(); g != hostBefore {
		t.Fatalf("the host's generation moved from %d to %d", hostBefore, g)
	}
	if g := b.scopeStatus().Generation; g != bBefore {
		t.Fatalf("b's generation moved from %d to %d", bBefore, g)
	}
	if l := lines(filepath.Join(b.out, "watch.out")); l[len(l)-1] != "2" {
		t.Fatalf("b's watcher saw %v", l)
	}
	if l := slices.DeleteFunc(lines(hostOut), func(l string) bool { return strings.HasPrefix(l, "genidctl:") }); len(l) != 1 {
		t.Fatalf("the host's watcher saw %v, want only the one bump", l)
	}
	a.delete()
	b.delete()

	// On a second host: a fresh daemon and run dir, the host behind the
	// record; the container's scope is new, past the record.
	h.fresh(2)
	a.restore(images)
	check("restored on a second host behind", 6)
	if g := h.gen(); g != 2 {
		t.Fatalf("the second host's generation moved to %d", g)
	}
	a.delete()

	// On a second host whose scope of that name is ahead of the record.
	h.fresh(9)
	h.mustCtl("scope", "create", "--start", "9", a.id)
	a.restore(images)
	check("restored on a second host ahead", 10)
	if g := h.gen(); g != 9 {
		t.Fatalf("the second host's generation moved to %d", g)
	}
}

// containerID returns a runc container id that no concurrent run shares:
// runc names the container's cgroup after it, in the host's cgroup tree, and
// every test bed run has a fresh pid namespace, so the same pids.
func containerID() string {
	return "genid-" + strings.ToLower(rand.Text())
}

// checkCgroup checks that container id's init is in a cgroup named after
// the id, the path that concurrent runs must not share.
func checkCgroup(t *testing.T, id string) {
	t.Helper()
	out, err := runBounded(exec.Command("runc", "state", id), commandTimeout)
	if err != nil {
		t.Fatalf("runc state %s: %v\n%s", id, err, out)
	}
	var st struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("runc state %s: %v\n%s", id, err, out)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", st.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cg), "/"+id) {
		t.Fatalf("container %s is in cgroup %q, not one named after its id", id, cg)
	}
}

// runBounded runs cmd and kills it if it is still running after timeout,
// with every process of its process group: runc's criu swrk is a child of
// runc and would wait on. It returns the combined output unless the caller
// set Stdout or Stderr.
func runBounded(cmd *exec.Cmd, timeout time.Duration) (string, error) {
	var out strings.Builder
	if cmd.Stdout == nil && cmd.Stderr == nil {
		cmd.Stdout, cmd.Stderr = &out, &out
		// The output pipe may stay open in a process the command left
		// behind (a container): do not wait for it forever.
		cmd.WaitDelay = time.Second
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &unix.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		return "", err
	}
	var killed atomic.Bool
	timer := time.AfterFunc(timeout, func() {
		killed.Store(true)
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	})
	err := cmd.Wait()
	timer.Stop()
	if err != nil && killed.Load() {
		err = fmt.Errorf("%v: still running after %v, killed: %w", cmd.Args, timeout, err)
	}
	return out.String(), err
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, dir string, argv ...string) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	if out, err := runBounded(cmd, commandTimeout); err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
}

func editSpec(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	edit(s)
	b, _ = json.MarshalIndent(s, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// runcDetached runs runc with pipes for the container's stdio, whose other
// ends stay here: CRIU cannot dump stdio leading to files outside.
func runcDetached(t *testing.T, bundle string, env []string, args ...string) {
	t.Helper()
	if out, err := runcPiped(t, bundle, env, args...); err != nil {
		t.Fatalf("runc %v: %v\n%s", args, err, out)
	}
}

// runc hands its own stdio to the container, so none of them may be a pipe
// that exec waits to drain: the container keeps its end open.
func runcPiped(t *testing.T, bundle string, env []string, args ...string) (string, error) {
	t.Helper()
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	inW.Close()
	var (
		mu  sync.Mutex
		out strings.Builder
	)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := outR.Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { inR.Close(); outR.Close() })
	cmd := exec.Command("runc", args...)
	cmd.Dir = bundle
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, outW
	_, err := runBounded(cmd, commandTimeout)
	outW.Close()
	time.Sleep(50 * time.Millisecond) // let runc's last words arrive
	mu.Lock()
	defer mu.Unlock()
	return out.String(), err
}

// runcLogged runs a runc checkpoint or restore with CRIU's log in work.
func runcLogged(t *testing.T, bundle string, env []string, work string, args ...string) func(id string) {
	return func(id string) {
		t.Helper()
		os.MkdirAll(work, 0o755)
		full := append(append([]string{args[0], "--work-path", work}, args[1:]...), id)
		if out, err := runcPiped(t, bundle, env, full...); err != nil {
			logs, _ := filepath.Glob(filepath.Join(work, "*.log"))
			var b strings.Builder
			for _, l := range logs {
				c, _ := os.ReadFile(l)
				fmt.Fprintf(&b, "--- %s:\n%s\n", l, logSummary(string(c), 25))
			}
			t.Fatalf("runc %v: %v\n%s\n%s(criu mode: %s)", full, err, out, b.String(), criuMode())
		}
	}
}

// manifestPath is where hack/testbed.sh records what it installed.
const manifestPath = "/etc/genid-testbed"

// The test bed's packages are not pinned: a rebuild takes what Debian trixie
// has that day. Print what this bed has, and check what the tests rely on:
// CRIU 4.x (genid-criu.so's plugin API and hooks), the plugin header of that
// same CRIU, runc 1.x (checkpoint and restore with --work-path, restore -d),
// and that the binaries on PATH are the recorded packages.
func TestTestBed(t *testing.T) {
	m := readManifest(t)
	t.Logf("test bed %s (%s, built %s): criu %s, runc %s, libcriu-dev %s; %s",
		m["hash"], m["suite"], m["built"], m["deb.criu"], m["deb.runc"], m["deb.libcriu-dev"], testbed.CRIUMode(m))
	// The bed gives criu CRIU_FAULT=130 exactly where the probe saw
	// hardware breakpoints never fire, and says so in its facts.
	switch hw, fault := m["run.hw_breakpoints"], os.Getenv("CRIU_FAULT"); {
	case hw == "never" && (fault != "130" || m["run.criu_fault"] != "130"),
		hw == "fire" && (fault != "" || m["run.criu_fault"] != "none"),
		hw != "never" && hw != "fire":
		t.Errorf("probe %q, CRIU_FAULT %q, recorded %q: want 130 where breakpoints never fire, else none",
			hw, fault, m["run.criu_fault"])
	}
	criu := toolVersion(t, `(?m)^Version: (\S+)`, "criu", "--version")
	runc := toolVersion(t, `(?m)^runc version (\S+)`, "runc", "--version")
	if !strings.HasPrefix(criu, "4.") {
		t.Errorf("criu %s: genid's plugin is for CRIU 4.x", criu)
	}
	if !strings.HasPrefix(runc, "1.") {
		t.Errorf("runc %s: the tests drive runc 1.x", runc)
	}
	// The engines: podman 5 (checkpoint --export, restore --import --name,
	// CDI devices), crun 1.x, containerd 1.7+ (CDI in its CRI plugin).
	podman := toolVersion(t, `(?m)^podman version (\S+)`, "podman", "--version")
	crun := toolVersion(t, `(?m)^crun version (\S+)`, "crun", "--version")
	containerd := toolVersion(t, `(?m)^containerd \S+ v?(\S+)`, "containerd", "--version")
	t.Logf("podman %s, crun %s, containerd %s", podman, crun, containerd)
	if !strings.HasPrefix(podman, "5.") {
		t.Errorf("podman %s: the tests drive podman 5", podman)
	}
	if !strings.HasPrefix(crun, "1.") {
		t.Errorf("crun %s: the tests drive crun 1.x", crun)
	}
	if !atLeast(containerd, 1, 7) {
		t.Errorf("containerd %s: CDI in its CRI plugin needs 1.7", containerd)
	}
	for pkg, onPath := range map[string]string{"criu": criu, "libcriu-dev": criu, "runc": runc, "podman": podman, "crun": crun, "containerd": containerd} {
		if deb := m["deb."+pkg]; unrepacked(upstreamVersion(deb)) != unrepacked(onPath) {
			t.Errorf("the manifest's %s %q is not the version on PATH (%s)", pkg, deb, onPath)
		}
	}
}

// criuMode says how criu runs in this bed, for the report of a failure.
func criuMode() string {
	m, err := testbed.ReadFacts(manifestPath)
	if err != nil {
		return "unknown: " + err.Error()
	}
	return testbed.CRIUMode(m)
}

func readManifest(t *testing.T) map[string]string {
	t.Helper()
	m, err := testbed.ReadFacts(manifestPath)
	if err != nil {
		t.Fatalf("test bed manifest: %v", err)
	}
	return m
}

// toolVersion runs a --version command and returns the first group of re.
func toolVersion(t *testing.T, re string, argv ...string) string {
	t.Helper()
	out, err := runBounded(exec.Command(argv[0], argv[1:]...), commandTimeout)
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
	m := regexp.MustCompile(re).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%v: no version in %q", argv, out)
	}
	return m[1]
}

// upstreamVersion strips a Debian version's epoch and revision:
// "1:1.1.15+ds1-2+b4" -> "1.1.15+ds1".
func upstreamVersion(deb string) string {
	if _, v, ok := strings.Cut(deb, ":"); ok {
		deb = v
	}
	if i := strings.LastIndexByte(deb, '-'); i >= 0 {
		deb = deb[:i]
	}
	return deb
}

// atLeast tells whether version v (MAJOR.MINOR...) is major.minor or later.
func atLeast(v string, major, minor int) bool {
	var a, b int
	if _, err := fmt.Sscanf(v, "%d.%d", &a, &b); err != nil {
		return false
	}
	return a > major || a == major && b >= minor
}

// unrepacked is a version without Debian's repack suffix (+ds1, ~ds1,
// +dfsg), which some programs print and others do not.
func unrepacked(v string) string {
	if i := strings.IndexAny(v, "+~"); i >= 0 {
		return v[:i]
	}
	return v
}

func TestUpstreamVersion(t *testing.T) {
	for deb, want := range map[string]string{
		"4.1.1-1": "4.1.1", "1.1.15+ds1-2+b4": "1.1.15+ds1", "1:1.37.0-6+b9": "1.37.0", "4.1": "4.1", "": "",
	} {
		if got := upstreamVersion(deb); got != want {
			t.Errorf("upstreamVersion(%q) = %q, want %q", deb, got, want)
		}
	}
	for v, want := range map[string]bool{"1.7.24~ds1": true, "2.0.1": true, "1.6.9": false, "1.10": true, "x": false} {
		if atLeast(v, 1, 7) != want {
			t.Errorf("atLeast(%q, 1, 7) != %v", v, want)
		}
	}
	for v, want := range map[string]string{"1.1.15+ds1": "1.1.15", "1.7.24~ds1": "1.7.24", "5.4.2": "5.4.2"} {
		if got := unrepacked(v); got != want {
			t.Errorf("unrepacked(%q) = %q, want %q", v, got, want)
		}
	}
}

// Two runs of TestRunc at once must not share a container id, hence a cgroup.
func TestContainerID(t *testing.T) {
	valid := regexp.MustCompile(`^[\w+-\.]+$`) // runc's rule for ids
	a, b := containerID(), containerID()
	if a == b || !valid.MatchString(a) || !valid.MatchString(b) {
		t.Fatalf("container ids %q and %q: want two different valid ids", a, b)
	}
}

// A hung command is killed after its timeout, and the error says so.
func TestRunBounded(t *testing.T) {
	start := time.Now()
	_, err := runBounded(exec.Command("sleep", "60"), 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "killed") || time.Since(start) > 10*time.Second {
		t.Fatalf("sleep 60 with a 200ms timeout: %v after %v", err, time.Since(start))
	}
	if out, err := runBounded(exec.Command("echo", "hi"), commandTimeout); err != nil || out != "hi\n" {
		t.Fatalf("echo hi: %q, %v", out, err)
	}
}
