// Package e2e tests the real bin/genidctl: a daemon process and separate
// client processes, as a user or a script would use them. `make test` builds
// the binary first; GENIDCTL overrides its path. Runs as root (CI does), since
// it switches to nobody and kills daemons.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/checkpoint"
	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/servertest"
)

func genidctl(t *testing.T) string {
	t.Helper()
	abs, err := proctest.Binary()
	if err != nil {
		t.Fatal(err)
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

// shortRunDir is a run dir with a short path: a 64-byte scope name leaves
// only 31 bytes of a socket path for it.
func shortRunDir(t *testing.T) string {
	d, err := os.MkdirTemp("/tmp", "g")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// daemon is a genidctl daemon process (internal/proctest), with the
// names these tests use.
type daemon struct {
	*proctest.Daemon
	cmd *exec.Cmd
	log *proctest.Buffer
}

// startDaemon starts `genidctl daemon` and waits for its socket.
func startDaemon(t *testing.T, bin, dir string, args ...string) *daemon {
	t.Helper()
	return spawnDaemon(t, bin, dir, append([]string{"--run-dir", dir, "daemon", "--log-level", "debug"}, args...)...)
}

// spawnDaemon runs genidctl with argv, a daemon command line serving dir,
// and waits for its socket. Unless argv names one, the daemon keeps its
// state in a directory of the run dir's own (stateDir), not in the host's
// /var/lib/genid, where each test's run dir would leave an entry.
func spawnDaemon(t *testing.T, bin, dir string, argv ...string) *daemon {
	t.Helper()
	if !slices.Contains(argv, "--state-dir") {
		argv = append(argv, "--state-dir", stateDir(t, dir))
	}
	p := proctest.Spawn(t, bin, dir, argv...)
	return &daemon{Daemon: p, cmd: p.Cmd, log: p.Log}
}

// stateDirs are the state dirs of the run dirs the tests started daemons
// on, so that each restart on a run dir finds the state its daemons kept.
var stateDirs sync.Map

// stateDir returns run dir dir's state dir, made for the first daemon on it
// and removed when that daemon's test ends.
func stateDir(t *testing.T, dir string) string {
	if s, ok := stateDirs.Load(dir); ok {
		return s.(string)
	}
	s := t.TempDir()
	stateDirs.Store(dir, s)
	t.Cleanup(func() { stateDirs.Delete(dir) })
	return s
}

// kill signals the daemon unless it has exited, and returns how it exited.
func (d *daemon) kill(sig syscall.Signal) error { return d.Kill(sig) }

// dead tells whether the daemon process has exited.
func (d *daemon) dead() bool { return d.Dead() }

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
	cmd := exec.Command(bin, append([]string{"--run-dir", dir}, args...)...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	return runCmd(t, cmd, 30*time.Second)
}

// ctlEnv runs genidctl with exactly args (no --run-dir added) and extra
// environment.
func ctlEnv(t *testing.T, bin string, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	return runCmd(t, cmd, 30*time.Second)
}

// runCmd runs cmd, killed after timeout (its exit code is then -1).
func runCmd(t *testing.T, cmd *exec.Cmd, timeout time.Duration) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(timeout, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	r := result{out: strings.TrimSpace(out.String()), err: strings.TrimSpace(errb.String())}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%v: %v", cmd.Args, err)
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

// startLines starts cmd and delivers its stdout lines as a watcher's.
func startLines(t *testing.T, cmd *exec.Cmd) *watcher {
	t.Helper()
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
			t.Logf("%s stderr:\n%s", strings.Join(cmd.Args, " "), stderr.String())
		}
	})
	return w
}

func startWatch(t *testing.T, bin, dir string, args ...string) *watcher {
	t.Helper()
	return startLines(t, exec.Command(bin, append([]string{"--run-dir", dir, "watch"}, args...)...))
}

func (w *watcher) next(t *testing.T) string {
	t.Helper()
	l, err := w.nextLine()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (w *watcher) nextLine() (string, error) {
	select {
	case l, ok := <-w.lines:
		if !ok {
			return "", errors.New("watch exited early")
		}
		return l, nil
	case <-time.After(10 * time.Second):
		return "", errors.New("watch printed nothing")
	}
}

// expectGenerations reads the lines of `genidctl watch` with next and checks
// that they reach each of wants in turn. watch prints only the newest
// generation when it wakes, so it may skip one: a line past the expected
// value stands for the skipped one and is carried over to the next.
func expectGenerations(next func() (string, error), wants ...int) error {
	carried := -1
	for _, want := range wants {
		n := carried
		if n < 0 {
			l, err := next()
			if err != nil {
				return fmt.Errorf("waiting for %d: %w", want, err)
			}
			if n, err = strconv.Atoi(l); err != nil || n < 0 {
				return fmt.Errorf("waiting for %d: watch printed %q", want, l)
			}
		}
		carried = -1
		switch {
		case n < want:
			return fmt.Errorf("watch printed %d, want %d: generations must grow", n, want)
		case n > want:
			carried = n // want was overtaken
		}
	}
	if carried >= 0 {
		return fmt.Errorf("watch printed %d, past the last expected %d", carried, wants[len(wants)-1])
	}
	return nil
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
	if err := expectGenerations(w.nextLine, 10, 11, 20); err != nil {
		t.Fatal(err)
	}
	if r := ctl(t, bin, dir, "bump", "--min", "1", "--avoid", "1"); r.code != 2 || !strings.Contains(r.err, "exclude") {
		t.Fatalf("--min with --avoid: %+v", r)
	}
	if r := ctl(t, bin, dir, "bump", "--avoid", "4294967295"); r.code != 8 || !strings.Contains(r.err, "overflow") {
		t.Fatalf("avoid max u32: %+v", r)
	}
	if r := ctl(t, bin, dir, "frobnicate"); r.code != 2 {
		t.Fatalf("unknown command: %+v, want exit 2", r)
	}
	for _, cmd := range []string{"daemon", "get", "status", "watch", "bump", "wait-watchers", "outdated"} {
		if r := ctl(t, bin, dir, cmd, "--help"); r.code != 0 || !strings.Contains(r.out, "USAGE") {
			t.Fatalf("%s --help: %+v", cmd, r)
		}
	}
}

// asleepOnPage waits until a thread of process pid sleeps in futex_waitv
// (system call 449 on x86-64), where WaitChange sleeps on the page.
func asleepOnPage(t *testing.T, pid int) {
	t.Helper()
	servertest.WaitFor(t, "a thread asleep on the page", func() bool {
		files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/syscall", pid))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(string(b), "449 ") {
				return true
			}
		}
		return false
	})
}

