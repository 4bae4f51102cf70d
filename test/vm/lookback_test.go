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

	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/testbed"
)

// A VM saved while no daemon runs, and restored as a clone (a new VM
// generation ID): the daemon started after the restore looks back at the
// kernel log from the mark its predecessor left, and bumps every scope
// once; restored as the same VM generation, it bumps nothing. On Debian's
// kernel of the host's release and the host's QEMU.
func TestLookbackVMGenID(t *testing.T) {
	l := newLookback(t, bedDefault)
	orig := l.original()
	if !strings.Contains(orig, `GENID-UP backends="backends":["vmgenid"]`) {
		t.Fatalf("the guest daemon did not enable the vmgenid backend:\n%s", orig)
	}
	l.restore("clone", "auto").checkBumped(t)
	l.restore("same", guid).checkNotBumped(t)
}

// The same on trixie-backports' QEMU and Linux (7.x: vmgenid a platform
// driver, VMClock with its vm_generation_counter, notifications and
// poll()), with QEMU's vmclock device beside vmgenid. What QEMU's vmclock
// device does is checked too: it announces neither a vm_generation_counter
// nor notifications (flags 0), and on a restore from a migration file it
// moves disruption_marker (by one) and nothing else, so the vmclock backend
// stays off (auto) and, named, fails at the daemon's start, saying why.
func TestLookbackBackports(t *testing.T) {
	l := newLookback(t, bedBackports)
	orig := l.original()
	if !strings.Contains(orig, `GENID-UP backends="backends":["vmgenid"]`) {
		t.Fatalf("the guest daemon did not enable the vmgenid backend alone:\n%s", orig)
	}
	if !regexp.MustCompile(`GENID-LOG .*backend off.* backend=vmclock why=.*flag bit 8 clear`).MatchString(orig) {
		t.Fatalf("the vmclock backend is not off for want of the counter:\n%s", orig)
	}
	if named := regexp.MustCompile(`GENID-NAMED exit=\d+ (.*)`).FindStringSubmatch(orig); named == nil ||
		!regexp.MustCompile(`msg="backend failed; going on without it" backend=vmclock err=.*flag bit 8 clear`).MatchString(named[1]) {
		t.Fatalf("the vmclock backend, named on QEMU's device, did not fail at the daemon's start saying why: %q", named)
	}
	before := vmclockFields(t, orig)
	clone := l.restore("clone", "auto")
	clone.checkBumped(t)
	after := vmclockFields(t, clone.log())
	t.Logf("QEMU's vmclock before the save: %v; after the restore: %v", before, after)
	if after["disruption"] != before["disruption"]+1 || after["flags"] != before["flags"] ||
		after["counter"] != before["counter"] || after["seq"] == before["seq"] || after["seq"]%2 != 0 {
		t.Fatalf("QEMU's vmclock across a restore: before %v, after %v; want disruption_marker +1, seq_count moved "+
			"and even, flags and counter as they were", before, after)
	}
	if before["flags"]&(1<<8) != 0 || before["flags"]&(1<<9) != 0 {
		t.Fatalf("QEMU's vmclock announces the counter or notifications now (flags %#x): test the vmclock backend on it", before["flags"])
	}
}

// lookback is one run of testdata/lookback.sh: the original VM and its
// snapshot, restored as often as asked.
type lookback struct {
	t        *testing.T
	bed      string
	work     string
	initrd   string
	snapshot string
}

func newLookback(t *testing.T, bed string) *lookback {
	if os.Geteuid() != 0 {
		t.Fatal("the VM tests run as root (`make e2e-vm`)")
	}
	genidctl, err := proctest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bedDirOf(bed); err != nil {
		t.Fatal(err)
	}
	work, err := os.MkdirTemp("/tmp", "genid-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	l := &lookback{t: t, bed: bed, work: work, initrd: filepath.Join(work, "initrd.gz"), snapshot: filepath.Join(work, "snapshot")}
	mk := exec.Command("bash", vmsh, "initramfs", l.initrd,
		"--add", genidctl+":/bin/genidctl", "--init", "testdata/lookback.sh")
	mk.Env = append(os.Environ(), "VM_BED="+bed)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("initramfs: %v\n%s", err, out)
	}
	return l
}

// original boots the VM, and saves it once its daemon has stopped; it
// returns its console.
func (l *lookback) original() string {
	l.t.Helper()
	orig := bootBed(l.t, l.bed, l.work, "orig", l.initrd, guid, "")
	orig.waitLine(`GENID-STOPPED gen=2\r?\n`)
	orig.save(l.snapshot)
	return orig.log()
}

// restore boots a VM from the snapshot with the given GUID, and returns it
// once its new daemon has sent heartbeats.
func (l *lookback) restore(name, g string) *vm {
	l.t.Helper()
	v := bootBed(l.t, l.bed, l.work, name, l.initrd, g, l.snapshot)
	v.resume()
	v.waitLine(`GENID-HB 8 `)
	v.qmp.do("quit", nil)
	v.cmd.Wait()
	return v
}

