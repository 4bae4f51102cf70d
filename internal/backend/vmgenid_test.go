package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
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
		syscall.EAGAIN, // told once
		"14,901,3000001,-;random: crng reseeded due to virtual machine fork\n",
	}}
	var matched, records, lost, caughtUp int
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
	}, func() {
		if records != 3 {
			t.Errorf("caught up after %d records, want 3", records)
		}
		caughtUp++
	})
	if err != io.EOF {
		t.Fatalf("readKmsg = %v, want the reader's EOF", err)
	}
	if records != 5 || matched != 2 || lost != 1 || caughtUp != 1 {
		t.Fatalf("records %d, matched %d, lost %d, caught up %d; want 5, 2, 1, 1", records, matched, lost, caughtUp)
	}
}

func TestReadKmsgError(t *testing.T) {
	want := &os.PathError{Op: "read", Path: "/dev/kmsg", Err: syscall.EIO}
	err := readKmsg(&fakeKmsg{script: []any{want}}, func([]byte) {}, func(error) {}, func() {})
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("readKmsg = %v, want EIO", err)
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
// watchers little, and no loss goes without a bump after it. Meanwhile the
// Mark stays before the loss.
func TestVMGenIDLostRecordsLimited(t *testing.T) {
	v := newVMGenID(Options{Logger: quiet()})
	v.lostEvery = 500 * time.Millisecond
	items := make(chan item)
	ctx, cancel := context.WithCancel(context.Background())
	var b bumps
	done := make(chan error, 1)
	go func() { done <- v.loop(ctx, Lookback{First: true}, items, nil, b.bump) }()
	items <- rec(0, false)
	items <- item{kind: itemCaughtUp}
	start := time.Now()
	for range 50 {
		items <- item{kind: itemLost}
	}
	if n := b.count(); n != 1 && time.Since(start) < v.lostEvery {
		t.Fatalf("%d bumps from a burst of losses, want 1 at once", n)
	}
	items <- rec(7, false)
	items <- item{kind: itemCaughtUp} // a no-op once live: rec 7 was handled
	if m := string(v.Mark()); m != `{"kmsg_seq":0}` && b.count() == 1 {
		t.Fatalf("Mark %s while a loss's bump is due, want the record before it (0)", m)
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.count() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * v.lostEvery)
	if n := b.count(); n != 2 {
		t.Fatalf("%d bumps after a burst of losses, want 2: one at once, one when lostEvery passed", n)
	}
	items <- rec(8, false) // handed over after the due bump: the Mark is past the loss
	items <- item{kind: itemCaughtUp}
	if m := string(v.Mark()); m != `{"kmsg_seq":8}` {
		t.Fatalf("Mark %s after the loss's bump, want 8", m)
	}
	// Long after: a loss bumps at once again, and changes are never held back.
	items <- item{kind: itemLost}
	items <- rec(9, true)
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

// fakeDevKmsg plays /dev/kmsg for Run: its script, then EAGAIN once, then
// nothing until closed.
type fakeDevKmsg struct {
	fakeKmsg
	told   bool
	closed chan struct{}
}

func (f *fakeDevKmsg) Read(p []byte) (int, error) {
	if len(f.script) > 0 {
		return f.fakeKmsg.Read(p)
	}
	if !f.told {
		f.told = true
		return 0, errCaughtUp
	}
	<-f.closed
	return 0, os.ErrClosed
}

func (f *fakeDevKmsg) Close() error {
	close(f.closed)
	return nil
}

// runVMGenID runs the backend on a fake device bound and a fake kernel log
// holding script, until the bumps number want; it returns them and the
// backend's Mark once Run returned.
func runVMGenID(t *testing.T, look Lookback, script []any, want int) (*bumps, string) {
	t.Helper()
	sys, dir := fakeDriverDir(t, vmgenidDriverDirs[0])
	bindDevice(t, dir)
	v := newVMGenID(Options{SysDir: sys, Logger: quiet()})
	dev := &fakeDevKmsg{fakeKmsg: fakeKmsg{script: script}, closed: make(chan struct{})}
	v.open = func(string) (io.ReadCloser, error) { return dev, nil }
	ctx, cancel := context.WithCancel(context.Background())
	var b bumps
	done := make(chan error, 1)
	go func() { done <- v.run(ctx, look, b.bump) }()
	deadline := time.Now().Add(5 * time.Second)
	for string(v.Mark()) != `{"kmsg_seq":5}` && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	for b.count() < want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // no more than want
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if b.count() != want {
		t.Fatalf("%d bumps, want %d (%v)", b.count(), want, b.marks)
	}
	return &b, string(v.Mark())
}

// rec is a kernel log record of sequence number seq, the vmfork line or not.
func rec(seq int64, fork bool) item { return item{kind: itemRecord, seq: seq, fork: fork} }

// kmsgRec is the /dev/kmsg text of rec.
func kmsgRec(seq int, fork bool) string {
	msg := "virtio_net virtio1 eth0: link up"
	if fork {
		msg = vmforkMessage
	}
	return fmt.Sprintf("6,%d,%d,-;%s\n", seq, 1000*seq, msg)
}

// The records the previous daemon accounted for (up to its Mark) never
// bump; a vmfork line after them, or records lost after them, bumps once
// however many; the boot's first daemon bumps for nothing logged before it;
// a daemon after one that left no mark looks at the whole boot.
func TestVMGenIDLookback(t *testing.T) {
	mark := func(seq int) []byte { return []byte(fmt.Sprintf(`{"kmsg_seq":%d}`, seq)) }
	log := func(first int, forks ...int) []any {
		var out []any
		for seq := first; seq <= 5; seq++ {
			out = append(out, kmsgRec(seq, slices.Contains(forks, seq)))
		}
		return out
	}
	epipe := &os.PathError{Op: "read", Path: "/dev/kmsg", Err: syscall.EPIPE}
	for name, tc := range map[string]struct {
		look   Lookback
		script []any
		bumps  int
	}{
		"first daemon, fork in the boot log":    {Lookback{First: true}, log(0, 2), 0},
		"first daemon, records lost":            {Lookback{First: true}, append([]any{epipe}, log(3)...), 0},
		"fork before the mark":                  {Lookback{Mark: mark(2)}, log(0, 2), 0},
		"fork after the mark":                   {Lookback{Mark: mark(2)}, log(0, 2, 4), 1},
		"two forks after the mark":              {Lookback{Mark: mark(2)}, log(0, 4, 5), 1},
		"records after the mark overwritten":    {Lookback{Mark: mark(2)}, log(4), 1},
		"records up to the mark overwritten":    {Lookback{Mark: mark(2)}, log(3), 0},
		"records lost while reading":            {Lookback{Mark: mark(2)}, append(log(0), epipe), 1},
		"no mark: fork in the boot log":         {Lookback{}, log(0, 1), 1},
		"no mark: a boot log without a fork":    {Lookback{}, log(0), 0},
		"no mark: the boot's start overwritten": {Lookback{}, log(1), 1},
		"a mark that cannot be read":            {Lookback{Mark: []byte(`{"kmsg_seq":-1}`), First: true}, log(0, 1), 1},
	} {
		t.Run(name, func(t *testing.T) {
			b, m := runVMGenID(t, tc.look, tc.script, tc.bumps)
			if m != `{"kmsg_seq":5}` {
				t.Fatalf("Mark %s, want the last record (5)", m)
			}
			if tc.bumps == 1 && b.mark(0) != m {
				t.Fatalf("the bump's mark %s, want %s", b.mark(0), m)
			}
			if tc.bumps == 0 && (len(b.markOnly) != 1 || b.markOnly[0] != m) {
				t.Fatalf("marks handed over without a bump: %q, want %s once", b.markOnly, m)
			}
		})
	}
}

// After the backlog, each vmfork line bumps, with its own record as mark.
func TestVMGenIDLive(t *testing.T) {
	v := newVMGenID(Options{Logger: quiet()})
	items := make(chan item)
	fatal := make(chan error, 1)
	var b bumps
	done := make(chan error, 1)
	go func() { done <- v.loop(context.Background(), Lookback{First: true}, items, fatal, b.bump) }()
	for _, it := range []item{rec(0, true), {kind: itemCaughtUp}, rec(1, false), rec(2, true), rec(3, false),
		{kind: itemCaughtUp}, rec(4, true), {seq: -1, fork: true}} {
		items <- it
	}
	boom := errors.New("boom")
	fatal <- boom
	if err := <-done; err != boom {
		t.Fatalf("loop = %v, want %v", err, boom)
	}
	if b.count() != 2 || b.reasons[0] != "vmgenid" || b.mark(0) != `{"kmsg_seq":2}` || b.mark(1) != `{"kmsg_seq":4}` {
		t.Fatalf("bumps %q, marks %q; want two vmgenid, at 2 and 4", b.reasons, b.marks)
	}
	if m := string(v.Mark()); m != `{"kmsg_seq":4}` {
		t.Fatalf("Mark %s, want 4", m)
	}
}

// The Mark never passes a change whose bump was not handed over: a daemon
// stopping mid-backlog, or a bump that fails, leaves it before the change,
// and the next daemon looks back at it again.
func TestVMGenIDMarkNotPastUnbumped(t *testing.T) {
	v := newVMGenID(Options{Logger: quiet()})
	items := make(chan item)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- v.loop(ctx, Lookback{Mark: []byte(`{"kmsg_seq":2}`)}, items, nil, func(Event) error { return context.Canceled })
	}()
	items <- rec(3, true)
	items <- rec(4, false)
	if m := string(v.Mark()); m != `{"kmsg_seq":2}` {
		t.Fatalf("Mark %s mid-backlog, want the previous daemon's (2)", m)
	}
	items <- item{kind: itemCaughtUp} // the bump fails: the loop ends
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	cancel()
	if m := string(v.Mark()); m != `{"kmsg_seq":2}` {
		t.Fatalf("Mark %s after a failed bump, want 2", m)
	}
	// Live, likewise: a vmfork line whose bump fails ends the loop before
	// any later record moves the Mark.
	v = newVMGenID(Options{Logger: quiet()})
	items = make(chan item)
	go func() {
		done <- v.loop(context.Background(), Lookback{First: true}, items, nil, func(ev Event) error {
			if ev.MarkOnly {
				return nil
			}
			return context.Canceled
		})
	}()
	items <- rec(1, false)
	items <- item{kind: itemCaughtUp}
	items <- rec(2, true)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if m := string(v.Mark()); m != `{"kmsg_seq":1}` {
		t.Fatalf("Mark %s after a failed bump, want 1", m)
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
	v := newVMGenID(Options{SysDir: sys, KmsgPath: kmsg, Logger: quiet()})
	var b bumps
	err := v.run(context.Background(), Lookback{First: true}, b.bump)
	if err == nil || !strings.Contains(err.Error(), "no device bound") {
		t.Fatalf("run = %v, want no device bound", err)
	}
}

// The real reader on a file: it reads one record per Read from a device,
// and ends at the file's end, which Run reports.
func TestVMGenIDRunFile(t *testing.T) {
	kmsg := filepath.Join(t.TempDir(), "kmsg")
	if err := os.WriteFile(kmsg, []byte(vmforkRecord), 0o644); err != nil {
		t.Fatal(err)
	}
	sys, dir := fakeDriverDir(t, vmgenidDriverDirs[0])
	bindDevice(t, dir)
	v := newVMGenID(Options{SysDir: sys, KmsgPath: kmsg, Logger: quiet()})
	var b bumps
	err := v.run(context.Background(), Lookback{Mark: []byte(`{"kmsg_seq":3}`)}, b.bump)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("run = %v, want EOF of the file", err)
	}
	if b.count() != 0 || string(v.Mark()) != `{"kmsg_seq":3}` {
		t.Fatalf("%d bumps, Mark %s, from a file that never caught up", b.count(), v.Mark())
	}
}

// A kernel log of a single record (seq 0) is a backlog all the same: its
// mark is handed over.
func TestVMGenIDMarkOfFirstRecord(t *testing.T) {
	v := newVMGenID(Options{Logger: quiet()})
	items := make(chan item)
	ctx, cancel := context.WithCancel(context.Background())
	var b bumps
	done := make(chan error, 1)
	go func() { done <- v.loop(ctx, Lookback{First: true}, items, nil, b.bump) }()
	items <- rec(0, true)
	items <- item{kind: itemCaughtUp}
	items <- item{kind: itemCaughtUp} // a no-op: the one before was handled
	cancel()
	<-done
	if b.count() != 0 || len(b.markOnly) != 1 || b.markOnly[0] != `{"kmsg_seq":0}` {
		t.Fatalf("bumps %q, marks handed over %q; want none, and 0's", b.reasons, b.markOnly)
	}
}

// kmsgFile on a pollable file: the first time nothing is ready it says it
// caught up, and after that it waits for the next record.
func TestKmsgFileCaughtUp(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rc, err := r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	k := &kmsgFile{File: r, rc: rc}
	defer k.Close()
	w.WriteString(kmsgRec(1, false))
	buf := make([]byte, kmsgRecordMax)
	if n, err := k.Read(buf); err != nil || string(buf[:n]) != kmsgRec(1, false) {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if _, err := k.Read(buf); !errors.Is(err, errCaughtUp) || !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("Read with nothing ready = %v, want caught up", err)
	}
	got := make(chan string, 1)
	go func() {
		n, err := k.Read(buf)
		got <- fmt.Sprint(string(buf[:n]), err)
	}()
	select {
	case g := <-got:
		t.Fatalf("Read returned %q with nothing ready, after catching up", g)
	case <-time.After(50 * time.Millisecond):
	}
	w.WriteString(kmsgRec(2, true))
	if g := <-got; g != kmsgRec(2, true)+"<nil>" {
		t.Fatalf("Read = %q, want the next record", g)
	}
	w.Close()
	if _, err := k.Read(buf); err != io.EOF {
		t.Fatalf("Read at the end = %v, want EOF", err)
	}
}