// watch --page sleeps on the page: it is no watcher (the barrier does not
// wait for it), runs its command on each change it is woken at, and is
// woken by a daemon that was killed and started again meanwhile, since it
// holds no connection.
func TestWatchPage(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	mark := filepath.Join(dir, "hook")
	w := startWatch(t, bin, dir, "--page", "--exec", "sh", "-c", `echo "$GENID_PREVIOUS $GENID_GENERATION" >> `+mark)
	asleepOnPage(t, w.cmd.Process.Pid)
	if st := getStatus(t, bin, dir); st.Watchers != 0 {
		t.Fatalf("watch --page registered: %+v", st)
	}
	mustCtl(t, bin, dir, "bump")
	if l := w.next(t); l != "1" {
		t.Fatalf("watch --page printed %q", l)
	}
	mustCtl(t, bin, dir, "wait-watchers", "--timeout", "5s")

	asleepOnPage(t, w.cmd.Process.Pid)
	d.kill(syscall.SIGKILL)
	<-d.Exited()
	startDaemon(t, bin, dir)
	mustCtl(t, bin, dir, "bump", "--min", "5")
	if l := w.next(t); l != "5" {
		t.Fatalf("watch --page after a daemon restart printed %q", l)
	}
	servertest.WaitFor(t, "the second hook", func() bool {
		b, _ := os.ReadFile(mark)
		return string(b) == "0 1\n1 5\n"
	})

	once := startWatch(t, bin, dir, "--page", "--once", "--exec", "false")
	asleepOnPage(t, once.cmd.Process.Pid)
	mustCtl(t, bin, dir, "bump")
	if l := once.next(t); l != "6" {
		t.Fatalf("watch --page --once printed %q", l)
	}
	select {
	case err := <-once.done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("watch --page --once with a failing command: %v, want exit 1", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch --page --once did not exit")
	}
}

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

// What only an administrator may do is refused to everyone else, and the
// rest is open to everyone: an unprivileged user, and that user as root of
// a user namespace of its own (its uid there maps to its own).
func TestAdminRefusedToUnprivileged(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	mustCtl(t, bin, dir, "scope", "create", "c1")

	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	for _, args := range [][]string{
		{"bump"},
		{"bump", "--all-scopes"},
		{"bump", "--scope", "c1"},
		{"scope", "create", "mine"},
		{"scope", "remove", "c1"},
		{"scope", "list"},
		{"status", "--scope", "c1"},
		{"wait-watchers", "--scope", "c1", "--timeout", "1s"},
		{"outdated", "--scope", "c1"},
	} {
		r := ctlAs(t, nobody, bin, dir, args...)
		if r.code != 4 || !strings.Contains(r.err, "permission denied") {
			t.Errorf("%v as nobody: %+v, want exit 4", args, r)
		}
	}
	// Root of a user namespace that nobody made is nobody to the daemon.
	cmd := exec.Command("unshare", "--user", "--map-root-user", bin, "--run-dir", dir, "bump")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 4 || !strings.Contains(string(out), "permission denied") {
		t.Fatalf("bump as root of nobody's user namespace: %v: %s", err, out)
	}
	// A container's scope is not reachable by its host path.
	if r := ctlAs(t, nobody, bin, dir, "get", "--scope", "c1"); r.code == 0 {
		t.Errorf("get --scope c1 as nobody: %+v", r)
	}
	if g := mustCtl(t, bin, dir, "get"); g != "0" {
		t.Fatalf("a refused bump moved the generation to %s", g)
	}
	// The host scope is everyone's, without the processes behind it.
	if r := ctlAs(t, nobody, bin, dir, "get"); r.code != 0 || r.out != "0" {
		t.Fatalf("get as nobody: %+v", r)
	}
	w := startWatch(t, bin, dir)
	waitRegistered(t, bin, dir, 1)
	r := ctlAs(t, nobody, bin, dir, "status", "--json")
	if r.code != 0 || strings.Contains(r.out, "watcher_list") || strings.Contains(r.out, `"pid"`) || !strings.Contains(r.out, `"watchers": 1`) {
		t.Fatalf("status as nobody: %+v", r)
	}
	if st := getStatus(t, bin, dir); len(st.WatcherList) != 1 {
		t.Fatalf("root's status %+v: want the watcher's process", st)
	}
	if g := mustCtl(t, bin, dir, "bump"); g != "1" {
		t.Fatalf("root bump: %s", g)
	}
	if l := w.next(t); l != "1" {
		t.Fatalf("watch printed %q, want 1", l)
	}
}

// With --admin-group, its members are administrators: the admin socket is
// theirs, and their requests are served; everyone else is still refused.
func TestAdminGroup(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	const group = 4242 // no group needs to exist: a number will do
	startDaemon(t, bin, dir, "--admin-group", strconv.Itoa(group))
	member := &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{group}}
	if r := ctlAs(t, member, bin, dir, "bump", "--reason", "member"); r.code != 0 || r.out != "1" {
		t.Fatalf("bump by a member of the admin group: %+v", r)
	}
	if r := ctlAs(t, &syscall.Credential{Uid: 65534, Gid: 65534}, bin, dir, "bump"); r.code != 4 {
		t.Fatalf("bump by a non-member: %+v", r)
	}
	st, err := os.Stat(filepath.Join(dir, "admin.sock"))
	if err != nil || st.Mode().Perm() != 0o660 || st.Sys().(*syscall.Stat_t).Gid != group {
		t.Fatalf("admin socket %v %v: want 0660, group %d", st.Mode(), err, group)
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
	if r := ctl(t, bin, dir, "status"); r.code != 3 || !strings.Contains(r.err, filepath.Join(dir, "admin.sock")) {
		t.Fatalf("status (root's: on the admin socket) with the daemon down must name the socket: %+v", r)
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
	select {
	case <-d.Exited():
		t.Fatalf("daemon died: %v\n%s", d.kill(0), d.log.String())
	case <-time.After(100 * time.Millisecond): // a crash closes the connections a moment before the exit is seen
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

// TestExpectGenerations checks the helper TestCLIContract reads `watch`
// with: a generation that a newer one overtook may be missing, and the
// newer one then still counts for itself.
func TestExpectGenerations(t *testing.T) {
	lines := func(ls ...string) func() (string, error) {
		return func() (string, error) {
			if len(ls) == 0 {
				return "", errors.New("watch printed nothing")
			}
			l := ls[0]
			ls = ls[1:]
			return l, nil
		}
	}
	for _, ok := range [][]string{{"10", "11", "20"}, {"11", "20"}, {"10", "20"}, {"20"}} {
		if err := expectGenerations(lines(ok...), 10, 11, 20); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
	for _, bad := range [][]string{{}, {"10", "11"}, {"9"}, {"10", "10", "20"}, {"21"}, {"10", "x"}} {
		if err := expectGenerations(lines(bad...), 10, 11, 20); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// TestDaemonDeathSeen: a daemon that exits by itself is seen as dead, which
// TestFloodAndGarbage relies on.
func TestDaemonDeathSeen(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	if d.dead() {
		t.Fatal("a running daemon is seen as dead")
	}
	syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-d.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("a killed daemon is not seen as dead")
	}
	if !d.dead() || d.Err() == nil {
		t.Fatalf("dead %v, exit %v", d.dead(), d.Err())
	}
}

// TestExitCodes: scripts tell a wrong command line (2) from a daemon that is
// not there (3), as README and PROTOCOL.md document.
func TestExitCodes(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t) // no daemon ever ran here: no page

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"foo"}, 2, `unknown command "foo"`},
		{[]string{"help", "foo"}, 2, "no such command"},
		{[]string{"bump", "--min", "abc"}, 2, "invalid value"},
		{[]string{"bump", "--bogus"}, 2, "not defined"},
		{[]string{"wait-watchers", "--timeout", "xyz"}, 2, "invalid value"},
		{[]string{"--bogus", "status"}, 2, "not defined"},
		// A missing page: the daemon never ran, or a container lacks the mount.
		{[]string{"status"}, 3, "daemon unreachable"},
		{[]string{"outdated"}, 3, "daemon unreachable"},
		{[]string{"bump"}, 3, "daemon unreachable"},
		{[]string{"wait-watchers"}, 3, "daemon unreachable"},
		{[]string{"watch"}, 3, "daemon unreachable"},
		{[]string{"get"}, 3, "generation"},
	} {
		if r := ctl(t, bin, dir, tc.args...); r.code != tc.code || !strings.Contains(r.err, tc.msg) {
			t.Errorf("genidctl %v: %+v, want exit %d and %q", tc.args, r, tc.code, tc.msg)
		}
	}
	if r := ctl(t, bin, dir, "help", "bump"); r.code != 0 || !strings.Contains(r.out, "genidctl bump") {
		t.Errorf("help bump: %+v", r)
	}
}

// TestRunDirAfterCommand: every command takes --run-dir after its name too,
// and there it wins over the global flag and GENID_RUN_DIR.
func TestRunDirAfterCommand(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	spawnDaemon(t, bin, dir, "daemon", "--run-dir", dir, "--log-level", "debug")
	elsewhere := []string{"GENID_RUN_DIR=" + filepath.Join(dir, "not-here")}
	if r := ctlEnv(t, bin, elsewhere, "status", "--run-dir", dir); r.code != 0 || !strings.Contains(r.out, "generation: 0") {
		t.Fatalf("status --run-dir: %+v", r)
	}
	if r := ctlEnv(t, bin, nil, "--run-dir", filepath.Join(dir, "not-here"), "bump", "--run-dir", dir); r.code != 0 || r.out != "1" {
		t.Fatalf("bump --run-dir after a global one: %+v", r)
	}
	for _, args := range [][]string{{"get"}, {"outdated"}, {"wait-watchers", "--timeout", "1s"}} {
		if r := ctlEnv(t, bin, elsewhere, append(args, "--run-dir", dir)...); r.code != 0 {
			t.Errorf("%v --run-dir: %+v", args, r)
		}
	}
	// The global flag and the environment still work.
	if r := ctlEnv(t, bin, []string{"GENID_RUN_DIR=" + dir}, "get"); r.code != 0 || r.out != "1" {
		t.Fatalf("get with GENID_RUN_DIR: %+v", r)
	}
	for _, cmd := range []string{"daemon", "get", "status", "watch", "bump", "wait-watchers", "outdated", "image-info", "criu-hook", "oci-config"} {
		if r := ctlEnv(t, bin, nil, cmd, "--run-dir", dir, "--help"); r.code != 0 || !strings.Contains(r.out, "--run-dir DIR") {
			t.Errorf("%s --run-dir DIR --help: %+v", cmd, r)
		}
	}
}

// TestFlagValidation: values that would be wrapped, silently replaced by a
// default, or break clients are refused with exit 2, before anything runs.
func TestFlagValidation(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"wait-watchers", "--timeout", "-1s"}, "negative"},
		{[]string{"status", "extra"}, "no arguments"},
		{[]string{"outdated", "extra"}, "no arguments"},
		{[]string{"wait-watchers", "extra"}, "no arguments"},
		{[]string{"get", "extra"}, "no arguments"},
	} {
		if r := ctl(t, bin, dir, tc.args...); r.code != 2 || !strings.Contains(r.err, tc.msg) {
			t.Errorf("genidctl %v: %+v, want exit 2 and %q", tc.args, r, tc.msg)
		}
	}
	// A daemon refuses before it touches its run dir.
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--max-watchers", "-1"}, "--max-watchers -1"},
		{[]string{"--max-watchers", "0"}, "--max-watchers 0"},
		{[]string{"--max-conns", "0"}, "--max-conns 0"},
		{[]string{"--frame-timeout", "-1s"}, "--frame-timeout -1s"},
		{[]string{"--frame-timeout", "0s"}, "--frame-timeout 0s"},
		{[]string{"--max-frame", "0"}, "--max-frame 0"},
		{[]string{"--max-frame", "7"}, "--max-frame 7"},
		{[]string{"--max-frame", "328"}, "--max-frame 328"},
		{[]string{"--max-frame", "1048577"}, "--max-frame 1048577"},
		{[]string{"extra"}, "no arguments"},
	} {
		fresh := runDir(t)
		args := append([]string{"--run-dir", fresh, "daemon", "--backends", "none"}, tc.args...)
		// A daemon that accepted the flags would serve until killed.
		if r := runCmd(t, exec.Command(bin, args...), 5*time.Second); r.code != 2 || !strings.Contains(r.err, tc.msg) {
			t.Errorf("genidctl %v: %+v, want exit 2 and %q", args, r, tc.msg)
		}
		if _, err := os.Stat(filepath.Join(fresh, "generation")); !os.IsNotExist(err) {
			t.Errorf("daemon %v made a page: %v", tc.args, err)
		}
	}
	// The smallest --max-frame takes the largest request: a bump of a scope
	// with the longest name, with the longest reason.
	small := shortRunDir(t) // a scope's socket path must fit a sockaddr_un
	startDaemon(t, bin, small, "--max-frame", "329")
	long := strings.Repeat("s", 64)
	mustCtl(t, bin, small, "scope", "create", long)
	if r := ctl(t, bin, small, "bump", "--scope", long, "--reason", strings.Repeat("r", 256)); r.code != 0 || r.out != "1" {
		t.Fatalf("bump with a 256-byte reason of a scope with a 64-byte name at --max-frame 329: %+v", r)
	}
}