var lookbackHB = regexp.MustCompile(`GENID-HB (\d+) gen=(\d*) reason=(\S*) scope=(\d*)`)

// lookbackHBs returns the heartbeats as "gen reason scope".
func (v *vm) lookbackHBs() []string {
	var out []string
	for _, m := range lookbackHB.FindAllStringSubmatch(v.log(), -1) {
		out = append(out, m[2]+" "+m[3]+" "+m[4])
	}
	return out
}

// checkBumped: the daemon started after the restore bumped every scope
// once, for the VM fork logged while no daemon ran; a heartbeat taken
// before its look back was done may still show the generation before.
func (v *vm) checkBumped(t *testing.T) {
	t.Helper()
	hbs := v.lookbackHBs()
	if !strings.Contains(v.log(), "crng reseeded due to virtual machine fork") {
		t.Fatalf("%s: the kernel did not log the VM fork", v.name)
	}
	bumped := 0
	for i, hb := range hbs {
		switch {
		case hb == "3 vmgenid 11":
			bumped++
		case hb == "2  10" && bumped == 0 && i < 2: // a new daemon tells no last bump
		default:
			t.Fatalf("%s: heartbeats %q: want the generation 2 at most twice, then 3 by vmgenid (the scope 11)", v.name, hbs)
		}
	}
	if bumped < 6 {
		t.Fatalf("%s: heartbeats %q: want at least 6 at generation 3", v.name, hbs)
	}
}

// checkNotBumped: the same VM generation: nothing to bump (and a new
// daemon tells no last bump).
func (v *vm) checkNotBumped(t *testing.T) {
	t.Helper()
	for _, hb := range v.lookbackHBs() {
		if hb != "2  10" {
			t.Fatalf("%s: heartbeats %q: want the generation 2 throughout", v.name, v.lookbackHBs())
		}
	}
	if strings.Contains(v.log(), "crng reseeded due to virtual machine fork") {
		t.Fatalf("%s: the kernel logged a VM fork for the same GUID", v.name)
	}
}

// waitLine waits until the console matches re.
func (v *vm) waitLine(re string) {
	v.t.Helper()
	r := regexp.MustCompile(re)
	deadline := time.Now().Add(3 * time.Minute)
	for !r.MatchString(v.log()) {
		if time.Now().After(deadline) {
			v.t.Fatalf("%s: no %q on the console within 3 minutes", v.name, re)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var vmclockLine = regexp.MustCompile(`GENID-VMCLOCK seq=(\d+) disruption=(\d+) flags=(\d+) counter=(\d+)`)

// vmclockFields returns the fields of the last GENID-VMCLOCK line.
func vmclockFields(t *testing.T, log string) map[string]uint64 {
	t.Helper()
	all := vmclockLine.FindAllStringSubmatch(log, -1)
	if len(all) == 0 {
		t.Fatalf("no GENID-VMCLOCK line: the guest has no /dev/vmclock0:\n%s", log)
	}
	m := all[len(all)-1]
	out := map[string]uint64{}
	for i, k := range []string{"seq", "disruption", "flags", "counter"} {
		n, err := strconv.ParseUint(m[i+1], 10, 64)
		if err != nil {
			t.Fatal(fmt.Errorf("%s: %w", k, err))
		}
		out[k] = n
	}
	return out
}

// The backports bed is what trixie-backports had when it was built (not
// pinned): print it, and check what the tests rely on: Linux 7.0+ (VMClock
// poll()) with the VMClock driver and vmgenid, and a QEMU of its own.
func TestBackportsManifest(t *testing.T) {
	dir, err := bedDirOf(bedBackports)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := testbed.ReadFacts(filepath.Join(dir, "meta.env"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("VM test bed %s: kernel %s (%s %s), CONFIG_VMGENID=%s, CONFIG_PTP_1588_CLOCK_VMCLOCK=%s, QEMU %s, built %s",
		dir, meta["KVER"], meta["KPKG"], meta["KDEBVER"], meta["CONFIG_VMGENID"], meta["CONFIG_PTP_1588_CLOCK_VMCLOCK"],
		meta["QEMUDEBVER"], meta["BUILT"])
	for k, ok := range map[string]bool{
		"BED":                           meta["BED"] == bedBackports,
		"KVER":                          kernelAtLeast(meta["KVER"], 7, 0),
		"CONFIG_VMGENID":                meta["CONFIG_VMGENID"] == "y" || meta["CONFIG_VMGENID"] == "m",
		"CONFIG_PTP_1588_CLOCK_VMCLOCK": meta["CONFIG_PTP_1588_CLOCK_VMCLOCK"] == "y" || meta["CONFIG_PTP_1588_CLOCK_VMCLOCK"] == "m",
		"QEMUDEBVER":                    meta["QEMUDEBVER"] != "",
		"ROOTFS":                        meta["ROOTFS"] != "",
	} {
		if !ok {
			t.Errorf("meta.env: %s=%q is not what the backports bed needs", k, meta[k])
		}
	}
}
