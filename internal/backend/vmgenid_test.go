package backend

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The line as this machine's kernel logged it at boot, as /dev/kmsg gives it.
const vmforkRecord = "6,389,1271434,-;random: crng reseeded due to virtual machine fork\n"

func TestIsVMForkRecord(t *testing.T) {
	for rec, want := range map[string]bool{
		vmforkRecord: true,
		"5,12,100,-,caller=T1;random: crng reseeded due to virtual machine fork\n":             true,
		"6,390,1271500,c;random: crng reseeded due to virtual machine fork\n SUBSYSTEM=acpi\n": true,
		"6,1,100,-;random: crng init done\n":                                                   false,
		"6,2,100,-;something else\n crng reseeded due to virtual machine fork\n":               false, // only in metadata
		"14,3,100,-;random: crng reseeded due to virtual machine fork\n":                       false, // LOG_USER: written from user space
		"12,4,100,-;crng reseeded due to virtual machine fork\n":                               false,
		"x,5,100,-;random: crng reseeded due to virtual machine fork\n":                        false,
		"random: crng reseeded due to virtual machine fork\n":                                  false, // no header
		// Kernel lines that quote what an unprivileged user gave: a mount
		// option in a user namespace logs this one at LOG_ERR.
		"3,6,100,-;tmpfs: Unknown parameter 'crng reseeded due to virtual machine fork'\n":         false,
		"3,7,100,-;tmpfs: Unknown parameter 'random: crng reseeded due to virtual machine fork'\n": false,
		"5,8,100,-;random: crng reseeded due to virtual machine fork, twice\n":                     false,
		"": false,
	} {
		if got := isVMForkRecord([]byte(rec)); got != want {
			t.Errorf("isVMForkRecord(%q) = %v, want %v", rec, got, want)
		}
	}
}

// fakeKmsg returns one record per Read, as /dev/kmsg does, and an error
// where the script says so.
type fakeKmsg struct {
	script []any // string records or errors
}

func (f *fakeKmsg) Read(p []byte) (int, error) {
	if len(f.script) == 0 {
		return 0, io.EOF
	}
	next := f.script[0]
	f.script = f.script[1:]
	switch v := next.(type) {
	case error:
		return 0, v
	case string:
		return copy(p, v), nil
	}
	panic("bad script")
}

func TestReadKmsg(t *testing.T) {
	epipe := &os.PathError{Op: "read", Path: "/dev/kmsg", Err: syscall.EPIPE}
	r := &fakeKmsg{script: []any{
		"6,400,2000000,-;virtio_net virtio1 eth0: link up\n",
		vmforkRecord,
		epipe, // records overwritten: go on
		"6,900,3000000,-;random: crng init done\n",
		syscall.EAGAIN,
		vmforkRecord,
		"14,901,3000001,-;random: crng reseeded due to virtual machine fork\n",
	}}
	var matched, records, lost int
	err := readKmsg(r, func(rec []byte) {
		records++
		if isVMForkRecord(rec) {
			matched++
		}
	}, func(err error) {
		if !errors.Is(err, syscall.EPIPE) {
			t.Errorf("lost(%v), want EPIPE", err)
		}
		lost++
	})
	if err != io.EOF {
		t.Fatalf("readKmsg = %v, want the reader's EOF", err)
	}
	if records != 5 || matched != 2 || lost != 1 {
		t.Fatalf("records %d, matched %d, lost %d; want 5, 2, 1", records, matched, lost)
	}
}

func TestReadKmsgError(t *testing.T) {
	want := &os.PathError{Op: "read", Path: "/dev/kmsg", Err: syscall.EIO}
	err := readKmsg(&fakeKmsg{script: []any{want}}, func([]byte) {}, func(error) {})
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("readKmsg = %v, want EIO", err)
	}
}