// writePluginRecord writes a record as the C plugin does (no writer) of a
// host process's checkpoint at generation gen.
func writePluginRecord(t *testing.T, images string, gen uint32) {
	t.Helper()
	if err := checkpoint.WriteRecord(images, &checkpoint.Record{RunDir: "/run/genid", Scopes: []checkpoint.ScopeRecord{{Generation: &gen}}}); err != nil {
		t.Fatal(err)
	}
}

// hook runs genidctl as CRIU runs an action script: without arguments.
func hook(t *testing.T, bin, dir, action, images string, env ...string) result {
	t.Helper()
	return ctlEnv(t, bin, append([]string{"CRTOOLS_SCRIPT_ACTION=" + action, "CRTOOLS_IMAGE_DIR=" + images,
		"GENID_RUN_DIR=" + dir, "GENID_CRIU_BEST_EFFORT="}, env...))
}

// TestActionScriptAfterPluginRecord: a checkpoint recorded by the C plugin,
// restored where CRIU does not load the plugin, is bumped past by the action
// script, every time; where the plugin bumped in the same restore, it is not
// bumped twice.
func TestActionScriptAfterPluginRecord(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	mustCtl(t, bin, dir, "bump", "--min", "3")
	images := t.TempDir()
	writePluginRecord(t, images, 5)

	// No plugin ran: the page (3) is behind the record (5).
	r := hook(t, bin, dir, "post-restore", images)
	if r.code != 0 || !strings.Contains(r.err, "bumped to 6") {
		t.Fatalf("post-restore without the plugin: %+v", r)
	}
	if st := getStatus(t, bin, dir); st.Generation != 6 || st.LastBump == nil || st.LastBump.Reason != "criu-restore" {
		t.Fatalf("after the action script: %+v", st)
	}
	// The plugin bumped past the record in this restore, and said so in
	// criu's environment: no second bump.
	r = hook(t, bin, dir, "post-restore", images, "GENID_CRIU_RESTORED=6")
	if r.code != 0 || !strings.Contains(r.err, "not bumped") {
		t.Fatalf("post-restore after the plugin: %+v", r)
	}
	if g := mustCtl(t, bin, dir, "get"); g != "6" {
		t.Fatalf("generation %s after a restore the plugin bumped, want 6", g)
	}
	// A second restore of the checkpoint without the plugin: the page is past
	// the record already, but this restore must not share the first's
	// generation.
	r = hook(t, bin, dir, "post-restore", images)
	if r.code != 0 || !strings.Contains(r.err, "bumped to 7") {
		t.Fatalf("second post-restore without the plugin: %+v", r)
	}

	// With the daemon down, a restore that needs a bump fails, unless best
	// effort is asked for, as the plugin's restore would be.
	d.kill(syscall.SIGTERM)
	writePluginRecord(t, images, 6)
	if r := hook(t, bin, dir, "post-restore", images); r.code != 3 || !strings.Contains(r.err, "unreachable") {
		t.Fatalf("post-restore with the daemon down: %+v", r)
	}
	if r := hook(t, bin, dir, "post-restore", images, "GENID_CRIU_BEST_EFFORT=1"); r.code != 0 || !strings.Contains(r.err, "WARNING") {
		t.Fatalf("best-effort post-restore with the daemon down: %+v", r)
	}
}

