package backend

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// page is the fields of a struct vmclock_abi the tests set.
type page struct {
	magic uint32
	size  uint32
	seq   uint32
	flags uint64
	gen   uint64
}

func validPage() page {
	return page{magic: vmclockMagic, size: 112, seq: 2, flags: flagGenerationPresent, gen: 7}
}

// writePage writes p into the page file at path, laid out as the device's
// (little endian, one page).
func writePage(t *testing.T, path string, p page) {
	t.Helper()
	buf := make([]byte, os.Getpagesize())
	binary.LittleEndian.PutUint32(buf[offMagic:], p.magic)
	binary.LittleEndian.PutUint32(buf[offSize:], p.size)
	binary.LittleEndian.PutUint16(buf[8:], 1) // version
	binary.LittleEndian.PutUint32(buf[offSeqCount:], p.seq)
	binary.LittleEndian.PutUint64(buf[offFlags:], p.flags)
	binary.LittleEndian.PutUint64(buf[offGeneration:], p.gen)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// In place, as the hypervisor writes it: the test's mapping sees it.
	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
}

func pageFile(t *testing.T, p page) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vmclock0")
	writePage(t, path, p)
	return path
}

func openTestDev(t *testing.T, path string, maxWait time.Duration) *vmclockDev {
	t.Helper()
	d, err := openVMClockDev(path, maxWait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	return d
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// bumps counts bump calls, their reasons and their marks, and the marks
// handed over without a bump.
type bumps struct {
	mu       sync.Mutex
	reasons  []string
	marks    []string
	markOnly []string
}

func (b *bumps) bump(ev Event) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ev.MarkOnly {
		b.markOnly = append(b.markOnly, string(ev.Mark))
		return nil
	}
	b.reasons = append(b.reasons, ev.Backend)
	b.marks = append(b.marks, string(ev.Mark))
	return nil
}

// mark returns the mark of bump i.
func (b *bumps) mark(i int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.marks[i]
}

func (b *bumps) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.reasons)
}

func TestVMClockSnapshotValid(t *testing.T) {
	d := openTestDev(t, pageFile(t, validPage()), vmclockMaxWait)
	st, err := d.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if st.gen != 7 || st.seq != 2 || !st.hasGeneration() {
		t.Fatalf("snapshot = %+v, want gen 7, seq 2, generation present", st)
	}
}

func TestVMClockOddSeqInProgress(t *testing.T) {
	p := validPage()
	p.seq = 3
	d := openTestDev(t, pageFile(t, p), 20*time.Millisecond)
	start := time.Now()
	_, err := d.snapshot()
	if !errors.Is(err, errVMClockInProgress) {
		t.Fatalf("snapshot with odd seq_count: err = %v, want in progress", err)
	}
	if time.Since(start) < 20*time.Millisecond {
		t.Fatalf("gave up after %v, before the retry bound", time.Since(start))
	}
	w := &vmclockWatch{dev: d, last: 7, log: quiet(), mark: new(atomic.Pointer[vmclockMark])}
	var b bumps
	if err := w.check(b.bump); !errors.Is(err, errVMClockInProgress) || b.count() != 0 {
		t.Fatalf("check during update: err %v, %d bumps; want in progress, none", err, b.count())
	}
}

func TestVMClockOddSeqRetried(t *testing.T) {
	p := validPage()
	p.seq = 3
	path := pageFile(t, p)
	d := openTestDev(t, path, 5*time.Second)
	// The "hypervisor" finishes its update while the reader retries.
	go func() {
		time.Sleep(20 * time.Millisecond)
		p.seq, p.gen = 4, 8
		writePage(t, path, p)
	}()
	st, err := d.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if st.seq != 4 || st.gen != 8 {
		t.Fatalf("snapshot = %+v, want the completed update (seq 4, gen 8)", st)
	}
}

func TestVMClockBadMagic(t *testing.T) {
	p := validPage()
	p.magic = 0x12345678
	path := pageFile(t, p)
	if _, err := openTestDev(t, path, vmclockMaxWait).snapshot(); !errors.Is(err, errVMClockBadMagic) {
		t.Fatalf("snapshot: err = %v, want bad magic", err)
	}
	if err := detectVMClock(Options{VMClockPath: path}); !errors.Is(err, errVMClockBadMagic) {
		t.Fatalf("detect: err = %v, want bad magic", err)
	}
	err := newVMClock(Options{VMClockPath: path, Logger: quiet()}).run(context.Background(), Lookback{First: true}, (&bumps{}).bump)
	if !errors.Is(err, errVMClockBadMagic) {
		t.Fatalf("run: err = %v, want bad magic", err)
	}
}

