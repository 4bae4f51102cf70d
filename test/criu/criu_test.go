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

// host is one genid daemon: a run dir playing one host's /run/genid.
type host struct {
	t      *testing.T
	dir    string
	daemon *exec.Cmd
	log    *bytes.Buffer
}

func newHost(t *testing.T, name string) *host {
	dir := filepath.Join("/run", "genid-"+name)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, dir: dir}
	t.Cleanup(func() {
		h.stop()
		os.RemoveAll(dir)
	})
	return h
}

// start runs a daemon on the host's run dir at generation gen: a fresh host
// has a fresh page.
func (h *host) start(gen uint32) {
	h.t.Helper()
	h.stop()
	page := make([]byte, 4096)
	binaryPut(page, gen)
	if err := os.WriteFile(filepath.Join(h.dir, "generation"), page, 0o644); err != nil {
		h.t.Fatal(err)
	}
	h.startKeep()
}

// startKeep runs a daemon that resumes from the page as it is.
func (h *host) startKeep() {
	h.t.Helper()
	h.log = &bytes.Buffer{}
	h.daemon = exec.Command(genidctl, "--run-dir", h.dir, "daemon", "--log-level", "debug")
	h.daemon.Stdout, h.daemon.Stderr = h.log, h.log
	if err := h.daemon.Start(); err != nil {
		h.t.Fatal(err)
	}
	log := h.log
	h.t.Cleanup(func() {
		if h.t.Failed() {
			h.t.Logf("daemon log (%s):\n%s", h.dir, log.String())
		}
	})
	waitFor(h.t, "daemon socket", func() bool {
		_, err := os.Stat(filepath.Join(h.dir, "genid.sock"))
		return err == nil
	})
}

func (h *host) stop() {
	if h.daemon == nil {
		return
	}
	h.daemon.Process.Signal(syscall.SIGTERM)
	h.daemon.Wait()
	h.daemon = nil
}

func (h *host) ctl(args ...string) (string, error) {
	cmd := exec.Command(genidctl, append([]string{"--run-dir", h.dir}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return strings.TrimSpace(string(out)), fmt.Errorf("genidctl %v: %v: %s", args, err, stderr.String())
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
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustCriu runs criu with a log in the images dir and shows it on failure.
func mustCriu(t *testing.T, env []string, verb, images string, args ...string) {
	t.Helper()
	log := verb + ".log"
	out, err := runCriu(t, env, append([]string{verb, "-D", images, "-v4", "-o", log}, args...)...)
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(images, log))
		t.Fatalf("criu %s: %v\n%s\n--- %s (tail):\n%s", verb, err, out, log, tail(string(b), 40))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	waitFor(t, fmt.Sprintf("%q in %s", want, path), func() bool {
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

type record struct {
	Generation *uint32 `json:"generation"`
	Writer     string  `json:"writer"`
	Sockets    []struct {
		Inode   uint32 `json:"inode"`
		Watcher bool   `json:"watcher"`
		Acked   uint32 `json:"acked"`
	} `json:"sockets"`
}

func readRecord(t *testing.T, images string) record {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(images, "genid.json"))
	if err != nil {
		t.Fatalf("no record in the checkpoint: %v", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("genid.json: %v\n%s", err, b)
	}
	return r
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
	waitFor(t, "the watcher to register", func() bool { return h.status().Watchers == 1 })

	images := imagesDir(t)
	mustCriu(t, nil, "dump", images, "-t", strconv.Itoa(p.Pid))
	r := readRecord(t, images)
	if r.Generation == nil || *r.Generation != 5 || len(r.Sockets) != 1 || !r.Sockets[0].Watcher || r.Sockets[0].Acked != 5 {
		t.Fatalf("record %+v", r)
	}
	if info := h.mustCtl("image-info", images); !strings.Contains(info, "generation: 5") || !strings.Contains(info, "watcher, acked 5") {
		t.Fatalf("image-info:\n%s", info)
	}
	waitFor(t, "the dumped watcher to go", func() bool { return h.status().Watchers == 0 })
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
	waitFor(t, "the first clone to go", func() bool { return h.status().Watchers == 0 })
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
	sock := filepath.Join(h.dir, "genid.sock")
	env := []string{"GENID_RUN_DIR=" + h.dir}
	out, err := runCriu(t, env, "restore", "-D", images, "-d", "-v4", "-o", "restore-refused.log")
	if err == nil {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("restore succeeded with the daemon down:\n%s", out)
	}
	if !strings.Contains(out, "unreachable at "+sock) {
		t.Fatalf("the refusal does not name %s:\n%s", sock, out)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatal("a refused restore left the process running")
	}

	out, err = runCriu(t, append(env, "GENID_CRIU_BEST_EFFORT=1"), "restore", "-D", images, "-d", "-v4", "-o", "restore-best-effort.log")
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(images, "restore-best-effort.log"))
		t.Fatalf("best-effort restore: %v\n%s\n%s", err, out, tail(string(b), 30))
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
	waitFor(t, "the restored watcher to come back", func() bool { return h.status().Watchers == 1 })
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
	waitFor(t, "the watcher", func() bool { return h.status().Watchers == 1 })
	h.mustCtl("bump")
	waitFor(t, "an outdated watcher", func() bool { return h.status().Outdated == 1 })

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
	waitFor(t, "the restored wait-watchers to finish", func() bool {
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
	waitFor(t, "the watcher", func() bool { return h.status().Watchers == 1 })
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
