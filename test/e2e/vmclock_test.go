package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestVMClockPage reads the daemon's VMClock pages with a C reader that
// follows the kernel's uapi header and AWS-LC's reader: the host's and a
// scope's, across bumps and a daemon's crash and restart, as nobody (AWS-LC
// runs in unprivileged processes). poll() on the file reports it readable
// at once: a plain file has no notifications.
func TestVMClockPage(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	exe := buildC(t, dir, "vmclockread")
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	page := filepath.Join(dir, "vmclock")

	once := func(path string, cred *syscall.Credential) string {
		t.Helper()
		cmd := exec.Command(exe, path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		r := runCmd(t, cmd, 30*time.Second)
		if r.code != 0 {
			t.Fatalf("vmclockread %s: exit %d: %s", path, r.code, r.err)
		}
		return r.out
	}
	header := func(counter int) string {
		// poll=0x1: POLLIN at once, as for any regular file.
		return fmt.Sprintf("magic=0x4b4c4356 size=4096 version=1 flags=0x100 counter=%d poll=0x1", counter)
	}
	if got := once(page, nobody); got != header(0) {
		t.Fatalf("a new daemon's page:\n got %s\nwant %s", got, header(0))
	}

	// A reader that maps the page once, as AWS-LC does, and checks it.
	cmd := exec.Command(exe, page, "watch")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	w := startLines(t, cmd)
	if l := w.next(t); l != "counter 0" {
		t.Fatalf("reader: %q", l)
	}
	mustCtl(t, bin, dir, "bump")
	if l := w.next(t); l != "counter 1" {
		t.Fatalf("reader after a bump: %q", l)
	}
	mustCtl(t, bin, dir, "bump", "--min", "7")
	if l := w.next(t); l != "counter 7" {
		t.Fatalf("reader after a bump to 7: %q", l)
	}

	// The same file, resumed: the reader's mapping goes on.
	d.kill(syscall.SIGKILL)
	startDaemon(t, bin, dir)
	if got := once(page, nobody); got != header(7) {
		t.Fatalf("after a crash and restart:\n got %s\nwant %s", got, header(7))
	}
	mustCtl(t, bin, dir, "bump")
	if l := w.next(t); l != "counter 8" {
		t.Fatalf("reader after a restart and a bump: %q", l)
	}
	if g := mustCtl(t, bin, dir, "get"); g != "8" {
		t.Fatalf("the generation page says %s", g)
	}

	// A scope's page is its own (reached by root only on the host: a
	// container has it mounted).
	mustCtl(t, bin, dir, "scope", "create", "--start", "3", "c1")
	mustCtl(t, bin, dir, "bump", "--scope", "c1")
	if got := once(filepath.Join(dir, "scopes", "c1", "vmclock"), nil); got != header(4) {
		t.Fatalf("scope c1's page:\n got %s\nwant %s", got, header(4))
	}
	select {
	case l := <-w.lines:
		t.Fatalf("the host's reader saw %q after a bump of c1", l)
	default:
	}
}

// TestSysgenidPage reads the generation page with a C reader that follows
// AWS-LC's snapsafe detection (map a u32 of /dev/sysgenid once, one load
// per check), as nobody, across bumps and a daemon's crash and restart.
func TestSysgenidPage(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	exe := buildC(t, dir, "sysgenidread")
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	page := filepath.Join(dir, "generation")

	cmd := exec.Command(exe, page, "watch")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	w := startLines(t, cmd)
	if l := w.next(t); l != "0" {
		t.Fatalf("reader: %q", l)
	}
	mustCtl(t, bin, dir, "bump")
	if l := w.next(t); l != "1" {
		t.Fatalf("reader after a bump: %q", l)
	}
	d.kill(syscall.SIGKILL)
	startDaemon(t, bin, dir)
	mustCtl(t, bin, dir, "bump", "--min", "9")
	if l := w.next(t); l != "9" {
		t.Fatalf("reader after a restart and a bump to 9: %q", l)
	}
	once := exec.Command(exe, page)
	once.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	if r := runCmd(t, once, 30*time.Second); r.code != 0 || r.out != "generation 9" {
		t.Fatalf("sysgenidread %s: %+v", page, r)
	}
}