func TestVMClockNoGeneration(t *testing.T) {
	for name, p := range map[string]page{
		"flag clear": {magic: vmclockMagic, size: 112, seq: 2, flags: flagNotificationPresent, gen: 7},
		"too small":  {magic: vmclockMagic, size: 104, seq: 2, flags: flagGenerationPresent, gen: 7},
	} {
		t.Run(name, func(t *testing.T) {
			path := pageFile(t, p)
			st, err := openTestDev(t, path, vmclockMaxWait).snapshot()
			if err != nil {
				t.Fatal(err)
			}
			if st.hasGeneration() {
				t.Fatalf("hasGeneration() = true for %+v", st)
			}
			if err := detectVMClock(Options{VMClockPath: path, VMClockPoll: time.Second}); !errors.Is(err, errVMClockNoGeneration) {
				t.Fatalf("detect: err = %v, want no generation", err)
			}
			err = newVMClock(Options{VMClockPath: path, VMClockPoll: time.Second, Logger: quiet()}).run(context.Background(), Lookback{First: true}, (&bumps{}).bump)
			if !errors.Is(err, errVMClockNoGeneration) {
				t.Fatalf("run: err = %v, want no generation", err)
			}
		})
	}
}

func TestVMClockGenerationChange(t *testing.T) {
	p := validPage()
	path := pageFile(t, p)
	d := openTestDev(t, path, vmclockMaxWait)
	st, err := d.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	w := &vmclockWatch{dev: d, last: st.gen, log: quiet(), mark: new(atomic.Pointer[vmclockMark])}
	var b bumps
	if err := w.check(b.bump); err != nil || b.count() != 0 {
		t.Fatalf("check without change: err %v, %d bumps; want none", err, b.count())
	}
	// A restore: the hypervisor bumps the counter (and seq_count by two).
	p.seq, p.gen = 4, 8
	writePage(t, path, p)
	for range 3 {
		if err := w.check(b.bump); err != nil {
			t.Fatal(err)
		}
	}
	if b.count() != 1 || b.reasons[0] != "vmclock" {
		t.Fatalf("bumps after one change = %q, want exactly one \"vmclock\"", b.reasons)
	}
	// A clock-only update (seq moves, counter does not) is no change.
	p.seq = 6
	writePage(t, path, p)
	if err := w.check(b.bump); err != nil || b.count() != 1 {
		t.Fatalf("after a clock-only update: err %v, %d bumps; want 1", err, b.count())
	}
	p.seq, p.gen = 8, 9
	writePage(t, path, p)
	if err := w.check(b.bump); err != nil || b.count() != 2 {
		t.Fatalf("after a second change: err %v, %d bumps; want 2", err, b.count())
	}
}

// Should the hypervisor stop providing the counter, or the kernel stop
// notifying, the watch ends: but only after a last bump or check, since the
// change that came with it would otherwise go unseen.
func TestVMClockWatchEnds(t *testing.T) {
	for name, tc := range map[string]struct {
		flags   uint64
		revents int16
		want    error
	}{
		"counter gone": {flags: 0, revents: unix.POLLIN, want: errVMClockNoGeneration},
		"hang-up":      {flags: flagGenerationPresent, revents: unix.POLLHUP},
		"error":        {flags: flagGenerationPresent, revents: unix.POLLERR},
	} {
		t.Run(name, func(t *testing.T) {
			p := validPage()
			path := pageFile(t, p)
			d := openTestDev(t, path, vmclockMaxWait)
			w := &vmclockWatch{dev: d, last: p.gen, log: quiet(), mark: new(atomic.Pointer[vmclockMark])}
			p.seq, p.gen, p.flags = 4, 8, tc.flags
			writePage(t, path, p)
			var b bumps
			err := w.revents(tc.revents, b.bump)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("revents(%#x) = %v, want the watch to end (%v)", tc.revents, err, tc.want)
			}
			if b.count() != 1 {
				t.Fatalf("%d bumps, want 1: the last change must count", b.count())
			}
		})
	}
}

// A device that cannot notify is not taken in auto mode, and Run refuses to
// poll on a timer unless asked. A regular file with the notification flag
// stands for a kernel without VMClock poll(): poll() answers POLLOUT.
func TestVMClockNotEventDriven(t *testing.T) {
	for name, flags := range map[string]uint64{
		"no notification flag":  flagGenerationPresent,
		"kernel without poll()": flagGenerationPresent | flagNotificationPresent,
	} {
		t.Run(name, func(t *testing.T) {
			p := validPage()
			p.flags = flags
			path := pageFile(t, p)
			if err := detectVMClock(Options{VMClockPath: path}); !errors.Is(err, errVMClockNotEventDriven) {
				t.Fatalf("detect: err = %v, want not event-driven", err)
			}
			if bs := Detect(Options{VMClockPath: path, SysDir: t.TempDir(), Logger: quiet()}); len(bs) != 0 {
				t.Fatalf("auto mode took %v", BackendNames(bs))
			}
			if err := detectVMClock(Options{VMClockPath: path, VMClockPoll: time.Second}); err != nil {
				t.Fatalf("detect with periodic checks: %v", err)
			}
			err := newVMClock(Options{VMClockPath: path, Logger: quiet()}).run(context.Background(), Lookback{First: true}, (&bumps{}).bump)
			if !errors.Is(err, errVMClockNotEventDriven) {
				t.Fatalf("run: err = %v, want not event-driven", err)
			}
		})
	}
}

