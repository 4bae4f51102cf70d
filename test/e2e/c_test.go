package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/unixtest"
)

// TestCClient builds a C watcher on plugin/criu/genid.h, the C client the
// CRIU plugin uses too, and runs it against the real daemon.
func TestCClient(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	exe := buildC(t, dir, "cwatch")
	cmd := exec.Command(exe, filepath.Join(dir, "genid.sock"), "2")
	// As nobody: watching is for everyone, bumping is not.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Stderr = os.Stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	next := func() string {
		if !sc.Scan() {
			t.Fatalf("cwatch stopped: %v", sc.Err())
		}
		return sc.Text()
	}
	if l := next(); l != "ready 0" {
		t.Fatalf("cwatch: %q", l)
	}
	for _, want := range []string{"1", "2"} {
		mustCtl(t, bin, dir, "bump")
		if l := next(); l != "event "+want {
			t.Fatalf("cwatch: %q, want event %s", l, want)
		}
		mustCtl(t, bin, dir, "wait-watchers", "--timeout", "10s")
	}
	if l := next(); !strings.Contains(l, "permission denied") {
		t.Fatalf("bump from C as nobody: %q", l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("cwatch: %v", err)
	}
}

// buildC compiles testdata/NAME.c against genid.h into dir.
func buildC(t *testing.T, dir, name string) string {
	t.Helper()
	exe := filepath.Join(dir, name)
	cc := exec.Command("cc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I../../plugin/criu",
		"-o", exe, "testdata/"+name+".c")
	if out, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	return exe
}

// TestCConnect: genid.h's connect waits out the moment between the daemon's
// bind and its listen, and still refuses a socket nobody listens on.
func TestCConnect(t *testing.T) {
	dir := t.TempDir()
	exe := buildC(t, dir, "cconnect")

	starting := filepath.Join(dir, "starting.sock")
	fd := unixtest.Bound(t, starting)
	cmd := exec.Command(exe, starting)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if err := syscall.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil || strings.TrimSpace(out.String()) != "connected" {
		t.Fatalf("connect while the socket starts listening: %v: %s", err, out.String())
	}

	stale := filepath.Join(dir, "stale.sock")
	unixtest.Bound(t, stale)
	start := time.Now()
	b, err := exec.Command(exe, stale).CombinedOutput()
	if err == nil || !strings.Contains(string(b), "refused") {
		t.Fatalf("connect to a socket nobody listens on: %v: %s", err, b)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("refused after %v, before genid.h's retry time", took)
	}
}

// TestCTimeout: a connection opened with genid_open_timeout gives up on a
// stopped daemon with ETIMEDOUT; one opened with genid_open (a watcher's)
// waits for it as long as it takes.
func TestCTimeout(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	exe := buildC(t, dir, "ctimeout")
	sock := filepath.Join(dir, "genid.sock")

	d.cmd.Process.Signal(syscall.SIGSTOP)
	defer d.cmd.Process.Signal(syscall.SIGCONT)
	waitStopped(t, d.cmd.Process.Pid)
	start := time.Now()
	b, err := exec.Command(exe, sock, "300").CombinedOutput()
	took := time.Since(start)
	if err == nil || !strings.EqualFold(strings.TrimSpace(string(b)), "get: "+syscall.ETIMEDOUT.Error()) {
		t.Fatalf("timed get from a stopped daemon: %v: %s", err, b)
	}
	if took < 300*time.Millisecond || took > 5*time.Second {
		t.Fatalf("timed out after %v, want about 300ms", took)
	}

	var out strings.Builder
	cmd := exec.Command(exe, sock, "0")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("untimed get returned from a stopped daemon: %v: %s", err, out.String())
	case <-time.After(time.Second):
	}
	d.cmd.Process.Signal(syscall.SIGCONT)
	select {
	case err := <-done:
		if err != nil || strings.TrimSpace(out.String()) != "get 0" {
			t.Fatalf("untimed get once the daemon runs again: %v: %s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("untimed get still waiting after the daemon woke up")
	}
}

// waitStopped waits until every thread of process pid is stopped (a
// SIGSTOP is delivered asynchronously: a loaded machine may let the
// process run on for a while).
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "stat"))
		stopped := len(tasks) > 0
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			// The state follows the command's closing parenthesis.
			if i := strings.LastIndexByte(string(b), ')'); err != nil || i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
				stopped = false
			}
		}
		if stopped {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d not stopped 10 s after SIGSTOP", pid)
		}
	}
}
