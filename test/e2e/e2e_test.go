// Package e2e tests the real bin/genidctl: a daemon process and separate
// client processes, as a user or a script would use them. `make test` builds
// the binary first; GENIDCTL overrides its path. Runs as root (CI does), since
// it switches to nobody and kills daemons.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func genidctl(t *testing.T) string {
	t.Helper()
	p := os.Getenv("GENIDCTL")
	if p == "" {
		p = "../../bin/genidctl"
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		t.Fatalf("%s missing: run `make build` (or `make test`) first: %v", abs, err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the end-to-end tests run as root (they switch to nobody and kill daemons)")
	}
	return abs
}

// runDir makes a run dir that nobody may enter, as /run/genid is.
func runDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "genid-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type daemon struct {
	cmd *exec.Cmd
	log *bytes.Buffer
}

// startDaemon starts `genidctl daemon` and waits for its socket.
func startDaemon(t *testing.T, bin, dir string, args ...string) *daemon {
	t.Helper()
	var log bytes.Buffer
	cmd := exec.Command(bin, append([]string{"--run-dir", dir, "daemon", "--log-level", "debug"}, args...)...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, log: &log}
	t.Cleanup(func() {
		d.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("daemon log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "genid.sock")); err == nil {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not start:\n%s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (d *daemon) kill(sig syscall.Signal) error {
	if d.cmd.ProcessState != nil {
		return nil
	}
	d.cmd.Process.Signal(sig)
	return d.cmd.Wait()
}

type result struct {
	out, err string
	code     int
}

func ctl(t *testing.T, bin, dir string, args ...string) result {
	t.Helper()
	return ctlAs(t, nil, bin, dir, args...)
}

func ctlAs(t *testing.T, cred *syscall.Credential, bin, dir string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--run-dir", dir}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	r := result{out: strings.TrimSpace(out.String()), err: strings.TrimSpace(errb.String())}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("genidctl %v: %v", args, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

func mustCtl(t *testing.T, bin, dir string, args ...string) string {
	t.Helper()
	r := ctl(t, bin, dir, args...)
	if r.code != 0 {
		t.Fatalf("genidctl %v: exit %d: %s", args, r.code, r.err)
	}
	return r.out
}

// watcher is a `genidctl watch` process whose stdout lines arrive on a channel.
type watcher struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan error
}

func startWatch(t *testing.T, bin, dir string, args ...string) *watcher {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--run-dir", dir, "watch"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &watcher{cmd: cmd, lines: make(chan string, 100), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
		w.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("watch stderr:\n%s", stderr.String())
		}
	})
	return w
}

func (w *watcher) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-w.lines:
		if !ok {
			t.Fatal("watch exited early")
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("watch printed nothing")
	}
	return ""
}

