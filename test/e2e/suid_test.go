package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// A privileged program run by an unprivileged user gets through the admin
// socket's permissions, but its requests are still refused: the daemon
// judges each on the real user that sent it (SCM_CREDENTIALS), which a
// set-user-ID program or one with file capabilities does not change. The
// same program run by root is served.
func TestAdminNotLentByPrivilegedPrograms(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	exe := buildC(t, dir, "suidbump")
	sock := filepath.Join(dir, "admin.sock")
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}

	copyExe := func(name string) string {
		b, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	suid := copyExe("suidbump-setuid")
	if err := os.Chmod(suid, os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	fcap := copyExe("suidbump-filecap")
	caps, err := cap.FromText("cap_dac_override,cap_sys_admin,cap_checkpoint_restore=ep")
	if err != nil {
		t.Fatal(err)
	}
	if err := caps.SetFile(fcap); err != nil {
		t.Fatalf("file capabilities on %s: %v", fcap, err)
	}

	run := func(path string, attr *syscall.SysProcAttr) string {
		t.Helper()
		cmd := exec.Command(path, sock)
		cmd.SysProcAttr = attr
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", filepath.Base(path), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, path := range []string{suid, fcap} {
		if out := run(path, nobody); !strings.HasPrefix(out, "status 4:") || !strings.Contains(out, "not an administrator") {
			t.Errorf("%s run by nobody: %q, want status 4 (permission)", filepath.Base(path), out)
		}
	}
	if g := mustCtl(t, bin, dir, "get"); g != "0" {
		t.Fatalf("the generation moved to %s", g)
	}
	// Plain, run by nobody: the socket's permissions stop it first.
	cmd := exec.Command(exe, sock)
	cmd.SysProcAttr = nobody
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "Permission denied") {
		t.Errorf("suidbump run by nobody: %v: %s, want connect refused", err, out)
	}
	// The same program run by root is served: the refusals are the
	// daemon's judgement, not a broken client.
	if out := run(exe, nil); !strings.HasPrefix(out, "status 0:") {
		t.Fatalf("suidbump run by root: %q", out)
	}
}