// One user cannot take more than its share: its watchers and connections
// past the per-user limits are refused, while another user's are served.
func TestPerUserLimits(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir, "--max-watchers-per-user", "3", "--max-conns-per-user", "5")
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	for i := range 4 {
		cmd := exec.Command(bin, "--run-dir", dir, "watch")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		if i < 3 {
			waitRegistered(t, bin, dir, i+1)
			continue
		}
		// The fourth is refused: it exits with the daemon's word for it.
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(stderr.String(), "uid 65534 has 3 watchers") {
				t.Fatalf("nobody's fourth watcher: %v: %s", err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("nobody's fourth watcher was not refused")
		}
	}
	// Another user is served; so is root.
	other := &syscall.Credential{Uid: 65533, Gid: 65533}
	cmd := exec.Command(bin, "--run-dir", dir, "watch")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: other}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitRegistered(t, bin, dir, 4)
	if g := mustCtl(t, bin, dir, "bump"); g != "1" {
		t.Fatalf("bump: %s", g)
	}
	// A second daemon, whose per-user limit on connections comes first:
	// nobody's third connection is turned away at once, and told why (not
	// "unreachable", exit 3).
	dir2 := runDir(t)
	startDaemon(t, bin, dir2, "--max-conns-per-user", "2")
	for i := range 2 {
		cmd := exec.Command(bin, "--run-dir", dir2, "watch")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitRegistered(t, bin, dir2, i+1)
	}
	for _, args := range [][]string{{"watch"}, {"status"}} {
		r := ctlAs(t, nobody, bin, dir2, args...)
		if r.code != 1 || !strings.Contains(r.err, "uid 65534 has 2 connections: limit reached") {
			t.Fatalf("nobody's third connection (%v): exit %d: %s", args, r.code, r.err)
		}
	}
	if st := getStatus(t, bin, dir2); st.Watchers != 2 {
		t.Fatalf("%d watchers, want nobody's 2", st.Watchers)
	}
}

