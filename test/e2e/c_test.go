package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestCClient builds a C watcher on plugin/criu/genid.h, the C client the
// CRIU plugin uses too, and runs it against the real daemon.
func TestCClient(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	exe := filepath.Join(dir, "cwatch") // a dir nobody may enter
	cc := exec.Command("cc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-I../../plugin/criu",
		"-o", exe, "testdata/cwatch.c")
	if out, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
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
