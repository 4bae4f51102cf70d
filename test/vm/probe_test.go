package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The test bed gives criu CRIU_FAULT=130 only where hack/hwbp-probe.c says
// hardware breakpoints never fire. A probe that could only say "never"
// would be a blanket setting in disguise, so it runs here where they do
// fire: QEMU's TCG emulates the debug registers. Its bound is checked in
// the same guest: a child that never traps is killed within a second.
func TestBreakpointProbe(t *testing.T) {
	if _, err := bedDir(); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	probe := filepath.Join(work, "hwbp-probe")
	// Static: the guest is a busybox initramfs, with no C library.
	cc := exec.Command("cc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-static",
		"-o", probe, "../../hack/hwbp-probe.c")
	if out, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	// On this machine, whatever it says, it says it in the documented form.
	host, _ := exec.Command(probe).Output()
	t.Logf("on this machine: %s", strings.TrimSpace(string(host)))
	if !regexp.MustCompile(`^(fire|never: .+|error: .+)\n$`).Match(host) {
		t.Errorf("the probe's verdict here %q is none of fire, never: WHY, error: WHY", host)
	}

	initrd := filepath.Join(work, "initrd.gz")
	mk := exec.Command("bash", vmsh, "initramfs", initrd,
		"--add", probe+":/bin/hwbp-probe", "--init", "testdata/probe.sh", "--no-kmsg")
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("initramfs: %v\n%s", err, out)
	}
	serial := filepath.Join(work, "serial.log")
	qemu := dyingCommand("bash", vmsh, "boot", "--initrd", initrd, "--guid", "none", "--serial", serial)
	out, err := runFor(qemu, 3*time.Minute)
	log, _ := os.ReadFile(serial)
	if err != nil {
		t.Fatalf("the guest: %v\n%s\n--- serial console:\n%s", err, out, log)
	}
	for _, want := range []string{"\nfire\r?\nPROBE-RC 0\r?\n", "\nnever: no trap within 1 s: child killed\r?\nPROBE-SPIN-RC 1\r?\n"} {
		if !regexp.MustCompile(want).Match(log) {
			t.Errorf("the guest's console has no %q:\n%s", want, log)
		}
	}
}

// runFor runs cmd to its end, killing it after timeout.
func runFor(cmd *exec.Cmd, timeout time.Duration) ([]byte, error) {
	timer := time.AfterFunc(timeout, func() { cmd.Process.Kill() })
	defer timer.Stop()
	return cmd.CombinedOutput()
}