func TestVMClockRunPeriodic(t *testing.T) {
	p := validPage()
	path := pageFile(t, p)
	v := newVMClock(Options{VMClockPath: path, VMClockPoll: 5 * time.Millisecond, Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	var b bumps
	done := make(chan error, 1)
	go func() { done <- v.run(ctx, Lookback{First: true}, b.bump) }()
	time.Sleep(30 * time.Millisecond)
	if b.count() != 0 {
		t.Fatalf("%d bumps before any change; the start value must not bump", b.count())
	}
	p.seq, p.gen = 4, 8
	writePage(t, path, p)
	deadline := time.Now().Add(5 * time.Second)
	for b.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(30 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if b.count() != 1 {
		t.Fatalf("%d bumps after one change, want 1", b.count())
	}
}

func TestVMClockMissingDevice(t *testing.T) {
	err := detectVMClock(Options{VMClockPath: filepath.Join(t.TempDir(), "nope")})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("detect: err = %v, want not exist", err)
	}
}

// At start, the counter is compared with the one the previous daemon of the
// boot accounted for: any difference (lower too: the counter changes to a
// new value, not necessarily upward) bumps once, as does not knowing it
// when a daemon ran before; the boot's first daemon has nothing to bump for.
func TestVMClockLookback(t *testing.T) {
	for name, tc := range map[string]struct {
		look  Lookback
		bumps int
	}{
		"same counter":                {Lookback{Mark: []byte(`{"vm_generation_counter":7}`)}, 0},
		"same counter, first":         {Lookback{Mark: []byte(`{"vm_generation_counter":7}`), First: true}, 0},
		"restored while down":         {Lookback{Mark: []byte(`{"vm_generation_counter":6}`)}, 1},
		"restored to a lower counter": {Lookback{Mark: []byte(`{"vm_generation_counter":9}`)}, 1},
		"first daemon of the boot":    {Lookback{First: true}, 0},
		"a daemon ran, no mark":       {Lookback{}, 1},
		"a mark that cannot be read":  {Lookback{Mark: []byte(`{"vm_generation_counter":"x"}`), First: true}, 1},
	} {
		t.Run(name, func(t *testing.T) {
			path := pageFile(t, validPage()) // counter 7
			v := newVMClock(Options{VMClockPath: path, VMClockPoll: time.Hour, Logger: quiet()})
			ctx, cancel := context.WithCancel(context.Background())
			var b bumps
			done := make(chan error, 1)
			go func() { done <- v.run(ctx, tc.look, b.bump) }()
			deadline := time.Now().Add(5 * time.Second)
			for string(v.Mark()) == "" && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if b.count() != tc.bumps {
				t.Fatalf("%d bumps, want %d", b.count(), tc.bumps)
			}
			const want = `{"vm_generation_counter":7}`
			if tc.bumps == 1 && b.mark(0) != want {
				t.Fatalf("the bump's mark %s, want %s", b.mark(0), want)
			}
			if got := string(v.Mark()); got != want {
				t.Fatalf("Mark() = %s, want %s", got, want)
			}
			if tc.bumps == 0 && (len(b.markOnly) != 1 || b.markOnly[0] != want) {
				t.Fatalf("marks handed over without a bump: %q, want %s once", b.markOnly, want)
			}
		})
	}
}

// A change seen while running moves the Mark with its bump, and only once
// the bump was handed over: a bump that fails (the daemon stopping) leaves
// the Mark where it was, so the next daemon looks back at it.
func TestVMClockMarkFollowsBumps(t *testing.T) {
	p := validPage()
	path := pageFile(t, p)
	d := openTestDev(t, path, vmclockMaxWait)
	v := newVMClock(Options{VMClockPath: path, Logger: quiet()})
	w := &vmclockWatch{dev: d, log: quiet(), mark: &v.mark}
	w.account(7)
	p.seq, p.gen = 4, 3
	writePage(t, path, p)
	failing := func(Event) error { return context.Canceled }
	if err := w.check(failing); err != nil {
		t.Fatal(err)
	}
	if got := string(v.Mark()); got != `{"vm_generation_counter":7}` {
		t.Fatalf("Mark after a failed bump = %s, want 7's", got)
	}
	var b bumps
	if err := w.check(b.bump); err != nil || b.count() != 1 {
		t.Fatalf("check: %v, %d bumps; want 1", err, b.count())
	}
	if got := string(v.Mark()); got != `{"vm_generation_counter":3}` || b.mark(0) != got {
		t.Fatalf("Mark after the bump = %s (the bump's: %s), want 3's", got, b.mark(0))
	}
}
