package e2e

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestBumpNotLentBySetuidExec: a process that connected unprivileged and
// then exec'd a set-user-ID root program has every capability, but its
// connection stays unprivileged: a child that kept the socket cannot bump
// through it.
func TestBumpNotLentBySetuidExec(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	exe := buildC(t, dir, "suidbump")

	// A set-user-ID root copy of sleep, standing for passwd or su waiting
	// at their prompt.
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	suid := filepath.Join(dir, "suid-sleep")
	if err := os.WriteFile(suid, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(suid, os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(exe, filepath.Join(dir, "genid.sock"), suid)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		t.Fatalf("suidbump printed nothing: %v", sc.Err())
	}
	// The exec'd parent keeps the pipe open: read only the one line.
	go io.Copy(io.Discard, stdout)
	if l := sc.Text(); l != "status 4" {
		t.Fatalf("suidbump: %q, want status 4 (permission)", l)
	}
	if g := mustCtl(t, bin, dir, "get"); g != "0" {
		t.Fatalf("the generation moved to %s", g)
	}
}
