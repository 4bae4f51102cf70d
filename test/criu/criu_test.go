// Package criu tests genid against the real CRIU 4.x and runc. The test
// binary runs inside the test bed of hack/testbed.sh (`make e2e-criu` builds
// both), with the plugin installed at /usr/lib/criu/genid-criu.so as a user
// would install it, and genidctl at GENIDCTL.
package criu

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/checkpoint"
	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/servertest"
)

const pluginPath = "/usr/lib/criu/genid-criu.so"

var genidctl string

func TestMain(m *testing.M) {
	if helper := os.Getenv("GENID_TEST_HELPER"); helper != "" {
		os.Exit(runHelper(helper))
	}
	genidctl = os.Getenv("GENIDCTL")
	for _, need := range []string{genidctl, pluginPath} {
		if _, err := os.Stat(need); need == "" || err != nil {
			fmt.Fprintf(os.Stderr, "criu e2e: %q missing: run through `make e2e-criu`, inside the test bed\n", need)
			os.Exit(1)
		}
	}
	for _, bin := range []string{"criu", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			fmt.Fprintf(os.Stderr, "criu e2e: %s not found: run through `make e2e-criu`, inside the test bed\n", bin)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// host is one genid daemon: a run dir playing one host's /run/genid, and
// a state dir of its own beside it (its floors: another host has others).
type host struct {
	t      *testing.T
	dir    string
	state  string
	args   []string // extra daemon flags
	daemon *proctest.Daemon
	log    *proctest.Buffer
}

func newHost(t *testing.T, name string) *host {
	return newHostAt(t, filepath.Join("/run", "genid-"+name))
}

// newHostAt is a host whose run dir is dir.
func newHostAt(t *testing.T, dir string) *host {
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, dir: dir, state: dir + ".state"}
	os.RemoveAll(h.state)
	t.Cleanup(func() {
		h.stop()
		os.RemoveAll(dir)
		os.RemoveAll(h.state)
	})
	return h
}

// start runs a daemon on the host's run dir at generation gen: a fresh host
// has a fresh page, no floor above it, and no VMClock page (which the
// daemon resumes from too when it is ahead).
func (h *host) start(gen uint32) {
	h.t.Helper()
	h.stop()
	if err := os.RemoveAll(h.state); err != nil {
		h.t.Fatal(err)
	}
	page := make([]byte, 4096)
	binaryPut(page, gen)
	if err := os.WriteFile(filepath.Join(h.dir, "generation"), page, 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(h.dir, "vmclock")); err != nil && !os.IsNotExist(err) {
		h.t.Fatal(err)
	}
	h.startKeep()
}

// fresh runs a daemon on an emptied run dir at generation gen: a second
// host, with no scope of its own yet.
func (h *host) fresh(gen uint32) {
	h.t.Helper()
	h.stop()
	if err := os.RemoveAll(h.dir); err != nil {
		h.t.Fatal(err)
	}
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		h.t.Fatal(err)
	}
	h.start(gen)
}

// startKeep runs a daemon that resumes from the page as it is.
func (h *host) startKeep() {
	h.t.Helper()
	cmd := exec.Command(genidctl, append([]string{"--run-dir", h.dir, "daemon", "--log-level", "debug", "--state-dir", h.state}, h.args...)...)
	d, err := proctest.Start(cmd, h.dir)
	if err != nil {
		h.t.Fatal(err)
	}
	h.daemon, h.log = d, d.Log
	h.t.Cleanup(func() {
		if h.t.Failed() {
			h.t.Logf("daemon log (%s):\n%s", h.dir, d.Log)
		}
	})
}

func (h *host) stop() {
	if h.daemon == nil {
		return
	}
	h.daemon.Kill(syscall.SIGTERM)
	h.daemon = nil
}

