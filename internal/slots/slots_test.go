package slots

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func open(t *testing.T, dir string) *File {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	f, err := Open(fd, "slots", filepath.Join(dir, "slots"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// The file grows by a chunk at a time, and keeps every record's value
// and data across opens; a removed record's slot is zeroed and reused
// first, from the start of the file.
func TestGrowAndReopen(t *testing.T) {
	dir := t.TempDir()
	f := open(t, dir)
	const n = chunkSlots*2 + 3
	for i := range n {
		name := string(rune('a'+i%26)) + string(rune('a'+i/26))
		j, err := f.Add(name)
		if err != nil || j != i {
			t.Fatalf("add %s: slot %d %v, want %d", name, j, err, i)
		}
		f.Store(j, uint32(i+1))
		if err := f.SetData(j, []byte(name)); err != nil {
			t.Fatal(err)
		}
	}
	st, err := os.Stat(filepath.Join(dir, "slots"))
	if err != nil || st.Size() != 3*chunkSize {
		t.Fatalf("file of %d slots: %d bytes %v, want %d", n, st.Size(), err, 3*chunkSize)
	}
	f.Remove("ba") // slot 1
	f.Remove("nope")
	if j, err := f.Add("new"); err != nil || j != 1 || f.Load(j) != 0 || f.Data(j) != nil {
		t.Fatalf("new record in slot %d (%v): value %d data %q; want slot 1, 0, none", j, err, f.Load(j), f.Data(j))
	}
	if err := f.SetData(1, make([]byte, MaxData+1)); err == nil {
		t.Fatal("more data than a slot holds")
	}
	for _, name := range []string{"", string(make([]byte, MaxName+1)), "aa"} {
		if _, err := f.Add(name); err == nil {
			t.Fatalf("name %q added", name)
		}
	}
	f.Close()

	f = open(t, dir)
	if f.Len() != n {
		t.Fatalf("%d records after reopening, want %d", f.Len(), n)
	}
	for name, i := range f.Names() {
		want := name
		if name == "new" {
			want = ""
		} else if f.Load(i) != uint32(i+1) {
			t.Errorf("%s: value %d, want %d", name, f.Load(i), i+1)
		}
		if string(f.Data(i)) != want {
			t.Errorf("%s: data %q, want %q", name, f.Data(i), want)
		}
	}
}

// A file this package did not write as it is (a slot that is not a
// record, two slots of one name, a file cut short) is read as far as it
// can be: of one name, the higher value; the others are free.
func TestDamaged(t *testing.T) {
	dir := t.TempDir()
	f := open(t, dir)
	for _, n := range []string{"a", "b"} {
		i, _ := f.Add(n)
		f.Store(i, 3)
	}
	f.Close()
	path := filepath.Join(dir, "slots")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	slot := func(i int) []byte { return b[i*Size : (i+1)*Size] }
	copy(slot(2), slot(0)) // a second "a", higher
	slot(2)[0] = 8
	slot(1)[offNameLen] = MaxName + 1 // not a record
	slot(3)[offNameLen], slot(3)[offName] = 1, 'c'
	slot(3)[offDataLen], slot(3)[offDataLen+1] = 0xff, 0xff                  // nor this
	slot(4)[offNameLen], slot(4)[offName], slot(4)[offNameLen+1] = 1, 'd', 1 // nor this
	if err := os.WriteFile(path, b[:5*Size+10], 0o600); err != nil {
		t.Fatal(err)
	}
	f = open(t, dir)
	i, ok := f.Lookup("a")
	if f.Len() != 1 || !ok || f.Load(i) != 8 {
		t.Fatalf("records %v, a at %d; want a alone, at 8", f.Names(), f.Load(i))
	}
	for _, want := range []int{1, 2, 3, 4} {
		if j, err := f.Add(string(rune('p' + want))); err != nil || j != want {
			t.Fatalf("add: slot %d %v, want the freed %d", j, err, want)
		}
	}
	if j, _ := f.Add("z"); j != 5 {
		t.Fatalf("add: slot %d, want 5: the file kept whole", j)
	}
}

// A link, or a file of another user, is refused: it is never written to.
func TestRefused(t *testing.T) {
	dir := t.TempDir()
	os.Symlink("elsewhere", filepath.Join(dir, "slots"))
	fd, _ := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	defer unix.Close(fd)
	if f, err := Open(fd, "slots", "slots"); err == nil {
		f.Close()
		t.Fatal("opened through a link")
	}
	os.Remove(filepath.Join(dir, "slots"))
	os.Mkdir(filepath.Join(dir, "slots"), 0o700)
	if f, err := Open(fd, "slots", "slots"); err == nil {
		f.Close()
		t.Fatal("opened a directory")
	}
}

// A slot holds a name of MaxName bytes and MaxData bytes of data, and no
// more: nothing spills into its neighbours, and both survive a reopen.
func TestFull(t *testing.T) {
	dir := t.TempDir()
	f := open(t, dir)
	long := strings.Repeat("n", MaxName)
	data := []byte(strings.Repeat("d", MaxData))
	names := []string{"before", long, "after"}
	for _, name := range names {
		i, err := f.Add(name)
		if err != nil {
			t.Fatalf("add a name of %d bytes: %v", len(name), err)
		}
		f.Store(i, uint32(len(name)))
	}
	for _, name := range names { // each beside records already written
		i, _ := f.Lookup(name)
		if err := f.SetData(i, data); err != nil {
			t.Fatalf("data of %d bytes: %v", len(data), err)
		}
	}
	f.Close()
	f = open(t, dir)
	for _, name := range []string{"before", long, "after"} {
		i, ok := f.Lookup(name)
		if !ok || f.Load(i) != uint32(len(name)) || !bytes.Equal(f.Data(i), data) {
			t.Fatalf("%s after reopening: found %v, value %d, %d bytes of data", name, ok, f.Load(i), len(f.Data(i)))
		}
	}
	st, err := os.Stat(filepath.Join(dir, "slots"))
	if err != nil || st.Size() != chunkSize {
		t.Fatalf("file of one chunk, reopened: %d bytes %v, want %d", st.Size(), err, chunkSize)
	}
}

// Close releases the file and its mappings, once: a second Close closes
// nothing else.
func TestClose(t *testing.T) {
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	dir := t.TempDir()
	before := fds()
	f := open(t, dir)
	f.Add("a")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if n := fds(); n != before {
		t.Fatalf("%d fds open after Close, %d before Open", n, before)
	}
}
