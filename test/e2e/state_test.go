package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/servertest"
)

// Removing the run dir and restarting the daemon loses no generation: the
// host scope, and a container scope whose process still runs, resume from
// the state dir, not from 0.
func TestRunDirRemoved(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	state := t.TempDir()
	d := startDaemon(t, bin, dir, "--backends", "none", "--state-dir", state)
	owner := exec.Command("sleep", "1000")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	defer owner.Process.Kill()
	for range 3 {
		mustCtl(t, bin, dir, "bump", "--reason", "before")
	}
	mustCtl(t, bin, dir, "scope", "create", "--start", "40", "--pid", strconv.Itoa(owner.Process.Pid), "c1")
	mustCtl(t, bin, dir, "bump", "--scope", "c1")
	if err := d.kill(syscall.SIGTERM); err != nil {
		t.Fatalf("daemon: %v", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}

	startDaemon(t, bin, dir, "--backends", "none", "--state-dir", state)
	if g := mustCtl(t, bin, dir, "get"); g != "3" {
		t.Fatalf("host generation after the run dir was removed: %s, want 3", g)
	}
	if g := mustCtl(t, bin, dir, "get", "--scope", "c1"); g != "41" {
		t.Fatalf("c1's generation after the run dir was removed: %s, want 41", g)
	}
	if g := mustCtl(t, bin, dir, "bump"); g != "4" {
		t.Fatalf("bump after: %s, want 4", g)
	}
}

// The container scopes' floors share one file of slots: killed (-9) right
// after their last bumps, its run dir then removed, a daemon serves every
// one of them again at its generation, more scopes than one mapping of
// the file holds.
func TestRunDirRemovedAfterKill(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	state := t.TempDir()
	d := startDaemon(t, bin, dir, "--backends", "none", "--state-dir", state)
	const n = 70
	for i := range n {
		mustCtl(t, bin, dir, "scope", "create", "--start", strconv.Itoa(100+i), "c"+strconv.Itoa(i))
	}
	mustCtl(t, bin, dir, "scope", "remove", "c1") // its slot reused
	mustCtl(t, bin, dir, "scope", "create", "--start", "7", "d1")
	for _, s := range []string{"c0", "c69", "d1"} {
		mustCtl(t, bin, dir, "bump", "--scope", s)
	}
	d.kill(syscall.SIGKILL)
	if !d.dead() {
		t.Fatal("daemon still running after SIGKILL")
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}

	startDaemon(t, bin, dir, "--backends", "none", "--state-dir", state)
	want := map[string]string{"c0": "101", "c69": "170", "d1": "8"}
	for i := 2; i < n-1; i++ {
		want["c"+strconv.Itoa(i)] = strconv.Itoa(100 + i)
	}
	// The daemon's sockets accept while it serves the scopes again.
	servertest.Eventually(t, func() error {
		if r := ctl(t, bin, dir, "get", "--scope", "c"+strconv.Itoa(n-1)); r.code != 0 {
			return fmt.Errorf("c%d not served again: %s", n-1, r.err)
		}
		return nil
	})
	for s, g := range want {
		if got := mustCtl(t, bin, dir, "get", "--scope", s); got != g {
			t.Errorf("%s after a kill and the run dir removed: %s, want %s", s, got, g)
		}
	}
	if r := ctl(t, bin, dir, "get", "--scope", "c1"); r.code == 0 {
		t.Errorf("c1, removed, served again: %s", r.out)
	}
}

// A daemon given the boot's id by --boot-id in systemd's form (%b: no
// dashes), as the unit does, and one that reads it from /proc name one
// boot: the state the first kept outlives a removed run dir for the second.
func TestBootIDFlag(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	state := t.TempDir()
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	systemdForm := strings.ReplaceAll(strings.TrimSpace(string(b)), "-", "")
	d := startDaemon(t, bin, dir, "--backends", "none", "--state-dir", state, "--boot-id", systemdForm)
	mustCtl(t, bin, dir, "bump", "--min", "12")
	if err := d.kill(syscall.SIGTERM); err != nil {
		t.Fatalf("daemon: %v", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, bin, dir, "--backends", "none", "--state-dir", state)
	if g := mustCtl(t, bin, dir, "get"); g != "12" {
		t.Fatalf("generation after the run dir was removed, by a daemon that read the boot id itself: %s, want 12", g)
	}
	d.kill(syscall.SIGTERM)
	if r := ctl(t, bin, dir, "daemon", "--backends", "none", "--state-dir", state, "--boot-id", "not-a-boot"); r.code == 0 || !strings.Contains(r.err, "not a UUID") {
		t.Fatalf("daemon --boot-id not-a-boot: %+v, want a refusal", r)
	}
}

// The vmgenid backend finds a real VM generation ID device where the
// machine has one (this Firecracker microVM has: ACPI VMGENCTR:00, bound to
// the kernel's vmgenid driver, and the vmfork line of its own clone in its
// kernel log) and is off where it has none. The boot's first daemon bumps
// for nothing logged before it, and a daemon started after it crashed looks
// back from its mark: the kernel log's old vmfork line bumps neither.
func TestVMGenIDRealDevice(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	state := t.TempDir()
	dev := vmgenidDevices(t)
	t.Logf("VM generation ID devices (ACPI): %v", dev)
	d := startDaemon(t, bin, dir, "--backends", "auto", "--state-dir", state)
	backends := waitBackends(t, bin, dir)
	if active := slices.Contains(backends, "vmgenid"); active != (len(dev) > 0) {
		t.Fatalf("backends %v with the devices %v: vmgenid active %v", backends, dev, active)
	}
	if len(dev) == 0 {
		return
	}
	mark := waitMark(t, state, "vmgenid")
	t.Logf("vmgenid's mark after the first start: %s", mark)
	if g := mustCtl(t, bin, dir, "get"); g != "0" {
		t.Fatalf("the boot's first daemon bumped to %s for what the kernel logged before it", g)
	}
	d.kill(syscall.SIGKILL) // a crash: the mark it handed over once it had looked back is all there is
	startDaemon(t, bin, dir, "--backends", "auto", "--state-dir", state)
	waitBackends(t, bin, dir)
	time.Sleep(500 * time.Millisecond) // its look back is done well within
	if g := mustCtl(t, bin, dir, "get"); g != "0" {
		t.Fatalf("a restarted daemon bumped to %s for a vmfork line before its mark", g)
	}
}

// vmgenidDevices lists the ACPI devices that the kernel's vmgenid driver
// takes (HID VMGENCTR, or QEMU's QEMUVGID with CID VM_GEN_COUNTER).
func vmgenidDevices(t *testing.T) []string {
	var out []string
	for _, pat := range []string{"VMGENCTR:*", "QEMUVGID:*"} {
		m, err := filepath.Glob(filepath.Join("/sys/bus/acpi/devices", pat))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	return out
}

// waitBackends waits until the daemon's status names its backends (they
// start with it), and returns them.
func waitBackends(t *testing.T, bin, dir string) []string {
	t.Helper()
	var st struct {
		Backends []string `json:"backends"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := mustCtl(t, bin, dir, "status", "--json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		if len(st.Backends) > 0 || time.Now().After(deadline) {
			return st.Backends
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitMark waits until the state dir holds a mark of backend name, and
// returns it.
func waitMark(t *testing.T, state, name string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(state, "*", "marks.json"))
		for _, f := range files {
			var marks map[string]json.RawMessage
			b, _ := os.ReadFile(f)
			if json.Unmarshal(b, &marks) == nil && marks[name] != nil {
				return string(marks[name])
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mark of %s in %s", name, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