func (h *host) ctl(args ...string) (string, error) {
	cmd := exec.Command(genidctl, append([]string{"--run-dir", h.dir}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return strings.TrimSpace(string(out)), fmt.Errorf("genidctl %v: %w: %s", args, err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

func (h *host) mustCtl(args ...string) string {
	h.t.Helper()
	out, err := h.ctl(args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

func (h *host) gen() uint32 {
	h.t.Helper()
	n, err := strconv.ParseUint(h.mustCtl("get"), 10, 32)
	if err != nil {
		h.t.Fatal(err)
	}
	return uint32(n)
}

type status struct {
	Generation uint32 `json:"generation"`
	Watchers   int    `json:"watchers"`
	Outdated   int    `json:"outdated"`
	LastBump   *struct {
		Reason string `json:"reason"`
	} `json:"last_bump"`
	WatcherList []struct {
		PID      int    `json:"pid"`
		Acked    uint32 `json:"acked"`
		Outdated bool   `json:"outdated"`
	} `json:"watcher_list"`
}

func (h *host) status() status {
	h.t.Helper()
	var st status
	if err := json.Unmarshal([]byte(h.mustCtl("status", "--json")), &st); err != nil {
		h.t.Fatal(err)
	}
	return st
}

// spawn starts a process that CRIU can dump: its own session, stdio on
// files of the test bed, no other fds.
func spawn(t *testing.T, out string, env []string, argv ...string) *os.Process {
	t.Helper()
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	null, _ := os.Open(os.DevNull)
	defer null.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := cmd.Process
	go cmd.Wait() // reap it when killed by the dump
	t.Cleanup(func() { syscall.Kill(p.Pid, syscall.SIGKILL) })
	return p
}

func runCriu(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("criu", args...)
	cmd.Env = append(os.Environ(), env...)
	return runBounded(cmd, commandTimeout)
}

// mustCriu runs criu with a log in the images dir and shows it on failure.
func mustCriu(t *testing.T, env []string, verb, images string, args ...string) {
	t.Helper()
	log := verb + ".log"
	out, err := runCriu(t, env, append([]string{verb, "-D", images, "-v4", "-o", log}, args...)...)
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(images, log))
		t.Fatalf("criu %s: %v\n%s\n--- %s:\n%s\n(criu mode: %s)", verb, err, out, log, logSummary(string(b), 20), criuMode())
	}
}

// logSummary is what a failure shows of a criu log: its errors and
// genid's lines, then its last lines.
func logSummary(log string, n int) string {
	var b strings.Builder
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "Error") || strings.Contains(l, ") genid: ") || strings.Contains(l, "WARN") {
			b.WriteString(l + "\n")
		}
	}
	return b.String() + "--- last lines:\n" + tail(log, n)
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lines returns the lines of a file.
func lines(path string) []string {
	b, _ := os.ReadFile(path)
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

func waitLine(t *testing.T, path, want string) {
	t.Helper()
	servertest.WaitFor(t, fmt.Sprintf("%q in %s", want, path), func() bool {
		for _, l := range lines(path) {
			if l == want {
				return true
			}
		}
		return false
	})
}

func binaryPut(b []byte, v uint32) {
	// The page is in native byte order; the test bed is x86-64.
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func imagesDir(t *testing.T) string {
	d, err := os.MkdirTemp("/tmp", "img-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// record is what a test looks at in a checkpoint's record: the host
// scope's generation, and the sockets.
type record struct {
	*checkpoint.Record
	Generation *uint32
}

func readRecord(t *testing.T, images string) record {
	t.Helper()
	r, err := checkpoint.ReadRecord(images)
	if err != nil {
		t.Fatalf("the checkpoint's record: %v", err)
	}
	out := record{Record: r}
	if h := r.Scope(""); h != nil {
		out.Generation = h.Generation
	}
	return out
}

// checkpointWatcher runs `genidctl watch` under a daemon at generation 5 and
// dumps it with the plugin. It returns the images dir, the watcher's pid and
// its output file.
func checkpointWatcher(t *testing.T, h *host) (string, int, string) {
	t.Helper()
	h.start(0)
	h.mustCtl("bump", "--min", "5", "--reason", "setup")
	out := filepath.Join(t.TempDir(), "watch.out")
	p := spawn(t, out, nil, genidctl, "--run-dir", h.dir, "watch")
	servertest.WaitFor(t, "the watcher to register", func() bool { return h.status().Watchers == 1 })

	images := imagesDir(t)
	mustCriu(t, nil, "dump", images, "-t", strconv.Itoa(p.Pid))
	r := readRecord(t, images)
	if r.Generation == nil || *r.Generation != 5 || len(r.Sockets) != 1 || !r.Sockets[0].Watcher || r.Sockets[0].Acked != 5 {
		t.Fatalf("record %+v", r)
	}
	if info := h.mustCtl("image-info", images); !strings.Contains(info, "scope (host): generation 5") || !strings.Contains(info, "watcher, acked 5") {
		t.Fatalf("image-info:\n%s", info)
	}
	servertest.WaitFor(t, "the dumped watcher to go", func() bool { return h.status().Watchers == 0 })
	return images, p.Pid, out
}

// restoreOn restores images on h (whose daemon runs) and checks what issue #3
// asks: the generation passed the snapshot's, the watcher printed it and
// acked, wait-watchers returns, status lists the restored pid.
func restoreOn(t *testing.T, h *host, images string, pid int, out string) uint32 {
	t.Helper()
	before := h.gen()
	env := []string{"GENID_RUN_DIR=" + h.dir}
	mustCriu(t, env, "restore", images, "-d")
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	gen := h.gen()
	if gen <= 5 || gen != max(before, 5)+1 {
		t.Fatalf("generation after restore %d (host was at %d, snapshot at 5)", gen, before)
	}
	st := h.status()
	if st.LastBump == nil || st.LastBump.Reason != "criu-restore" {
		t.Fatalf("last bump %+v", st.LastBump)
	}
	waitLine(t, out, strconv.Itoa(int(gen)))
	if _, err := h.ctl("wait-watchers", "--timeout", "15s"); err != nil {
		t.Fatalf("wait-watchers after restore: %v\nwatch output: %q", err, lines(out))
	}
	st = h.status()
	if st.Watchers != 1 || st.WatcherList[0].PID != pid || st.WatcherList[0].Acked != gen || st.Outdated != 0 {
		t.Fatalf("status after restore: %+v (restored pid %d)", st, pid)
	}
	return gen
}

// 1. Target host at generation 0: the restore gives 6.
func TestRestoreOnLowerHost(t *testing.T) {
	h := newHost(t, "lower")
	images, pid, out := checkpointWatcher(t, h)
	h.start(0) // a fresh daemon plays the target host
	if g := restoreOn(t, h, images, pid, out); g != 6 {
		t.Fatalf("generation %d, want 6", g)
	}
}

// 2. Target host at generation 9: the restore gives 10.
func TestRestoreOnHigherHost(t *testing.T) {
	h := newHost(t, "higher")
	images, pid, out := checkpointWatcher(t, h)
	h.start(9)
	if g := restoreOn(t, h, images, pid, out); g != 10 {
		t.Fatalf("generation %d, want 10", g)
	}
}

// 3. One checkpoint restored twice on one host: two distinct generations,
// both past the snapshot's.
func TestRestoreTwice(t *testing.T) {
	h := newHost(t, "twice")
	images, pid, out := checkpointWatcher(t, h)
	h.start(0)
	g1 := restoreOn(t, h, images, pid, out)
	syscall.Kill(pid, syscall.SIGKILL)
	servertest.WaitFor(t, "the first clone to go", func() bool { return h.status().Watchers == 0 })
	g2 := restoreOn(t, h, images, pid, out)
	if g1 <= 5 || g2 <= 5 || g1 == g2 {
		t.Fatalf("two restores gave %d and %d", g1, g2)
	}
}

// 5. The daemon is down at restore: the restore fails naming the socket,
// unless best effort is configured.
func TestRestoreWithoutDaemon(t *testing.T) {
	h := newHost(t, "down")
	images, pid, _ := checkpointWatcher(t, h)
	h.stop()
	sock := filepath.Join(h.dir, "admin.sock") // what the plugin asks
	env := []string{"GENID_RUN_DIR=" + h.dir}
	out, err := runCriu(t, env, "restore", "-D", images, "-d", "-v4", "-o", "restore-refused.log")
	if err == nil {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("restore succeeded with the daemon down:\n%s", out)
	}
	if !strings.Contains(out, "unreachable at "+sock) {
		b, _ := os.ReadFile(filepath.Join(images, "restore-refused.log"))
		t.Fatalf("the refusal does not name %s: %v\n%s\n%s\n(criu mode: %s)", sock, err, out, tail(string(b), 30), criuMode())
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatal("a refused restore left the process running")
	}

	out, err = runCriu(t, append(env, "GENID_CRIU_BEST_EFFORT=1"), "restore", "-D", images, "-d", "-v4", "-o", "restore-best-effort.log")
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(images, "restore-best-effort.log"))
		t.Fatalf("best-effort restore: %v\n%s\n%s\n(criu mode: %s)", err, out, tail(string(b), 30), criuMode())
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	if !strings.Contains(out, "WARNING") || !strings.Contains(out, sock) {
		t.Fatalf("best-effort restore did not warn:\n%s", out)
	}
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("best-effort restore: the process is not running")
	}
	// When the daemon comes back, the restored watcher reconnects by itself.
	h.startKeep()
	servertest.WaitFor(t, "the restored watcher to come back", func() bool { return h.status().Watchers == 1 })
}

// 7. The action-script path, without the plugin: a process holding no genid
// socket is dumped and restored; the restore bumps past the recorded value.
func TestActionScript(t *testing.T) {
	h := newHost(t, "hook")
	h.start(7)
	// CRIU execs the script without arguments: genidctl is the hook itself.
	noPlugin := []string{"CRIU_LIBS_DIR=" + t.TempDir(), "GENID_RUN_DIR=" + h.dir}
	out := filepath.Join(t.TempDir(), "loop.out")
	p := spawn(t, out, nil, "sh", "-c", "while :; do sleep 0.1; done")
	hook := genidctl
	images := imagesDir(t)
	mustCriu(t, noPlugin, "dump", images, "-t", strconv.Itoa(p.Pid), "--action-script", hook)
	r := readRecord(t, images)
	if r.Writer != "action-script" || r.Generation == nil || *r.Generation != 7 {
		t.Fatalf("record %+v", r)
	}
	h.start(3) // a target host behind the snapshot
	mustCriu(t, noPlugin, "restore", images, "-d", "--action-script", hook)
	defer syscall.Kill(p.Pid, syscall.SIGKILL)
	if g := h.gen(); g != 8 {
		t.Fatalf("generation after restore %d, want 8", g)
	}
	if st := h.status(); st.LastBump == nil || st.LastBump.Reason != "criu-restore" {
		t.Fatalf("last bump %+v", st.LastBump)
	}
}

// The plugin and the action script in one restore bump once: the plugin
// tells the script, through criu's environment, that it bumped. Without the
// plugin, the script bumps each restore, though the host is past the record
// after the first: two restores of one checkpoint never share a generation.
func TestPluginAndActionScript(t *testing.T) {
	h := newHost(t, "both")
	h.start(3)
	withPlugin := []string{"GENID_RUN_DIR=" + h.dir}
	noPlugin := []string{"CRIU_LIBS_DIR=" + t.TempDir(), "GENID_RUN_DIR=" + h.dir}
	// One process, no children: restored again and again, the whole tree
	// must be gone before the next restore takes its pids.
	p := spawn(t, filepath.Join(t.TempDir(), "out"), nil, "sleep", "1000000")
	images := imagesDir(t)
	mustCriu(t, withPlugin, "dump", images, "-t", strconv.Itoa(p.Pid), "--action-script", genidctl)
	if r := readRecord(t, images); r.Generation == nil || *r.Generation != 3 {
		t.Fatalf("record %+v", r)
	}
	// Gone and reaped: a restore needs its pid.
	gone := func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", p.Pid))
		return err != nil
	}
	servertest.WaitFor(t, "the dumped process to go", gone)
	for i, tc := range []struct {
		env  []string
		want uint32
	}{
		{withPlugin, 4}, // the plugin's bump only
		{noPlugin, 5},   // the script's: the page (4) is past the record already
		{withPlugin, 6},
	} {
		mustCriu(t, tc.env, "restore", images, "-d", "--action-script", genidctl)
		syscall.Kill(p.Pid, syscall.SIGKILL)
		servertest.WaitFor(t, "the restored process to go", gone)
		if g := h.gen(); g != tc.want {
			t.Fatalf("restore %d: generation %d, want %d", i, g, tc.want)
		}
	}
}

// A checkpoint taken without genid at all still bumps by one at restore.
func TestCheckpointWithoutRecord(t *testing.T) {
	h := newHost(t, "norecord")
	h.start(4)
	noPlugin := []string{"CRIU_LIBS_DIR=" + t.TempDir()}
	p := spawn(t, filepath.Join(t.TempDir(), "out"), nil, "sh", "-c", "while :; do sleep 0.1; done")
	images := imagesDir(t)
	mustCriu(t, noPlugin, "dump", images, "-t", strconv.Itoa(p.Pid))
	mustCriu(t, []string{"GENID_RUN_DIR=" + h.dir}, "restore", images, "-d")
	defer syscall.Kill(p.Pid, syscall.SIGKILL)
	if g := h.gen(); g != 5 {
		t.Fatalf("generation %d, want 5", g)
	}
}

// A client blocked in wait-watchers at checkpoint time (not a watcher) is
// answered on its replaced connection: its request was lost with the old
// one, the "restored" event makes it ask again, and the target host, where
// no watcher is outdated, lets it through.
func TestBlockedWaitWatchers(t *testing.T) {
	h := newHost(t, "blocked")
	h.start(3)
	// A watcher whose command fails stays outdated, so wait-watchers blocks.
	spawn(t, filepath.Join(t.TempDir(), "w.out"), nil, genidctl, "--run-dir", h.dir, "watch", "--exec", "false")
	servertest.WaitFor(t, "the watcher", func() bool { return h.status().Watchers == 1 })
	h.mustCtl("bump")
	servertest.WaitFor(t, "an outdated watcher", func() bool { return h.status().Outdated == 1 })

	rc := filepath.Join(t.TempDir(), "rc")
	p := spawn(t, filepath.Join(t.TempDir(), "ww.out"), nil, "sh", "-c",
		genidctl+" --run-dir "+h.dir+" wait-watchers; echo $? >"+rc)
	time.Sleep(300 * time.Millisecond) // let it block
	if _, err := os.Stat(rc); err == nil {
		t.Fatal("wait-watchers returned with a watcher outdated")
	}
	images := imagesDir(t)
	mustCriu(t, nil, "dump", images, "-t", strconv.Itoa(p.Pid))
	if r := readRecord(t, images); len(r.Sockets) != 1 || r.Sockets[0].Watcher {
		t.Fatalf("record %+v: want one non-watcher socket", r)
	}

	target := newHost(t, "blocked-target")
	target.start(1)
	mustCriu(t, []string{"GENID_RUN_DIR=" + target.dir}, "restore", images, "-d")
	defer syscall.Kill(p.Pid, syscall.SIGKILL)
	servertest.WaitFor(t, "the restored wait-watchers to finish", func() bool {
		b, err := os.ReadFile(rc)
		return err == nil && strings.TrimSpace(string(b)) != ""
	})
	if b, _ := os.ReadFile(rc); strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("restored wait-watchers exited %s", b)
	}
	if g := target.gen(); g != 5 {
		t.Fatalf("target generation %d, want 5 (past the snapshot's 4)", g)
	}
}

// --libdir replaces CRIU's plugin dir: the plugin works from anywhere.
func TestLibdir(t *testing.T) {
	h := newHost(t, "libdir")
	h.start(2)
	lib := t.TempDir()
	copyFile(t, pluginPath, filepath.Join(lib, "genid-criu.so"))
	out := filepath.Join(t.TempDir(), "watch.out")
	p := spawn(t, out, nil, genidctl, "--run-dir", h.dir, "watch")
	servertest.WaitFor(t, "the watcher", func() bool { return h.status().Watchers == 1 })
	images := imagesDir(t)
	env := []string{"GENID_RUN_DIR=" + h.dir}
	mustCriu(t, env, "dump", images, "-t", strconv.Itoa(p.Pid), "--libdir", lib)
	if r := readRecord(t, images); len(r.Sockets) != 1 || *r.Generation != 2 {
		t.Fatalf("record %+v", r)
	}
	mustCriu(t, env, "restore", images, "-d", "--libdir", lib)
	defer syscall.Kill(p.Pid, syscall.SIGKILL)
	waitLine(t, out, "3")
	if _, err := h.ctl("wait-watchers", "--timeout", "15s"); err != nil {
		t.Fatal(err)
	}
}

// criuFails runs criu expecting it to fail, with a log in the images dir; it
// returns criu's output and the log.
func criuFails(t *testing.T, env []string, verb, images, log string, args ...string) (string, string) {
	t.Helper()
	out, err := runCriu(t, env, append([]string{verb, "-D", images, "-v4", "-o", log}, args...)...)
	b, _ := os.ReadFile(filepath.Join(images, log))
	if err == nil {
		t.Fatalf("criu %s succeeded, want a failure\n%s\n--- %s (tail):\n%s", verb, out, log, tail(string(b), 40))
	}
	if ee, ok := err.(*exec.ExitError); !ok || !ee.Exited() {
		t.Fatalf("criu %s did not exit but: %v\n%s\n--- %s (tail):\n%s\n(criu mode: %s)", verb, err, out, log, tail(string(b), 40), criuMode())
	}
	return out, string(b)
}

// alive reports whether pid is a running process (a zombie is not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// vmclockMount is record orig with a scope that has a mount of the VMClock
// page, its version and that mount's flags set as given.
func vmclockMount(t *testing.T, orig []byte, version, flags byte) string {
	t.Helper()
	r, err := checkpoint.DecodeRecord(orig)
	if err != nil {
		t.Fatal(err)
	}
	r.Scopes = append(r.Scopes, checkpoint.ScopeRecord{Name: "c9", Mounts: []checkpoint.Mount{{ID: 99, VMClock: true, Path: "/dev/vmclock0"}}})
	b, err := r.Encode()
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("\x63\x00\x00\x00\x03\x0d\x00/dev/vmclock0"))
	if b[8] != 3 || i < 0 {
		t.Fatalf("a record with a VMClock mount: % x", b)
	}
	b[8], b[i+4] = version, flags
	return string(b)
}

// A record that cannot be read back whole fails the restore before any task
// runs, names what is wrong, and bumps nothing; a missing one still bumps by
// one (TestCheckpointWithoutRecord).
func TestCorruptRecord(t *testing.T) {
	h := newHost(t, "corrupt")
	images, pid, out := checkpointWatcher(t, h)
	rec := filepath.Join(images, checkpoint.RecordName)
	orig, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	h.start(0)
	with := func(i int, b byte) string {
		c := append([]byte{}, orig...)
		c[i] = b
		return string(c)
	}
	sock := bytes.LastIndex(orig, []byte("/run/genid-corrupt"))
	cases := []struct{ name, record, why string }{
		{"empty", "", "empty"},
		{"not a record", "generation 5\n", "not a genid record (no magic)"},
		{"cut in a socket's path", string(orig[:sock+3]), "its length is not what follows its header: cut short or padded"},
		{"cut, its length too", func() string {
			c := append([]byte{}, orig[:len(orig)-3]...)
			c[12] -= 3
			return string(c)
		}(), "cut short"},
		{"version 4", with(8, 4), "a version this plugin does not know"},
		{"a VMClock mount in version 2", vmclockMount(t, orig, 2, 3), "unknown mount flags"},
		{"a VMClock mount that is no file", vmclockMount(t, orig, 3, 2), "unknown mount flags"},
		{"trailing data", string(orig) + "x", "its length is not what follows its header: cut short or padded"},
		{"data after the record", func() string {
			c := append(append([]byte{}, orig...), 0)
			c[12]++
			return string(c)
		}(), "data after the record"},
		{"a NUL in a path", with(sock+2, 0), "a NUL byte in a string"},
		{"unknown scope flags", with(bytes.Index(orig, []byte("\x01\x05\x00\x00\x00\x00")), 7), "unknown scope flags"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(rec, []byte(c.record), 0o644); err != nil {
				t.Fatal(err)
			}
			env := []string{"GENID_RUN_DIR=" + h.dir}
			stderr, log := criuFails(t, env, "restore", images, fmt.Sprintf("restore-corrupt-%d.log", i), "-d")
			want := "genid: restore refused: genid.record is corrupt: " + c.why + " at byte "
			if !strings.Contains(log, want) || !strings.Contains(stderr, want) {
				t.Fatalf("want %q in the log and on stderr\nstderr:\n%s\nlog (tail):\n%s", want, stderr, tail(log, 20))
			}
			if alive(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Fatal("a restore refused for its record left the process running")
			}
			if g := h.gen(); g != 0 {
				t.Fatalf("a refused restore bumped to %d", g)
			}
		})
	}
	// A record of genid before scopes is refused with what to do.
	os.Remove(rec)
	if err := os.WriteFile(filepath.Join(images, checkpoint.OldRecordName), []byte(`{"version": 1, "generation": 5}`), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr, _ := criuFails(t, []string{"GENID_RUN_DIR=" + h.dir}, "restore", images, "restore-old.log", "-d")
	if !strings.Contains(stderr, "genid.json of genid before scopes") || !strings.Contains(stderr, "restore it with the genid that took it") {
		t.Fatalf("an old record's refusal:\n%s", stderr)
	}
	os.Remove(filepath.Join(images, checkpoint.OldRecordName))
	// The same checkpoint with its record whole restores.
	if err := os.WriteFile(rec, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	restoreOn(t, h, images, pid, out)
}

// A record is read whole however long it is: here 700 sockets, the real
// one last, written by checkpoint.WriteRecord (Go), read by the plugin (C).
func TestRecordLayouts(t *testing.T) {
	h := newHost(t, "layouts")
	images, pid, out := checkpointWatcher(t, h)
	r, err := checkpoint.ReadRecord(images)
	if err != nil {
		t.Fatal(err)
	}
	var fake []checkpoint.Socket
	for i := range 699 {
		fake = append(fake, checkpoint.Socket{Inode: uint32(1000000 + i), Watcher: true, Acked: 5, Path: "/run/genid-elsewhere/genid.sock"})
	}
	r.Sockets = append(fake, r.Sockets...)
	if err := checkpoint.WriteRecord(images, r); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(images, checkpoint.RecordName)); st.Size() < 30000 {
		t.Fatalf("record of %d bytes: not large enough", st.Size())
	}
	if r := readRecord(t, images); len(r.Sockets) != 700 {
		t.Fatalf("%d sockets in the large record", len(r.Sockets))
	}
	h.start(0)
	g1 := restoreOn(t, h, images, pid, out)
	syscall.Kill(pid, syscall.SIGKILL)
	servertest.WaitFor(t, "the first clone to go", func() bool { return h.status().Watchers == 0 })
	if g2 := restoreOn(t, h, images, pid, out); g2 != g1+1 {
		t.Fatalf("second restore gave %d after %d", g2, g1)
	}
}

// racerSrc is a CRIU plugin that wraps genid-criu.so (RACER_INNER) and, right
// after genid's init at dump, bumps (RACER_SOCK) and waits for every watcher
// to ack: the bump that comes after genid first reads the page and before
// CRIU freezes the tasks. With RACER_TRUNCATE it empties that file instead.
const racerSrc = `
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <criu/criu-plugin.h>
#include "genid.h"

static cr_plugin_desc_t *inner;

static int racer_init(int stage)
{
	struct genid_conn c;
	uint32_t gen;
	void *h = dlopen(getenv("RACER_INNER"), RTLD_NOW | RTLD_LOCAL);

	if (!h || !(inner = dlsym(h, "CR_PLUGIN_DESC"))) {
		fprintf(stderr, "racer: %s\n", dlerror());
		return -1;
	}
	if (inner->init && inner->init(stage))
		return -1;
	if (stage != CR_PLUGIN_STAGE__DUMP)
		return 0;
	if (getenv("RACER_TRUNCATE"))
		return truncate(getenv("RACER_TRUNCATE"), 0);
	if (genid_open(&c, getenv("RACER_SOCK")) < 0) {
		fprintf(stderr, "racer: connect\n");
		return -1;
	}
	if (genid_admin_bump(&c, NULL, 0, "racer", &gen) || genid_admin_wait_watchers(&c, NULL, 10000)) {
		fprintf(stderr, "racer: bump or wait-watchers failed: %s\n", c.msg);
		return -1;
	}
	genid_close(&c);
	fprintf(stderr, "racer: bumped to %u\n", gen);
	return 0;
}

static void racer_exit(int stage, int ret)
{
	if (inner && inner->exit)
		inner->exit(stage, ret);
}

static int racer_dump_unix_sk(int fd, int id)
{
	CR_PLUGIN_HOOK__DUMP_UNIX_SK_t *f = inner->hooks[CR_PLUGIN_HOOK__DUMP_UNIX_SK];

	return f ? f(fd, id) : -ENOTSUP;
}

CR_PLUGIN_REGISTER("genid-racer", racer_init, racer_exit)
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__DUMP_UNIX_SK, racer_dump_unix_sk)
`

// buildRacer compiles racerSrc into a plugin dir of its own.
func buildRacer(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "racer.c")
	if err := os.WriteFile(src, []byte(racerSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(dir, "lib")
	os.Mkdir(lib, 0o755)
	cc := exec.Command("gcc", "-std=gnu11", "-Wall", "-Werror", "-shared", "-fPIC", "-I../../plugin/criu",
		"-o", filepath.Join(lib, "racer.so"), src, "-ldl")
	if b, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return lib
}

// 2. A bump lands after genid's init read the page but before the tasks
// froze: the record must still hold what the tasks saw.
func TestBumpBeforeFreeze(t *testing.T) {
	lib := buildRacer(t)

	// A watcher saw and acked 6 before it froze: the record must say 6
	// (read again once the tasks are frozen), so that a host at 0 restores
	// at 7, an event for the watcher, and not at 6, which it has acked.
	t.Run("watcher", func(t *testing.T) {
		h := newHost(t, "race-watch")
		h.start(5)
		out := filepath.Join(t.TempDir(), "watch.out")
		p := spawn(t, out, nil, genidctl, "--run-dir", h.dir, "watch")
		servertest.WaitFor(t, "the watcher to register", func() bool { return h.status().Watchers == 1 })
		images := imagesDir(t)
		env := []string{"GENID_RUN_DIR=" + h.dir, "RACER_INNER=" + pluginPath, "RACER_SOCK=" + filepath.Join(h.dir, "admin.sock")}
		mustCriu(t, env, "dump", images, "-t", strconv.Itoa(p.Pid), "--libdir", lib)
		waitLine(t, out, "6") // the watcher did see 6 before the dump
		r := readRecord(t, images)
		if len(r.Sockets) != 1 || r.Sockets[0].Acked != 6 || r.Generation == nil || *r.Generation != 6 {
			t.Fatalf("record %+v (generation %v): want 6, what the watcher acked", r, r.Generation)
		}
		h.start(0)
		mustCriu(t, []string{"GENID_RUN_DIR=" + h.dir}, "restore", images, "-d")
		defer syscall.Kill(p.Pid, syscall.SIGKILL)
		if g := h.gen(); g != 7 {
			t.Fatalf("generation after restore %d, want 7", g)
		}
		waitLine(t, out, "7")
		if _, err := h.ctl("wait-watchers", "--timeout", "15s"); err != nil {
			t.Fatal(err)
		}
	})

	// No socket at all: a process may have read 6 from the page. The dump's
	// exit hook, with the tasks still frozen, reads the page again.
	t.Run("page", func(t *testing.T) {
		h := newHost(t, "race-page")
		h.start(5)
		p := spawn(t, filepath.Join(t.TempDir(), "out"), nil, "sh", "-c", "while :; do sleep 0.1; done")
		images := imagesDir(t)
		env := []string{"GENID_RUN_DIR=" + h.dir, "RACER_INNER=" + pluginPath, "RACER_SOCK=" + filepath.Join(h.dir, "admin.sock")}
		mustCriu(t, env, "dump", images, "-t", strconv.Itoa(p.Pid), "--libdir", lib)
		if g := h.gen(); g != 6 {
			t.Fatalf("the racer did not bump: %d", g)
		}
		if r := readRecord(t, images); r.Generation == nil || *r.Generation != 6 {
			t.Fatalf("record generation %v, want 6", r.Generation)
		}
	})
}

// The page read at init cannot be read again at the end of the dump: the
// record may be behind what the tasks saw, and the exit hook cannot fail the
// dump, so it empties the record, which the restore then refuses.
func TestRecordUnconfirmed(t *testing.T) {
	lib := buildRacer(t)
	h := newHost(t, "unconfirmed")
	h.start(5)
	h.stop()
	page := filepath.Join(h.dir, "generation")
	p := spawn(t, filepath.Join(t.TempDir(), "out"), nil, "sh", "-c", "while :; do sleep 0.1; done")
	images := imagesDir(t)
	env := []string{"GENID_RUN_DIR=" + h.dir, "RACER_INNER=" + pluginPath, "RACER_TRUNCATE=" + page}
	mustCriu(t, env, "dump", images, "-t", strconv.Itoa(p.Pid), "--libdir", lib)
	log, _ := os.ReadFile(filepath.Join(images, "dump.log"))
	if !strings.Contains(string(log), "genid.record emptied, a restore of this checkpoint will be refused") {
		t.Fatalf("dump log:\n%s", tail(string(log), 20))
	}
	if b, err := os.ReadFile(filepath.Join(images, checkpoint.RecordName)); err != nil || len(b) != 0 {
		t.Fatalf("record after the dump: %v: %q", err, b)
	}
	h.start(5)
	_, rlog := criuFails(t, []string{"GENID_RUN_DIR=" + h.dir}, "restore", images, "restore.log", "-d")
	if !strings.Contains(rlog, "genid.record is corrupt: empty") {
		t.Fatalf("restore log:\n%s", tail(rlog, 20))
	}
	if alive(p.Pid) {
		syscall.Kill(p.Pid, syscall.SIGKILL)
		t.Fatal("the restore of an unconfirmed record went on")
	}
}

// 3. A socket the daemon will not take back fails the restore, even with
// --ext-unix-sk, where CRIU would otherwise connect a fresh socket the
// daemon knows nothing of and let the process run with it.
func TestRestoreSocketRefused(t *testing.T) {
	h := newHost(t, "refused")
	images, pid, _ := checkpointWatcher(t, h)
	h.args = []string{"--max-watchers", "1"}
	h.start(0)
	spawn(t, filepath.Join(t.TempDir(), "other.out"), nil, genidctl, "--run-dir", h.dir, "watch")
	servertest.WaitFor(t, "the other watcher", func() bool { return h.status().Watchers == 1 })

	env := []string{"GENID_RUN_DIR=" + h.dir}
	_, log := criuFails(t, env, "restore", images, "restore-refused.log", "-d", "--ext-unix-sk")
	if !strings.Contains(log, "attach failed") || !strings.Contains(log, "failing the restore") {
		t.Fatalf("the log does not say the socket failed the restore:\n%s", tail(log, 30))
	}
	// CRIU 4.1.1 goes on after a negative return; with --ext-unix-sk it
	// then trips on its BUG_ON for callback sockets, which faults the task
	// (SIGSEGV). A failed restore's own SIGKILL of its tasks is no crash.
	if strings.Contains(log, "BUG at") || strings.Contains(log, "killed by signal 11") {
		t.Fatalf("the restore failed by a crash, not by the plugin's refusal:\n%s", tail(log, 30))
	}
	// A failed restore SIGKILLs its tasks as criu exits: they may take a
	// moment to go. One that stays is a restore that went on.
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	servertest.Eventually(t, func() error {
		if alive(pid) {
			return fmt.Errorf("the restore went on with a socket the daemon refused:\n%s", tail(log, 40))
		}
		return nil
	})
	if st := h.status(); st.Watchers != 1 {
		t.Fatalf("%d watchers after the refused restore", st.Watchers)
	}
}

// 4. A generation page too short to map fails the dump with a message, not
// criu with SIGBUS.
func TestShortPage(t *testing.T) {
	h := newHost(t, "short")
	h.start(3)
	h.stop()
	if err := os.Truncate(filepath.Join(h.dir, "generation"), 0); err != nil {
		t.Fatal(err)
	}
	p := spawn(t, filepath.Join(t.TempDir(), "out"), nil, "sh", "-c", "while :; do sleep 0.1; done")
	images := imagesDir(t)
	_, log := criuFails(t, []string{"GENID_RUN_DIR=" + h.dir}, "dump", images, "dump.log", "-t", strconv.Itoa(p.Pid))
	want := filepath.Join(h.dir, "generation") + " is 0 bytes, too short for a generation page"
	if !strings.Contains(log, want) {
		t.Fatalf("want %q in the log:\n%s", want, tail(log, 20))
	}
	if !alive(p.Pid) {
		t.Fatal("a refused dump did not leave the process running")
	}
}

// 5. A stopped daemon fails a dump (its tasks frozen meanwhile) and a
// restore after the plugin's timeout, instead of hanging them.
func TestWedgedDaemon(t *testing.T) {
	// The subtest's cleanup wakes the daemon before newHost's stops it.
	wedge := func(t *testing.T, h *host) {
		p := h.daemon.Cmd.Process
		p.Signal(syscall.SIGSTOP)
		t.Cleanup(func() { p.Signal(syscall.SIGCONT) })
	}
	timed := func(t *testing.T, env []string, verb, images string, args ...string) string {
		t.Helper()
		start := time.Now()
		cmd := exec.Command("criu", append([]string{verb, "-D", images, "-v4", "-o", verb + ".log"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		kill := time.AfterFunc(40*time.Second, func() { cmd.Process.Kill() })
		err := cmd.Wait()
		kill.Stop()
		log, _ := os.ReadFile(filepath.Join(images, verb+".log"))
		if err == nil || time.Since(start) > 30*time.Second {
			t.Fatalf("criu %s with the daemon stopped: %v after %v\n%s\n(criu mode: %s)", verb, err, time.Since(start), tail(string(log), 20), criuMode())
		}
		if !strings.Contains(string(log), "no answer within 5 s") {
			t.Fatalf("criu %s: the log does not say the daemon did not answer:\n%s", verb, tail(string(log), 20))
		}
		return string(log)
	}

	t.Run("dump", func(t *testing.T) {
		h := newHost(t, "wedged-dump")
		h.start(2)
		out := filepath.Join(t.TempDir(), "watch.out")
		p := spawn(t, out, nil, genidctl, "--run-dir", h.dir, "watch")
		servertest.WaitFor(t, "the watcher", func() bool { return h.status().Watchers == 1 })
		wedge(t, h)
		timed(t, nil, "dump", imagesDir(t), "-t", strconv.Itoa(p.Pid))
		if !alive(p.Pid) {
			t.Fatal("the failed dump did not leave the process running")
		}
	})

	t.Run("restore", func(t *testing.T) {
		h := newHost(t, "wedged-restore")
		images, pid, _ := checkpointWatcher(t, h)
		h.start(0)
		wedge(t, h)
		timed(t, []string{"GENID_RUN_DIR=" + h.dir}, "restore", images, "-d")
		if alive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatal("a restore the daemon did not answer left the process running")
		}
	})
}

// 6. Paths with quotes, backslashes and control characters are recorded,
// and read back by Go and by the plugin at restore.
func TestRecordEscapes(t *testing.T) {
	h := newHost(t, "esc\"q\\b\tt")
	h.start(0)
	h.mustCtl("bump", "--min", "5")
	out := filepath.Join(t.TempDir(), "watch.out")
	p := spawn(t, out, nil, genidctl, "--run-dir", h.dir, "watch")
	servertest.WaitFor(t, "the watcher to register", func() bool { return h.status().Watchers == 1 })
	images := imagesDir(t)
	env := []string{"GENID_RUN_DIR=" + h.dir}
	mustCriu(t, env, "dump", images, "-t", strconv.Itoa(p.Pid))
	sock := filepath.Join(h.dir, "genid.sock")
	r, err := checkpoint.ReadRecord(images)
	if err != nil {
		t.Fatal(err)
	}
	if r.RunDir != h.dir || len(r.Sockets) != 1 || r.Sockets[0].Path != sock {
		t.Fatalf("record %+v: want %q", r, sock)
	}
	servertest.WaitFor(t, "the dumped watcher to go", func() bool { return h.status().Watchers == 0 })
	h.start(0)
	restoreOn(t, h, images, p.Pid, out)
}
