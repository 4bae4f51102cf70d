package page

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/vmclockabi"
)

// reading is what a reader of a VMClock page gets.
type reading struct {
	seq, size, magic uint32
	flags, marker    uint64
	gen              uint64
}

// readVMClock reads mem as a reader of /dev/vmclock0 does (the kernel
// header's seqlock rules; AWS-LC's reader): seq_count with its low bit
// cleared, the fields, seq_count again; the reading counts only if it did
// not change. It gives up after 1024 tries, as AWS-LC does.
func readVMClock(mem []byte) (reading, bool) {
	for range 1024 {
		seq := vmclockabi.Load32(mem, vmclockabi.OffSeqCount) &^ 1
		r := reading{
			seq:    seq,
			magic:  vmclockabi.Load32(mem, vmclockabi.OffMagic),
			size:   vmclockabi.Load32(mem, vmclockabi.OffSize),
			flags:  vmclockabi.Load64(mem, vmclockabi.OffFlags),
			marker: vmclockabi.Load64(mem, vmclockabi.OffDisruptionMarker),
			gen:    vmclockabi.Load64(mem, vmclockabi.OffVMGenerationCount),
		}
		if vmclockabi.Load32(mem, vmclockabi.OffSeqCount) == seq {
			return r, true
		}
	}
	return reading{}, false
}