// waitWatchers polls status until n watchers are registered.
func waitRegistered(t *testing.T, bin, dir string, n int) status {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := getStatus(t, bin, dir)
		if st.Watchers == n {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d watchers registered, want %d", st.Watchers, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type status struct {
	Generation uint32 `json:"generation"`
	Watchers   int    `json:"watchers"`
	Outdated   int    `json:"outdated"`
	LastBump   *struct {
		Reason string    `json:"reason"`
		Time   time.Time `json:"time"`
	} `json:"last_bump"`
	WatcherList []struct {
		PID      int    `json:"pid"`
		Acked    uint32 `json:"acked"`
		Outdated bool   `json:"outdated"`
	} `json:"watcher_list"`
}

func getStatus(t *testing.T, bin, dir string) status {
	t.Helper()
	var st status
	out := mustCtl(t, bin, dir, "status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

func TestCLIContract(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)

	// Before any daemon: get fails clearly, client commands name the socket.
	if r := ctl(t, bin, dir, "get"); r.code == 0 || !strings.Contains(r.err, "generation") {
		t.Fatalf("get without a page: %+v", r)
	}
	startDaemon(t, bin, dir)
	if got := mustCtl(t, bin, dir, "get"); got != "0" {
		t.Fatalf("fresh generation %q", got)
	}
	st := getStatus(t, bin, dir)
	if st.Generation != 0 || st.Watchers != 0 || st.LastBump != nil {
		t.Fatalf("fresh status %+v", st)
	}

	w := startWatch(t, bin, dir)
	st = waitRegistered(t, bin, dir, 1)
	if st.WatcherList[0].PID != w.cmd.Process.Pid || st.WatcherList[0].Outdated {
		t.Fatalf("watcher entry %+v, pid %d", st.WatcherList, w.cmd.Process.Pid)
	}

	if got := mustCtl(t, bin, dir, "bump", "--reason", "e2e"); got != "1" {
		t.Fatalf("bump printed %q", got)
	}
	if l := w.next(t); l != "1" {
		t.Fatalf("watch printed %q", l)
	}
	if r := ctl(t, bin, dir, "wait-watchers", "--timeout", "10s"); r.code != 0 {
		t.Fatalf("wait-watchers after the watcher acked: %+v", r)
	}
	st = getStatus(t, bin, dir)
	if st.Generation != 1 || st.Outdated != 0 || st.LastBump == nil || st.LastBump.Reason != "e2e" ||
		time.Since(st.LastBump.Time) > time.Minute || st.WatcherList[0].Acked != 1 {
		t.Fatalf("status after bump %+v", st)
	}

	if got := mustCtl(t, bin, dir, "bump", "--avoid", "9"); got != "10" {
		t.Fatalf("bump --avoid 9 printed %q", got)
	}
	if got := mustCtl(t, bin, dir, "bump", "--min", "5"); got != "11" {
		t.Fatalf("bump --min 5 from 10 printed %q", got)
	}
	if got := mustCtl(t, bin, dir, "bump", "--min", "20"); got != "20" {
		t.Fatalf("bump --min 20 printed %q", got)
	}
	for _, want := range []string{"10", "11", "20"} {
		// The watcher may skip a generation that a newer one overtook.
		for l := w.next(t); l != want; l = w.next(t) {
			if n, _ := strconv.Atoi(l); n > atoi(want) {
				break
			}
		}
	}
	if r := ctl(t, bin, dir, "bump", "--min", "1", "--avoid", "1"); r.code != 2 || !strings.Contains(r.err, "exclude") {
		t.Fatalf("--min with --avoid: %+v", r)
	}
	if r := ctl(t, bin, dir, "bump", "--avoid", "4294967295"); r.code != 8 || !strings.Contains(r.err, "overflow") {
		t.Fatalf("avoid max u32: %+v", r)
	}
	if r := ctl(t, bin, dir, "frobnicate"); r.code == 0 {
		t.Fatalf("unknown command accepted: %+v", r)
	}
	for _, cmd := range []string{"daemon", "get", "status", "watch", "bump", "wait-watchers", "outdated"} {
		if r := ctl(t, bin, dir, cmd, "--help"); r.code != 0 || !strings.Contains(r.out, "USAGE") {
			t.Fatalf("%s --help: %+v", cmd, r)
		}
	}
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

func TestWatchExecAndOnce(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	mark := filepath.Join(dir, "hook")

	// A failing command leaves the watcher outdated: wait-watchers times out.
	fail := startWatch(t, bin, dir, "--exec", "sh", "-c", "exit 3")
	waitRegistered(t, bin, dir, 1)
	mustCtl(t, bin, dir, "bump")
	if l := fail.next(t); l != "1" {
		t.Fatalf("failing watcher printed %q", l)
	}
	r := ctl(t, bin, dir, "wait-watchers", "--timeout", "300ms")
	if r.code != 5 || !strings.Contains(r.err, "timed out") {
		t.Fatalf("wait-watchers with an unacked watcher: %+v", r)
	}
	fail.cmd.Process.Kill()
	<-fail.done

	// A succeeding command sees both generations, then the watcher acks and exits.
	once := startWatch(t, bin, dir, "--once", "--exec", "sh", "-c", `echo "$GENID_PREVIOUS $GENID_GENERATION" > `+mark)
	waitRegistered(t, bin, dir, 1)
	mustCtl(t, bin, dir, "bump")
	if l := once.next(t); l != "2" {
		t.Fatalf("watch --once printed %q", l)
	}
	select {
	case err := <-once.done:
		if err != nil {
			t.Fatalf("watch --once: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch --once did not exit")
	}
	b, _ := os.ReadFile(mark)
	if strings.TrimSpace(string(b)) != "1 2" {
		t.Fatalf("hook saw %q, want previous 1 and generation 2", b)
	}
	mustCtl(t, bin, dir, "wait-watchers", "--timeout", "5s")
}

func TestBumpRefusedToUnprivileged(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)

	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	r := ctlAs(t, nobody, bin, dir, "bump")
	if r.code != 4 || !strings.Contains(r.err, "permission denied") || !strings.Contains(r.err, "CAP_CHECKPOINT_RESTORE") {
		t.Fatalf("bump as nobody: %+v", r)
	}
	// Root of a nested user namespace has every capability, but not in ours.
	cmd := exec.Command("unshare", "--user", "--map-root-user", bin, "--run-dir", dir, "bump")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 4 || !strings.Contains(string(out), "user namespace") {
		t.Fatalf("bump as root of a user namespace: %v: %s", err, out)
	}
	if g := mustCtl(t, bin, dir, "get"); g != "0" {
		t.Fatalf("a refused bump moved the generation to %s", g)
	}
	// Everything but bump is open to everyone.
	if r := ctlAs(t, nobody, bin, dir, "get"); r.code != 0 || r.out != "0" {
		t.Fatalf("get as nobody: %+v", r)
	}
	if r := ctlAs(t, nobody, bin, dir, "status"); r.code != 0 {
		t.Fatalf("status as nobody: %+v", r)
	}
	if g := mustCtl(t, bin, dir, "bump"); g != "1" {
		t.Fatalf("root bump: %s", g)
	}
}

// TestCrashRestart kills the daemon with SIGKILL: a new one resumes from the
// page, so the generation never goes back, and watchers see later bumps.
func TestCrashRestart(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	mustCtl(t, bin, dir, "bump", "--min", "41")
	w := startWatch(t, bin, dir)
	waitRegistered(t, bin, dir, 1)
	mustCtl(t, bin, dir, "bump")
	if l := w.next(t); l != "42" {
		t.Fatalf("watch printed %q", l)
	}

	d.kill(syscall.SIGKILL)
	if g := mustCtl(t, bin, dir, "get"); g != "42" {
		t.Fatalf("page after kill -9: %s", g)
	}
	if r := ctl(t, bin, dir, "status"); r.code != 3 || !strings.Contains(r.err, filepath.Join(dir, "genid.sock")) {
		t.Fatalf("status with the daemon down must name the socket: %+v", r)
	}
	startDaemon(t, bin, dir)
	if g := mustCtl(t, bin, dir, "get"); g != "42" {
		t.Fatalf("restart resumed at %s, want 42", g)
	}
	waitRegistered(t, bin, dir, 1) // the watcher came back by itself
	if g := mustCtl(t, bin, dir, "bump"); g != "43" {
		t.Fatalf("bump after restart gave %s", g)
	}
	if l := w.next(t); l != "43" {
		t.Fatalf("watcher after restart printed %q", l)
	}
	mustCtl(t, bin, dir, "wait-watchers", "--timeout", "10s")
}

func TestOutdatedWatcherClosing(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	// Two watchers whose commands fail stay outdated.
	var ws []*watcher
	for range 2 {
		ws = append(ws, startWatch(t, bin, dir, "--exec", "false"))
	}
	waitRegistered(t, bin, dir, 2)
	mustCtl(t, bin, dir, "bump")
	for _, w := range ws {
		w.next(t)
	}
	if n := mustCtl(t, bin, dir, "outdated"); n != "2" {
		t.Fatalf("outdated %s, want 2", n)
	}
	// A waiter blocked on them returns once both have gone.
	waiter := exec.Command(bin, "--run-dir", dir, "wait-watchers")
	if err := waiter.Start(); err != nil {
		t.Fatal(err)
	}
	ws[0].cmd.Process.Kill()
	<-ws[0].done
	deadline := time.Now().Add(10 * time.Second)
	for mustCtl(t, bin, dir, "outdated") != "1" {
		if time.Now().After(deadline) {
			t.Fatal("closing an outdated watcher did not lower the count")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ws[1].cmd.Process.Signal(syscall.SIGTERM)
	<-ws[1].done
	done := make(chan error, 1)
	go func() { done <- waiter.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("wait-watchers: %v", err)
		}
	case <-time.After(10 * time.Second):
		waiter.Process.Kill()
		t.Fatal("wait-watchers still blocked with no outdated watcher")
	}
}

// TestFloodAndGarbage throws hostile clients at the real daemon.
func TestFloodAndGarbage(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir, "--max-conns", "64", "--frame-timeout", "200ms")
	sock := filepath.Join(dir, "genid.sock")
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialUnix(sock)
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprintf(c, "\x01\x07garbage %d", i) // a partial frame, then nothing
			io.Copy(io.Discard, c)
		}()
	}
	wg.Wait()
	if d.cmd.ProcessState != nil {
		t.Fatalf("daemon died:\n%s", d.log.String())
	}
	if g := mustCtl(t, bin, dir, "status"); !strings.Contains(g, "generation: 0") {
		t.Fatalf("status after the flood: %s", g)
	}
}

// TestCleanShutdown: SIGTERM and SIGINT remove the socket and keep the page.
func TestCleanShutdown(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		d := startDaemon(t, bin, dir)
		mustCtl(t, bin, dir, "bump")
		if err := d.kill(sig); err != nil {
			t.Fatalf("daemon exit on %v: %v\n%s", sig, err, d.log.String())
		}
		if _, err := os.Stat(filepath.Join(dir, "genid.sock")); !os.IsNotExist(err) {
			t.Fatalf("socket left after %v: %v", sig, err)
		}
		if g := mustCtl(t, bin, dir, "get"); g != strconv.Itoa(i+1) {
			t.Fatalf("page after %v holds %s", sig, g)
		}
	}
}