func TestParseUevent(t *testing.T) {
	// What a 6.8 kernel sends (the device was an ACPI one then).
	msg := []byte("change@/devices/LNXSYSTM:00/LNXSYBUS:00/QEMUVGID:00\x00ACTION=change\x00" +
		"DEVPATH=/devices/LNXSYSTM:00/LNXSYBUS:00/QEMUVGID:00\x00SUBSYSTEM=acpi\x00" +
		"NEW_VMGENID=1\x00MODALIAS=acpi:QEMUVGID:\x00SEQNUM=2235\x00")
	u, err := parseUevent(msg)
	if err != nil {
		t.Fatal(err)
	}
	if u.Action != "change" || u.DevPath != "/devices/LNXSYSTM:00/LNXSYBUS:00/QEMUVGID:00" ||
		u.Env["SUBSYSTEM"] != "acpi" || u.Env["SEQNUM"] != "2235" || u.Env["MODALIAS"] != "acpi:QEMUVGID:" {
		t.Fatalf("parsed %+v", u)
	}
	if !u.isVMGenIDChange() {
		t.Fatal("isVMGenIDChange() = false for the 6.8 notification")
	}

	for name, m := range map[string]string{
		"other change": "change@/devices/platform/VMGENCTR:00\x00ACTION=change\x00SEQNUM=5\x00",
		"add":          "add@/devices/platform/VMGENCTR:00\x00ACTION=add\x00NEW_VMGENID=1\x00",
		// echo "change $uuid NEW_VMGENID=1" > .../uevent from user space.
		"synthetic": "change@/devices/platform/VMGENCTR:00\x00ACTION=change\x00SYNTH_UUID=0\x00SYNTH_ARG_NEW_VMGENID=1\x00",
		"zero":      "change@/devices/platform/VMGENCTR:00\x00ACTION=change\x00NEW_VMGENID=0\x00",
	} {
		u, err := parseUevent([]byte(m))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if u.isVMGenIDChange() {
			t.Errorf("%s: isVMGenIDChange() = true", name)
		}
	}

	for _, m := range []string{
		"",
		"\x00",
		"libudev\x00\xfe\xed\xca\xfe",
		"change\x00ACTION=change\x00NEW_VMGENID=1\x00",
		"@/devices/x\x00NEW_VMGENID=1\x00",
		"change@/devices/x\x00NEW_VMGENID\x00",
	} {
		if _, err := parseUevent([]byte(m)); err == nil {
			t.Errorf("parseUevent(%q) succeeded", m)
		}
	}
}

// events runs a sequence of "k"/"u" events spaced by the given gaps through
// a fresh dedup and returns how many bumped.
func dedupRun(window time.Duration, seq string, gap time.Duration) int {
	d := dedup{window: window}
	now := time.Unix(1000, 0)
	n := 0
	for _, c := range strings.Fields(seq) {
		if strings.HasPrefix(c, "+") { // "+3s": time passes
			dt, err := time.ParseDuration(c[1:])
			if err != nil {
				panic(err)
			}
			now = now.Add(dt)
			continue
		}
		src := srcKmsg
		if c == "u" {
			src = srcUevent
		}
		if d.event(src, now) {
			n++
		}
		now = now.Add(gap)
	}
	return n
}

func TestDedup(t *testing.T) {
	w := 2 * time.Second
	for _, tc := range []struct {
		seq  string
		want int
	}{
		{"k", 1},                     // pre-6.8 kernel: the log line alone
		{"u", 1},                     // 6.8 with the RNG not ready: no log line
		{"k u", 1},                   // 6.8: both, one change
		{"u k", 1},                   // delivered in the other order
		{"k u k u", 2},               // two quick changes stay two
		{"k k u u", 2},               // ... however interleaved
		{"u u k k", 2},               //
		{"k k k", 3},                 // log lines alone are never merged
		{"u u", 2},                   // nor uevents
		{"k +3s u", 2},               // partner too late: an extra bump, harmless
		{"k +1s u", 1},               // within the window
		{"k +3s k u", 2},             // an orphan expires and does not swallow a later change
		{"k u +10s k u +10s k u", 3}, // three restores
		{"u +1s k u", 2},             // a change whose log line was lost: still two
		{"k k k u u u", 3},           //
		{"k u u", 2},                 // an unpaired extra uevent is a change
	} {
		if got := dedupRun(w, tc.seq, time.Millisecond); got != tc.want {
			t.Errorf("%q: %d bumps, want %d", tc.seq, got, tc.want)
		}
	}
}

func TestDedupBounded(t *testing.T) {
	d := dedup{window: time.Hour}
	now := time.Now()
	for range 10 * maxPending {
		d.event(srcKmsg, now)
	}
	if len(d.pending[srcKmsg]) > maxPending {
		t.Fatalf("%d pending, want at most %d", len(d.pending[srcKmsg]), maxPending)
	}
}

// The event loop: one change reported by both sources bumps once; a source
// failure ends Run with its error.
func TestVMGenIDLoop(t *testing.T) {
	v := newVMGenID(Options{Logger: quiet()})
	events := make(chan source)
	fatal := make(chan error, 1)
	var b bumps
	done := make(chan error, 1)
	go func() { done <- v.loop(context.Background(), events, fatal, b.bump) }()
	events <- srcKmsg
	events <- srcUevent
	events <- srcUevent
	events <- srcKmsg
	// Records lost unread bump on their own and pair with nothing: the
	// uevent after them still pairs with the next log line.
	events <- srcLost
	events <- srcUevent
	events <- srcKmsg
	boom := errors.New("boom")
	fatal <- boom
	if err := <-done; err != boom {
		t.Fatalf("loop = %v, want %v", err, boom)
	}
	if b.count() != 4 || b.reasons[0] != "vmgenid" {
		t.Fatalf("bumps %q, want four \"vmgenid\"", b.reasons)
	}
}