// mapped maps the file at path read-only, as a reader in another process
// does.
func mapped(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, Size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

func openDir(t *testing.T, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func createVMClock(t *testing.T, dir string) *VMClock {
	t.Helper()
	v, err := CreateVMClockAt(openDir(t, dir), VMClockFile, filepath.Join(dir, VMClockFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// A new page is a struct vmclock_abi with a generation counter and no
// clock, at generation 0.
func TestVMClockLayout(t *testing.T) {
	dir := t.TempDir()
	createVMClock(t, dir)
	path := filepath.Join(dir, VMClockFile)
	st, err := os.Stat(path)
	if err != nil || st.Size() != Size || st.Mode().Perm() != Mode {
		t.Fatalf("page: %v, %d bytes, mode %v", err, st.Size(), st.Mode())
	}
	b, _ := os.ReadFile(path)
	le := binary.LittleEndian
	for _, c := range []struct {
		field     string
		got, want uint64
	}{
		{"magic", uint64(le.Uint32(b[0:])), vmclockabi.Magic},
		{"size", uint64(le.Uint32(b[4:])), Size},
		{"version", uint64(le.Uint16(b[8:])), 1},
		{"counter_id", uint64(b[10]), vmclockabi.CounterInvalid},
		{"time_type", uint64(b[11]), 0},
		{"seq_count", uint64(le.Uint32(b[12:])), 2},
		{"disruption_marker", le.Uint64(b[16:]), 0},
		{"flags", le.Uint64(b[24:]), vmclockabi.FlagVMGenCounterPresent},
		{"clock_status", uint64(b[34]), vmclockabi.StatusUnknown},
		{"vm_generation_counter", le.Uint64(b[104:]), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.field, c.got, c.want)
		}
	}
	for i := 32; i < len(b); i++ {
		if b[i] != 0 {
			t.Fatalf("byte %d is %#x: the page has no clock data", i, b[i])
		}
	}
}

// Each store is one seqlock update: seq_count odd, the fields, seq_count
// even, two further on.
func TestVMClockStore(t *testing.T) {
	dir := t.TempDir()
	v := createVMClock(t, dir)
	mem := mapped(t, filepath.Join(dir, VMClockFile))
	for i, gen := range []uint32{5, 7, 4294967294} {
		v.Store(gen)
		r, ok := readVMClock(mem)
		if !ok || r.gen != uint64(gen) || r.marker != uint64(gen) || r.seq != uint32(4+2*i) {
			t.Fatalf("after Store(%d): %+v ok=%v", gen, r, ok)
		}
		if got := v.Load(); got != uint64(gen) {
			t.Fatalf("Load after Store(%d): %d", gen, got)
		}
	}
}

// A reader never gets a reading that mixes two stores: counter and
// disruption marker, stored together, always agree; and the counter it
// reads never goes back.
func TestVMClockConcurrentReader(t *testing.T) {
	dir := t.TempDir()
	v := createVMClock(t, dir)
	mem := mapped(t, filepath.Join(dir, VMClockFile))
	const n = 20000
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Go(func() {
		var last uint64
		for last < n {
			r, ok := readVMClock(mem)
			switch {
			case !ok:
				continue // the writer kept it busy 1024 times in a row
			case r.gen != r.marker:
				errc <- errors.New("a reading mixes two stores")
				return
			case r.gen < last:
				errc <- errors.New("the counter went back")
				return
			}
			last = r.gen
		}
	})
	for g := uint32(1); g <= n; g++ {
		v.Store(g)
	}
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
}

// A page of an earlier run keeps its counter and its seq_count; an update
// a crash left half done is finished; a page of any other content starts
// at 0; a closed page stores nothing.
func TestVMClockReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, VMClockFile)
	dirfd := openDir(t, dir)
	v, err := CreateVMClockAt(dirfd, VMClockFile, path)
	if err != nil {
		t.Fatal(err)
	}
	v.Store(9)
	if _, err := CreateVMClockAt(dirfd, VMClockFile, path); !errors.Is(err, ErrLocked) {
		t.Fatalf("a second writer: %v", err)
	}
	v.Close()
	v.Store(10)
	if g := v.Load(); g != 0 {
		t.Fatalf("Load of a closed page: %d", g)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	reopen := func() reading {
		t.Helper()
		v, err := CreateVMClockAt(dirfd, VMClockFile, path)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		r, ok := readVMClock(mapped(t, path))
		if !ok || r.magic != vmclockabi.Magic || r.size != Size || r.flags != vmclockabi.FlagVMGenCounterPresent || r.gen != v.Load() {
			t.Fatalf("reopened: %+v ok=%v, Load %d", r, ok, v.Load())
		}
		return r
	}
	if r := reopen(); r.gen != 9 || r.marker != 9 || r.seq != 6 {
		t.Fatalf("reopened after a clean close: %+v", r)
	}

	// A crash between the two seq_count stores.
	mem := writable(t, path)
	vmclockabi.Store32(mem, vmclockabi.OffSeqCount, 7)
	if _, ok := readVMClock(mem); ok {
		t.Fatal("a page mid-update was read")
	}
	if r := reopen(); r.gen != 9 || r.seq != 8 {
		t.Fatalf("reopened after a crash mid-update: %+v", r)
	}

	// Not a VMClock page: a file of another kind, or one cut short.
	vmclockabi.Store32(mem, vmclockabi.OffMagic, 0x12345678)
	vmclockabi.Store64(mem, vmclockabi.OffVMGenerationCount, 77)
	vmclockabi.Store64(mem, vmclockabi.OffFlags, ^uint64(0))
	vmclockabi.Store64(mem, 72, 1234) // time_sec
	vmclockabi.Store64(mem, Size-8, 5678)
	if r := reopen(); r.gen != 0 || r.marker != 0 || r.seq != 10 {
		t.Fatalf("reopened over foreign content: %+v", r)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b[32:vmclockabi.OffVMGenerationCount], make([]byte, vmclockabi.OffVMGenerationCount-32)) ||
		!bytes.Equal(b[vmclockabi.StructSize:], make([]byte, Size-vmclockabi.StructSize)) {
		t.Fatal("foreign content left in the clock fields or after the structure")
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if r := reopen(); r.gen != 0 || r.seq != 2 {
		t.Fatalf("reopened after truncation: %+v", r)
	}
}

// The page is created as the generation page is: a link or another
// user's file in its place is refused, never written through.
func TestVMClockRefusals(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("keep"), 0o644)
	os.Symlink(target, filepath.Join(dir, VMClockFile))
	if _, err := CreateVMClockAt(openDir(t, dir), VMClockFile, filepath.Join(dir, VMClockFile)); err == nil {
		t.Fatal("a symbolic link was taken for the page")
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Fatalf("the link's target was written: %q", b)
	}
	os.Remove(filepath.Join(dir, VMClockFile))
	os.Mkdir(filepath.Join(dir, VMClockFile), 0o755)
	if _, err := CreateVMClockAt(openDir(t, dir), VMClockFile, filepath.Join(dir, VMClockFile)); err == nil {
		t.Fatal("a directory was taken for the page")
	}
}

// writable maps the file at path read-write, as a crash would have left it.
func writable(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, Size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}