// TestBumpLeavesRuntimeAsleep: a bump to an idle daemon wakes only the
// thread that serves it (about 2 voluntary context switches per bump, here),
// not also the Go runtime's sysmon thread, which a system call through Go's
// usual wrappers wakes from its idle sleep to poll every 20 µs while the
// daemon is busy (about 6 per bump, here; see genid/server/sys.go). The
// daemon logs at warn: writing a log line is such a system call.
func TestBumpLeavesRuntimeAsleep(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir, "--backends", "none", "--log-level", "warn")
	mustCtl(t, bin, dir, "status")
	switches := func() int {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", d.cmd.Process.Pid))
		n := 0
		for _, task := range tasks {
			b, _ := os.ReadFile(task)
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "voluntary_ctxt_switches:"); ok {
					x, _ := strconv.Atoi(strings.TrimSpace(v))
					n += x
				}
			}
		}
		return n
	}
	const bumps = 20
	time.Sleep(200 * time.Millisecond) // the daemon idles: sysmon goes to sleep
	before := switches()
	for range bumps {
		mustCtl(t, bin, dir, "bump")
		time.Sleep(30 * time.Millisecond)
	}
	per := float64(switches()-before) / bumps
	t.Logf("daemon voluntary context switches per bump: %.1f", per)
	if per > 4.5 {
		t.Errorf("%.1f daemon context switches per bump, want about 2: something woke the runtime's sysmon", per)
	}
}