// fakeDriverDir makes a sysfs tree under a temporary directory with the
// vmgenid driver's directory drv (one of vmgenidDriverDirs) as the kernel
// lays it out, without a device bound; it returns the tree and that
// directory. bindDevice then binds one.
func fakeDriverDir(t *testing.T, drv string) (sys, dir string) {
	t.Helper()
	sys = t.TempDir()
	dir = filepath.Join(sys, drv)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"bind", "unbind", "uevent"} {
		os.WriteFile(filepath.Join(dir, f), nil, 0o200)
	}
	os.Symlink("../../../../module/vmgenid", filepath.Join(dir, "module"))
	return sys, dir
}

func bindDevice(t *testing.T, dir string) {
	t.Helper()
	if err := os.Symlink("../../../../devices/platform/VMGENCTR:00", filepath.Join(dir, "VMGENCTR:00")); err != nil {
		t.Fatal(err)
	}
}

// Losses of kernel log records bump at most once per lostEvery, and a loss
// inside it still bumps once it has passed: a flood of the log costs
// watchers little, and no loss goes without a bump after it.
func TestVMGenIDLostRecordsLimited(t *testing.T) {
	v := newVMGenID(Options{Logger: quiet()})
	v.lostEvery = 500 * time.Millisecond
	events := make(chan source)
	ctx, cancel := context.WithCancel(context.Background())
	var b bumps
	done := make(chan error, 1)
	go func() { done <- v.loop(ctx, events, nil, b.bump) }()
	start := time.Now()
	for range 50 {
		events <- srcLost
	}
	if n := b.count(); n != 1 && time.Since(start) < v.lostEvery {
		t.Fatalf("%d bumps from a burst of losses, want 1 at once", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.count() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * v.lostEvery)
	if n := b.count(); n != 2 {
		t.Fatalf("%d bumps after a burst of losses, want 2: one at once, one when lostEvery passed", n)
	}
	// Long after: a loss bumps at once again, and changes are never held back.
	events <- srcLost
	events <- srcKmsg
	cancel()
	<-done
	if n := b.count(); n != 4 {
		t.Fatalf("%d bumps, want 4", n)
	}
}

func TestDetectVMGenID(t *testing.T) {
	kmsg := filepath.Join(t.TempDir(), "kmsg")
	if err := os.WriteFile(kmsg, []byte(vmforkRecord), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, drv := range vmgenidDriverDirs {
		t.Run(drv, func(t *testing.T) {
			sys, dir := fakeDriverDir(t, drv)
			opts := Options{SysDir: sys, KmsgPath: kmsg, VMClockPath: filepath.Join(sys, "none"), Logger: quiet()}
			// The driver without a device (a kernel with CONFIG_VMGENID=y on bare metal).
			if err := detectVMGenID(opts); err == nil {
				t.Fatal("detected without a bound device")
			}
			bindDevice(t, dir)
			if err := detectVMGenID(opts); err != nil {
				t.Fatalf("detect: %v", err)
			}
			if bs := Detect(opts); len(bs) != 1 || bs[0].Name() != NameVMGenID {
				t.Fatalf("Detect = %v, want [vmgenid]", BackendNames(bs))
			}
			opts.KmsgPath = filepath.Join(sys, "no-kmsg")
			if err := detectVMGenID(opts); err == nil {
				t.Fatal("detected without a readable kernel log")
			}
		})
	}
}

// Run against a file standing for /dev/kmsg: what is in it before Run
// started (the boot log's vmfork line) never bumps.
func TestVMGenIDRunSkipsOldRecords(t *testing.T) {
	kmsg := filepath.Join(t.TempDir(), "kmsg")
	if err := os.WriteFile(kmsg, []byte(vmforkRecord), 0o644); err != nil {
		t.Fatal(err)
	}
	sys, dir := fakeDriverDir(t, vmgenidDriverDirs[0])
	bindDevice(t, dir)
	v := newVMGenID(Options{SysDir: sys, KmsgPath: kmsg, NoUevent: true, Logger: quiet()})
	var b bumps
	err := v.run(context.Background(), b.bump)
	// A regular file ends where /dev/kmsg would block: Run reports it.
	if !errors.Is(err, io.EOF) {
		t.Fatalf("run = %v, want EOF of the file", err)
	}
	if b.count() != 0 {
		t.Fatalf("%d bumps from a record logged before start", b.count())
	}
}

// Named in --backends on a machine without the device, vmgenid fails at
// once instead of watching a kernel log that will never say anything.
func TestVMGenIDRunNeedsDevice(t *testing.T) {
	kmsg := filepath.Join(t.TempDir(), "kmsg")
	if err := os.WriteFile(kmsg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sys, _ := fakeDriverDir(t, vmgenidDriverDirs[0])
	v := newVMGenID(Options{SysDir: sys, KmsgPath: kmsg, NoUevent: true, Logger: quiet()})
	var b bumps
	err := v.run(context.Background(), b.bump)
	if err == nil || !strings.Contains(err.Error(), "no device bound") {
		t.Fatalf("run = %v, want no device bound", err)
	}
}
