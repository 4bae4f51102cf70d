package server_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/page"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/vmclockabi"
)

// vmclockGen reads the counter of the VMClock page in dir while no update
// is under way: the page must be whole, its seq_count even.
func vmclockGen(t *testing.T, dir string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, page.VMClockFile))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if len(b) != page.Size || le.Uint32(b[vmclockabi.OffMagic:]) != vmclockabi.Magic ||
		le.Uint32(b[vmclockabi.OffSeqCount:])&1 != 0 ||
		le.Uint64(b[vmclockabi.OffFlags:]) != vmclockabi.FlagVMGenCounterPresent {
		t.Fatalf("%s: not a whole VMClock page at rest: % x", dir, b[:vmclockabi.StructSize])
	}
	return le.Uint64(b[vmclockabi.OffVMGenerationCount:])
}

func genPage(t *testing.T, dir string) uint32 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, genid.PageFile))
	if err != nil {
		t.Fatal(err)
	}
	return binary.NativeEndian.Uint32(b)
}

// Every scope publishes its generation in both pages, each change in both;
// they come back after a restart, and the higher of the two wins when one
// was lost meanwhile; a removed scope takes both.
func TestVMClockPages(t *testing.T) {
	d := start(t, "", server.Config{})
	c1 := filepath.Join(d.dir, "scopes", "c1")
	if g := vmclockGen(t, d.dir); g != 0 {
		t.Fatalf("host's VMClock page at start: %d", g)
	}
	if st, err := os.Stat(filepath.Join(d.dir, page.VMClockFile)); err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("host's VMClock page: %v %v", st, err)
	}
	a := d.admin(t)
	if _, err := a.CreateScope(ctx(t), "c1", genid.ScopeOptions{Start: 7}); err != nil {
		t.Fatal(err)
	}
	if g := vmclockGen(t, c1); g != 7 {
		t.Fatalf("c1's VMClock page at creation: %d", g)
	}
	d.bump(42, "t")
	a.Bump(ctx(t), "c1", 0, "t")
	if h, c := vmclockGen(t, d.dir), vmclockGen(t, c1); h != 42 || c != 8 {
		t.Fatalf("after a bump of each: host %d, c1 %d", h, c)
	}
	d.BumpAll("vm")
	if h, c := vmclockGen(t, d.dir), vmclockGen(t, c1); h != 43 || c != 9 {
		t.Fatalf("after a bump of all: host %d, c1 %d", h, c)
	}
	d.stop()
	a.Close()

	// Lost while no daemon ran: the host's generation page, c1's VMClock
	// page. Neither scope goes back.
	os.Remove(filepath.Join(d.dir, genid.PageFile))
	os.Remove(filepath.Join(c1, page.VMClockFile))
	d2 := start(t, d.dir, server.Config{})
	if g := d2.status(t).Generation; g != 43 || genPage(t, d.dir) != 43 || vmclockGen(t, d.dir) != 43 {
		t.Fatalf("host resumed at %d (pages %d, %d), want 43 from its VMClock page", g, genPage(t, d.dir), vmclockGen(t, d.dir))
	}
	a2 := d2.admin(t)
	if g, err := a2.Generation(ctx(t), "c1"); err != nil || g != 9 || vmclockGen(t, c1) != 9 {
		t.Fatalf("c1 resumed at %d %v (VMClock page %d), want 9", g, err, vmclockGen(t, c1))
	}
	if err := a2.RemoveScope(ctx(t), "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c1); !os.IsNotExist(err) {
		t.Fatalf("c1's directory after removal: %v", err)
	}
	d2.stop()
	a2.Close()

	// A counter no generation can be is not taken up; the highest one is.
	for _, c := range []struct {
		counter uint64
		want    uint32
	}{{1<<32 - 1, 43}, {1<<32 - 2, 1<<32 - 2}} {
		f, err := os.OpenFile(filepath.Join(d.dir, page.VMClockFile), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteAt(binary.LittleEndian.AppendUint64(nil, c.counter), vmclockabi.OffVMGenerationCount)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		d3 := start(t, d.dir, server.Config{})
		if g := d3.status(t).Generation; g != c.want || vmclockGen(t, d.dir) != uint64(c.want) {
			t.Fatalf("host resumed at %d (VMClock page %d) from a counter of %d, want %d", g, vmclockGen(t, d.dir), c.counter, c.want)
		}
		d3.stop()
	}
}
