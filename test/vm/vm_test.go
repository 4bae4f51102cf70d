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
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/testbed"
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
	return bootBed(t, bedDefault, work, name, initrd, guid, incoming)
}

// The beds of hack/vm.sh (VM_BED).
const (
	bedDefault   = "default"   // the host's QEMU and its Debian release's kernel
	bedBackports = "backports" // trixie-backports' QEMU and kernel, with a vmclock device
)

// bootBed boots a VM of bed; the backports bed's has a vmclock device.
func bootBed(t *testing.T, bed, work, name, initrd, guid, incoming string) *vm {
	t.Helper()
	v := &vm{t: t, name: name, serial: filepath.Join(work, name+".log")}
	sock := filepath.Join(work, name+".qmp")
	args := []string{vmsh, "boot", "--initrd", initrd, "--guid", guid, "--qmp", sock, "--serial", v.serial}
	if incoming != "" {
		args = append(args, "--incoming", incoming)
	}
	if bed == bedBackports {
		args = append(args, "--vmclock")
	}
	v.cmd = dyingCommand("bash", args...)
	v.cmd.Env = append(os.Environ(), "VM_BED="+bed)
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

// dyingCommand is exec.Command for a child that must not outlive the test:
// when -timeout panics the test binary, cleanups do not run, and a QEMU
// left behind would spin on a CI machine's CPUs until the job is killed.
func dyingCommand(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// heartbeat is one "GENID-HB" line of the guest: the daemon's generation
// and last bump reason (one status), the page, the watcher's output.
type heartbeat struct {
	n      int
	gen    string
	page   string
	watch  string
	reason string
	scope  string // the generation of a container's scope, c1 (started at 10)
	swatch string // what its watcher printed
	pwatch string // what watch --page printed (a thread asleep on the page)
}

var hbLine = regexp.MustCompile(`GENID-HB (\d+) gen=(\d+) page=(\d+) watch=([0-9,]*) reason=(\S*) scope=(\d+) swatch=([0-9,]*) pwatch=([0-9,]*)`)

func (v *vm) heartbeats() []heartbeat {
	b, _ := os.ReadFile(v.serial)
	var hbs []heartbeat
	for _, m := range hbLine.FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.Atoi(m[1])
		hbs = append(hbs, heartbeat{n, m[2], m[3], m[4], m[5], m[6], m[7], m[8]})
	}
	return hbs
}

// The phases of a heartbeat around a clone's one vmgenid bump.
const (
	hbBefore  = iota // generation 0 everywhere
	hbLagging        // the daemon is at 1 by vmgenid; the page or the watcher not yet
	hbBumped         // generation 1 everywhere
	hbBad
)

// maxLagging is how many heartbeats may catch the page or the watcher behind
// the daemon: the guest reads them just before the status, so a bump landing
// in between shows in one heartbeat; a second allows for a slow watcher.
const maxLagging = 2

func (hb heartbeat) phase() int {
	// The scope is bumped with the host scope, by the same vmgenid event,
	// just after it: it may lag behind the daemon's host generation too.
	scopeBefore := hb.scope == "10" && hb.swatch == ""
	scopeBumped := hb.scope == "11" && hb.swatch == "11,"
	scopeLagging := (hb.scope == "10" || hb.scope == "11") && (hb.swatch == "" || hb.swatch == "11,")
	switch {
	case hb.gen == "0" && hb.page == "0" && hb.watch == "" && hb.pwatch == "" && hb.reason == "" && scopeBefore:
		return hbBefore
	case hb.gen == "1" && hb.page == "1" && hb.watch == "1," && hb.pwatch == "1," && hb.reason == "vmgenid" && scopeBumped:
		return hbBumped
	case hb.gen == "1" && hb.reason == "vmgenid" && (hb.page == "0" || hb.page == "1") &&
		(hb.watch == "" || hb.watch == "1,") && (hb.pwatch == "" || hb.pwatch == "1,") && scopeLagging:
		return hbLagging
	}
	return hbBad
}

// checkOneBump checks a clone's heartbeats: generation 0, then exactly one
// bump by vmgenid that the page and the watcher follow within maxLagging
// heartbeats, then at least 5 heartbeats at generation 1 everywhere, and
// nothing ever going back.
func checkOneBump(hbs []heartbeat) error {
	phase, lagging, bumped := hbBefore, 0, 0
	for i, hb := range hbs {
		p := hb.phase()
		switch {
		case p == hbBad:
			return fmt.Errorf("heartbeat %+v: neither generation 0 nor one vmgenid bump", hb)
		case p < phase:
			return fmt.Errorf("heartbeat %+v after %+v: went back", hb, hbs[i-1])
		case p == hbLagging:
			lagging++
		case p == hbBumped:
			bumped++
		}
		phase = p
	}
	if lagging > maxLagging {
		return fmt.Errorf("%d heartbeats with the page or the watcher behind the daemon, want at most %d: %+v",
			lagging, maxLagging, hbs)
	}
	if bumped < 5 {
		return fmt.Errorf("%d heartbeats at generation 1 of %d: %+v", bumped, len(hbs), hbs)
	}
	return nil
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
	genidctl, err := proctest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bedDir(); err != nil {
		t.Fatal(err)
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
		if hb.phase() != hbBefore {
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
		if err := checkOneBump(clone.waitHeartbeats(last, 10)); err != nil {
			t.Fatalf("clone %d: %v", i, err)
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
		if hb.phase() != hbBefore {
			t.Fatalf("restore with the same GUID bumped: %+v", hb)
		}
	}
	same.qmp.do("quit", nil)
}

// bedDir returns the VM test bed's cache dir, or an error if it is not built.
func bedDir() (string, error) { return bedDirOf(bedDefault) }

// bedDirOf returns bed's cache dir, or an error if it is not built.
func bedDirOf(bed string) (string, error) {
	cmd := exec.Command("bash", vmsh, "path")
	cmd.Env = append(os.Environ(), "VM_BED="+bed)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("the VM test bed %s is not built (`VM_BED=%s hack/vm.sh build`): %w", bed, bed, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// kernelAtLeast reports whether a kernel release ("6.1.0-56-amd64") is at
// least major.minor.
func kernelAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// The test bed's kernel is whatever Debian had when it was built (not
// pinned): print what it is, and check what the tests rely on: a vmgenid
// driver (CONFIG_VMGENID) that reseeds and logs the VM fork (Linux 5.18+).
func TestBedManifest(t *testing.T) {
	dir, err := bedDir()
	if err != nil {
		t.Fatal(err)
	}
	meta, err := testbed.ReadFacts(filepath.Join(dir, "meta.env"))
	if err != nil {
		t.Fatal(err)
	}
	qemu, _ := exec.Command(envOr("VM_QEMU", "qemu-system-x86_64"), "--version").Output()
	t.Logf("VM test bed %s: kernel %s (%s %s), CONFIG_VMGENID=%s, built %s; %s",
		dir, meta["KVER"], meta["KPKG"], meta["KDEBVER"], meta["CONFIG_VMGENID"], meta["BUILT"],
		strings.SplitN(string(qemu), "\n", 2)[0])
	for _, k := range []string{"KPKG", "KDEB", "KDEBVER", "KVER", "CONFIG_VMGENID", "BUILT"} {
		if meta[k] == "" {
			t.Errorf("meta.env has no %s", k)
		}
	}
	if c := meta["CONFIG_VMGENID"]; c != "y" && c != "m" {
		t.Errorf("CONFIG_VMGENID=%q: the kernel has no vmgenid driver", c)
	}
	if !kernelAtLeast(meta["KVER"], 5, 18) {
		t.Errorf("kernel %q: the VM fork reseed and its log line need Linux 5.18+", meta["KVER"])
	}
}

func TestKernelAtLeast(t *testing.T) {
	for release, want := range map[string]bool{
		"6.1.0-56-amd64": true, "5.18.0-1-amd64": true, "5.17.3": false, "4.19.0-27-amd64": false, "": false, "x": false,
	} {
		if got := kernelAtLeast(release, 5, 18); got != want {
			t.Errorf("kernelAtLeast(%q, 5, 18) = %v", release, got)
		}
	}
}

// `vm.sh path` fails when the bed is not built, so the test can tell.
func TestPathUnbuilt(t *testing.T) {
	cmd := exec.Command("bash", vmsh, "path")
	cmd.Env = append(os.Environ(), "GENID_CACHE="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("vm.sh path succeeded with an empty cache: %s", out)
	}
}

// With stale package lists, linux-image-amd64 names a kernel the mirror has
// dropped: the build updates the lists, resolves the name again and gets the
// current kernel. apt-get and apt-cache are fakes that play such a mirror.
func TestBuildStaleLists(t *testing.T) {
	tmp := t.TempDir()
	const old, cur = "linux-image-6.1.0-98-amd64", "linux-image-6.1.0-99-amd64"
	deb := fakeKernelDeb(t, tmp, "6.1.0-99-amd64", "6.1.999-1")
	fake := filepath.Join(tmp, "bin")
	os.Mkdir(fake, 0o755)
	writeScript(t, filepath.Join(fake, "apt-cache"), `
[ "$1 $2" = "depends linux-image-amd64" ] || { echo "fake apt-cache: $*" >&2; exit 100; }
echo linux-image-amd64
if [ -e "$STATE/updated" ]; then echo "  Depends: `+cur+`"; else echo "  Depends: `+old+`"; fi
`)
	writeScript(t, filepath.Join(fake, "apt-get"), `
echo "$*" >>"$STATE/log"
case $1 in
update) : >"$STATE/updated" ;;
download)
	[ "$2" = `+cur+` ] || { echo "E: Failed to fetch $2: 404 Not Found" >&2; exit 100; }
	cp "$STATE/kernel.deb" "./$2_6.1.999-1_amd64.deb" ;;
*) echo "fake apt-get: $*" >&2; exit 100 ;;
esac
`)
	os.Rename(deb, filepath.Join(tmp, "kernel.deb"))
	cache := filepath.Join(tmp, "cache")
	cmd := exec.Command("bash", vmsh, "build")
	cmd.Env = append(os.Environ(), "GENID_CACHE="+cache, "STATE="+tmp, "PATH="+fake+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	calls, _ := os.ReadFile(filepath.Join(tmp, "log"))
	if err != nil {
		t.Fatalf("vm.sh build: %v\n%s\napt-get calls:\n%s", err, out, calls)
	}
	dir := strings.TrimSpace(string(out[strings.LastIndexByte(strings.TrimSpace(string(out)), '\n')+1:]))
	meta, err := testbed.ReadFacts(filepath.Join(dir, "meta.env"))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if meta["KPKG"] != cur || meta["KDEBVER"] != "6.1.999-1" || meta["KVER"] != "6.1.0-99-amd64" {
		t.Fatalf("built %v, want %s 6.1.999-1\napt-get calls:\n%s", meta, cur, calls)
	}
}

// fakeKernelDeb builds a .deb with what the build takes from a kernel
// package: /boot/vmlinuz-RELEASE and a config with the vmgenid driver.
func fakeKernelDeb(t *testing.T, tmp, release, version string) string {
	t.Helper()
	root := filepath.Join(tmp, "deb")
	for name, body := range map[string]string{
		"DEBIAN/control": "Package: linux-image-" + release + "\nVersion: " + version +
			"\nArchitecture: amd64\nMaintainer: test <test@example.org>\nDescription: fake kernel\n",
		"boot/vmlinuz-" + release: "not a kernel\n",
		"boot/config-" + release:  "CONFIG_VMGENID=y\n",
	} {
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deb := filepath.Join(tmp, "kernel-build.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-b", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	return deb
}

func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestCheckOneBump(t *testing.T) {
	before := heartbeat{gen: "0", page: "0", scope: "10"}
	lagging := heartbeat{gen: "1", page: "1", reason: "vmgenid", scope: "11"} // the watchers have not printed yet
	pageLag := heartbeat{gen: "1", page: "0", reason: "vmgenid", scope: "10"}
	bumped := heartbeat{gen: "1", page: "1", watch: "1,", reason: "vmgenid", scope: "11", swatch: "11,", pwatch: "1,"}
	asleep := bumped
	asleep.pwatch = "" // the page's sleeper not woken
	five := []heartbeat{bumped, bumped, bumped, bumped, bumped}
	cat := func(hbs ...[]heartbeat) []heartbeat {
		var all []heartbeat
		for _, h := range hbs {
			all = append(all, h...)
		}
		return all
	}
	for _, c := range []struct {
		name string
		hbs  []heartbeat
		ok   bool
	}{
		{"clean", cat([]heartbeat{before, before}, five), true},
		{"bumped from the start", five, true},
		{"caught mid-bump", cat([]heartbeat{before, lagging}, five), true},
		{"page and watcher behind", cat([]heartbeat{before, pageLag, lagging}, five), true},
		{"no bump", []heartbeat{before, before, before, before, before, before}, false},
		{"too few at 1", cat([]heartbeat{before}, five[:4]), false},
		{"watcher never follows", cat([]heartbeat{before}, []heartbeat{lagging, lagging, lagging}, five), false},
		{"went back", cat(five, []heartbeat{before}), false},
		{"watcher lost", cat(five, []heartbeat{lagging}), false},
		{"the page's sleeper never woken", cat([]heartbeat{before}, []heartbeat{asleep, asleep, asleep}, five), false},
		{"the page's sleeper woken late", cat([]heartbeat{before}, []heartbeat{asleep, asleep}, five), true},
		{"two bumps", cat(five, []heartbeat{{gen: "2", page: "2", watch: "1,2,", reason: "vmgenid", scope: "12", swatch: "11,12,", pwatch: "1,2,"}}), false},
		{"other reason", cat([]heartbeat{{gen: "1", page: "1", watch: "1,", reason: "manual", scope: "11", swatch: "11,", pwatch: "1,"}}, five), false},
		{"watcher ahead of the daemon", cat([]heartbeat{{gen: "0", page: "0", watch: "1,", pwatch: "1,", scope: "10"}}, five), false},
		{"generation without its reason", cat([]heartbeat{{gen: "1", page: "1", watch: "1,", scope: "11", swatch: "11,", pwatch: "1,"}}, five), false},
		{"the scope not bumped", cat([]heartbeat{before}, slices.Repeat([]heartbeat{{gen: "1", page: "1", watch: "1,", reason: "vmgenid", scope: "10", pwatch: "1,"}}, 6)), false},
		{"the scope's watcher never follows", cat([]heartbeat{before}, []heartbeat{
			{gen: "1", page: "1", watch: "1,", reason: "vmgenid", scope: "11", pwatch: "1,"}, {gen: "1", page: "1", watch: "1,", reason: "vmgenid", scope: "11", pwatch: "1,"},
			{gen: "1", page: "1", watch: "1,", reason: "vmgenid", scope: "11", pwatch: "1,"}}, five), false},
	} {
		if err := checkOneBump(c.hbs); (err == nil) != c.ok {
			t.Errorf("%s: checkOneBump = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

// A QEMU started by the test dies with it, even when the test binary dies
// by -timeout and no cleanup runs. The helper (this test, run again)
// starts a child as boot does and exits at once.
func TestDyingCommand(t *testing.T) {
	if os.Getenv("GENID_TEST_DYING") == "1" {
		cmd := dyingCommand("sleep", "60")
		if err := cmd.Start(); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println(cmd.Process.Pid)
		os.Exit(0)
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestDyingCommand$")
	helper.Env = append(os.Environ(), "GENID_TEST_DYING=1")
	out, err := helper.Output()
	pid, perr := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || perr != nil {
		t.Fatalf("helper: %v: %q", err, out)
	}
	for deadline := time.Now().Add(10 * time.Second); running(pid); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the child %d outlived the test binary that started it", pid)
		}
	}
}

// running reports whether pid is a process that has not exited (a zombie
// has).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}
