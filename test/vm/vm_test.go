// Package vm proves the vmgenid backend in a real VM snapshot/restore: Debian's
// kernel and the static genidctl boot under QEMU (TCG, -cpu max, a vmgenid
// device); the guest's daemon and a watcher run; QMP saves the VM to a file
// and new QEMUs restore it. The guest reports on its serial console. Needs
// root and the test bed of hack/vm.sh (`make e2e-vm` builds it).
package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	vmsh = "../../hack/vm.sh"
	// The original VM's GUID: a restore with it is the same VM generation.
	guid = "8e4bd4a5-3b5c-4f0b-9c59-2a1ac1e7f201"
)

// vm is one QEMU process and its serial log.
type vm struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	serial string
	qmp    *qmp
}

func boot(t *testing.T, work, name, initrd, guid, incoming string) *vm {
	t.Helper()
	v := &vm{t: t, name: name, serial: filepath.Join(work, name+".log")}
	sock := filepath.Join(work, name+".qmp")
	args := []string{vmsh, "boot", "--initrd", initrd, "--guid", guid, "--qmp", sock, "--serial", v.serial}
	if incoming != "" {
		args = append(args, "--incoming", incoming)
	}
	v.cmd = exec.Command("bash", args...)
	qlog, _ := os.Create(filepath.Join(work, name+".qemu.log"))
	v.cmd.Stdout, v.cmd.Stderr = qlog, qlog
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v.cmd.Process.Kill()
		v.cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(v.serial)
			q, _ := os.ReadFile(filepath.Join(work, name+".qemu.log"))
			t.Logf("--- serial console of %s:\n%s\n--- qemu output:\n%s", name, b, q)
		}
	})
	q, err := dialQMP(sock)
	if err != nil {
		t.Fatalf("%s: qmp: %v", name, err)
	}
	v.qmp = q
	return v
}

// heartbeat is one "GENID-HB" line of the guest.
type heartbeat struct {
	n      int
	gen    string
	watch  string
	reason string
}

var hbLine = regexp.MustCompile(`GENID-HB (\d+) gen=(\d+) watch=([0-9,]*) reason=(\S*)`)

func (v *vm) heartbeats() []heartbeat {
	b, _ := os.ReadFile(v.serial)
	var hbs []heartbeat
	for _, m := range hbLine.FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.Atoi(m[1])
		hbs = append(hbs, heartbeat{n, m[2], m[3], m[4]})
	}
	return hbs
}

// waitHeartbeats waits until the guest has sent count heartbeats numbered
// above after, and returns them.
func (v *vm) waitHeartbeats(after, count int) []heartbeat {
	v.t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for {
		var fresh []heartbeat
		for _, hb := range v.heartbeats() {
			if hb.n > after {
				fresh = append(fresh, hb)
			}
		}
		if len(fresh) >= count {
			return fresh
		}
		if time.Now().After(deadline) {
			v.t.Fatalf("%s: %d fresh heartbeats after #%d, want %d", v.name, len(fresh), after, count)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (v *vm) log() string {
	b, _ := os.ReadFile(v.serial)
	return string(b)
}

// save stops the VM and writes its state to file.
func (v *vm) save(file string) {
	v.t.Helper()
	for _, step := range []struct {
		cmd  string
		args any
	}{
		{"stop", nil},
		{"migrate-set-parameters", map[string]any{"max-bandwidth": int64(16) << 30}},
		{"migrate", map[string]any{"uri": "exec:cat > " + file}},
	} {
		if _, err := v.qmp.do(step.cmd, step.args); err != nil {
			v.t.Fatalf("%s: %v", v.name, err)
		}
	}
	if err := v.qmp.waitStatus("query-migrate", "completed"); err != nil {
		v.t.Fatalf("%s: %v", v.name, err)
	}
	v.qmp.do("quit", nil)
	v.cmd.Wait()
}

// resume lets a restored VM run once the incoming state is loaded.
func (v *vm) resume() {
	v.t.Helper()
	if err := v.qmp.waitStatus("query-status", "paused"); err != nil {
		v.t.Fatalf("%s: %v", v.name, err)
	}
	if _, err := v.qmp.do("cont", nil); err != nil {
		v.t.Fatalf("%s: %v", v.name, err)
	}
}

func TestVMGenID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the VM tests run as root (`make e2e-vm`)")
	}
	genidctl, err := filepath.Abs(envOr("GENIDCTL", "../../bin/genidctl"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(genidctl); err != nil {
		t.Fatalf("no genidctl: %v (run `make build`)", err)
	}
	if out, err := exec.Command("bash", vmsh, "path").CombinedOutput(); err != nil {
		t.Fatalf("the VM test bed is not built (`hack/vm.sh build`): %v: %s", err, out)
	}
	// Short paths: unix socket names are limited to 107 bytes.
	work, err := os.MkdirTemp("/tmp", "genid-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	initrd := filepath.Join(work, "initrd.gz")
	mk := exec.Command("bash", vmsh, "initramfs", initrd,
		"--add", genidctl+":/bin/genidctl", "--init", "testdata/guest.sh")
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("initramfs: %v\n%s", err, out)
	}

	// The original VM: daemon and watcher up, generation 0, no bump at boot
	// (the kernel log of the boot must not count).
	orig := boot(t, work, "orig", initrd, guid, "")
	hbs := orig.waitHeartbeats(0, 2)
	if !strings.Contains(orig.log(), `GENID-READY backends="backends":["vmgenid"]`) {
		t.Fatalf("the guest daemon did not enable the vmgenid backend")
	}
	for _, hb := range hbs {
		if hb.gen != "0" || hb.watch != "" {
			t.Fatalf("original VM before any restore: %+v", hb)
		}
	}
	snapshot := filepath.Join(work, "snapshot")
	orig.save(snapshot)
	last := orig.heartbeats()[len(orig.heartbeats())-1].n

	// 1 and 3: two clones of one snapshot, each with a new GUID: each bumps
	// exactly once, with reason vmgenid, and its watcher sees the new value.
	for i := 1; i <= 2; i++ {
		clone := boot(t, work, fmt.Sprintf("clone%d", i), initrd, "auto", snapshot)
		clone.resume()
		fresh := clone.waitHeartbeats(last, 10)
		var bumped []heartbeat
		for _, hb := range fresh {
			if hb.gen == "1" && hb.watch == "1," && hb.reason == "vmgenid" {
				bumped = append(bumped, hb)
			} else if len(bumped) > 0 || hb.gen != "0" {
				t.Fatalf("clone %d: heartbeat %+v after %+v: not exactly one vmgenid bump", i, hb, bumped)
			}
		}
		if len(bumped) < 5 {
			t.Fatalf("clone %d: %d heartbeats at generation 1 of %d: %+v", i, len(bumped), len(fresh), fresh)
		}
		if !strings.Contains(clone.log(), "crng reseeded due to virtual machine fork") {
			t.Fatalf("clone %d: the kernel did not log the VM fork", i)
		}
		clone.qmp.do("quit", nil)
	}

	// 2: the same GUID as the original is the same VM generation: no bump.
	same := boot(t, work, "same", initrd, guid, snapshot)
	same.resume()
	for _, hb := range same.waitHeartbeats(last, 10) {
		if hb.gen != "0" || hb.watch != "" || hb.reason != "" {
			t.Fatalf("restore with the same GUID bumped: %+v", hb)
		}
	}
	same.qmp.do("quit", nil)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