// The scope commands, as an administrator types them.
func TestScopeCommands(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	if g := mustCtl(t, bin, dir, "scope", "create", "--start", "7", "web"); g != "7" {
		t.Fatalf("scope create --start 7: %s", g)
	}
	if r := ctl(t, bin, dir, "scope", "create", "web"); r.code != 1 || !strings.Contains(r.err, "exists") {
		t.Fatalf("scope create twice: %+v", r)
	}
	if r := ctl(t, bin, dir, "scope", "create", "web", "--start", "3"); r.code != 2 || !strings.Contains(r.err, "the flags go before NAME") {
		t.Fatalf("a flag after NAME: %+v", r)
	}
	if r := ctl(t, bin, dir, "scope", "create", "../x"); r.code != 2 {
		t.Fatalf("a bad name: %+v", r)
	}
	w := startWatch(t, bin, dir, "--scope", "web")
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(ctl(t, bin, dir, "status", "--scope", "web", "--json").out, `"watchers": 1`); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("web's watcher did not register")
		}
	}
	if g := mustCtl(t, bin, dir, "bump", "--scope", "web", "--reason", "deploy"); g != "8" {
		t.Fatalf("bump --scope web: %s", g)
	}
	if l := w.next(t); l != "8" {
		t.Fatalf("web's watcher printed %q", l)
	}
	mustCtl(t, bin, dir, "wait-watchers", "--scope", "web", "--timeout", "10s")
	if g := mustCtl(t, bin, dir, "get", "--scope", "web"); g != "8" {
		t.Fatalf("get --scope web: %s", g)
	}
	if g := mustCtl(t, bin, dir, "get"); g != "0" {
		t.Fatalf("the host's generation moved: %s", g)
	}
	list := mustCtl(t, bin, dir, "scope", "list")
	if !strings.Contains(list, "(host)") || !strings.Contains(list, "web") {
		t.Fatalf("scope list:\n%s", list)
	}
	var js []map[string]any
	if err := json.Unmarshal([]byte(mustCtl(t, bin, dir, "scope", "list", "--json")), &js); err != nil || len(js) != 2 || js[1]["dir"] != filepath.Join(dir, "scopes", "web") {
		t.Fatalf("scope list --json: %v %v", js, err)
	}
	if g := mustCtl(t, bin, dir, "bump", "--all-scopes", "--reason", "vm restore"); g != "1" {
		t.Fatalf("bump --all-scopes: %s", g)
	}
	if l := w.next(t); l != "9" {
		t.Fatalf("web's watcher after bump --all-scopes printed %q", l)
	}
	mustCtl(t, bin, dir, "scope", "remove", "web")
	if r := ctl(t, bin, dir, "get", "--scope", "web"); r.code != 3 {
		t.Fatalf("get --scope web after its removal: %+v", r)
	}
	// Its watcher was disconnected; it tries again, as after a daemon
	// restart, and finds nothing.
	if r := ctl(t, bin, dir, "scope", "list", "--json"); strings.Contains(r.out, `"web"`) {
		t.Fatalf("web listed after its removal: %s", r.out)
	}
}
