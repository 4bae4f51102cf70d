package floor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/page"
	"github.com/genid-project/genid/internal/slots"
)

func open(t *testing.T, state, run, boot string) *Store {
	t.Helper()
	s, err := Open(state, run, boot)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A store keeps its floors, metas and marks across opens of the same boot,
// and wipes them at the first open of another.
func TestStoreBoot(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	s := open(t, state, "/run/genid", "b1")
	if !s.Fresh() {
		t.Fatal("a new store is not fresh")
	}
	s.Host().Store(7)
	f, err := s.Scope("c1")
	if err != nil {
		t.Fatal(err)
	}
	f.Store(3)
	if err := s.SetMeta("c1", []byte(`{"pid":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetMark("vmgenid", json.RawMessage(`{"kmsg_seq":4}`)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s.Close()

	s = open(t, state, "/run/genid", "b1")
	if s.Fresh() || s.Host().Load() != 7 {
		t.Fatalf("same boot: fresh %v, host %d; want false, 7", s.Fresh(), s.Host().Load())
	}
	recs, err := s.Records()
	if err != nil || len(recs) != 1 || recs[0].Name != "c1" || recs[0].Floor != 3 || string(recs[0].Meta) != `{"pid":1}` {
		t.Fatalf("records %+v %v", recs, err)
	}
	if m := s.Marks(); string(m["vmgenid"]) != `{"kmsg_seq":4}` {
		t.Fatalf("marks %s", m)
	}
	s.Close()

	s = open(t, state, "/run/genid", "b2")
	recs, _ = s.Records()
	if !s.Fresh() || s.Host().Load() != 0 || len(recs) != 0 || len(s.Marks()) != 0 {
		t.Fatalf("another boot: fresh %v, host %d, records %v, marks %v", s.Fresh(), s.Host().Load(), recs, s.Marks())
	}
	// Another run dir has a state of its own.
	o := open(t, state, "/tmp/other", "b2")
	if !o.Fresh() || o.Dir() == s.Dir() || Key("/tmp/other") == Key("/run/genid") {
		t.Fatalf("run dirs share a state: %s", o.Dir())
	}
	s.Close()
	// The first open of a boot removes the states of other boots that no
	// daemon holds (here: /run/genid's, of b2), and keeps those held and
	// those of its own boot.
	held := open(t, state, "/tmp/held", "b2")
	mine := open(t, state, "/tmp/mine", "b3")
	mine.Close()
	open(t, state, "/tmp/third", "b3")
	if _, err := os.Stat(filepath.Join(state, Key("/run/genid"))); !os.IsNotExist(err) {
		t.Fatalf("another boot's state left: %v", err)
	}
	for _, st := range []*Store{o, held, mine} {
		if _, err := os.Stat(st.Dir()); err != nil {
			t.Fatalf("a held state, or one of this boot, removed: %v", err)
		}
	}
}

// One daemon per run dir's state; a removed scope's floor is gone.
func TestStoreLockAndRemove(t *testing.T) {
	state := t.TempDir()
	s := open(t, state, "/run/genid", "b1")
	if _, err := Open(state, "/run/genid", "b1"); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	f, _ := s.Scope("c1")
	if _, err := s.Scope("c1"); err == nil {
		t.Fatal("a scope's floor opened twice")
	}
	f.Close()
	s.Remove("c1")
	if recs, _ := s.Records(); len(recs) != 0 {
		t.Fatalf("records after remove: %+v", recs)
	}
	// Scope names may hold dots: none names another's files.
	for i, n := range []string{"a", "a.floor", "a.owner", "a.floor.owner"} {
		f, err := s.Scope(n)
		if err != nil {
			t.Fatalf("scope %s beside the others: %v", n, err)
		}
		f.Store(uint32(i + 1))
		defer f.Close()
		if err := s.SetMeta(n, []byte(n)); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.Records()
	if err != nil || len(recs) != 4 {
		t.Fatalf("records %+v %v, want 4", recs, err)
	}
	for _, r := range recs {
		if string(r.Meta) != r.Name {
			t.Fatalf("record %+v: another's meta", r)
		}
	}
	var none *Scope
	none.Store(3)
	if none.Load() != 0 {
		t.Fatal("a nil floor keeps something")
	}
	none.Close()
}

// A state dir another user could write to is refused: its floors could be
// lowered.
func TestStoreRefusesOpenDir(t *testing.T) {
	state := t.TempDir()
	os.Chmod(state, 0o777)
	if _, err := Open(state, "/run/genid", "b1"); err == nil {
		t.Fatal("opened a state dir that others may write to")
	}
	if _, err := Open(t.TempDir(), "/run/genid", ""); err == nil {
		t.Fatal("opened without a boot id")
	}
}

func TestBootID(t *testing.T) {
	p := filepath.Join(t.TempDir(), "boot_id")
	os.WriteFile(p, []byte("  \n"), 0o644)
	if _, err := BootID(p); err == nil {
		t.Fatal("an empty boot id")
	}
	os.WriteFile(p, []byte("65460f2a-0f99\n"), 0o644)
	if id, err := BootID(p); err != nil || id != "65460f2a-0f99" {
		t.Fatalf("BootID = %q %v", id, err)
	}
	if id, err := BootID(BootIDPath); err != nil || len(id) != 36 {
		t.Fatalf("this machine's boot id: %q %v", id, err)
	}
}

// One boot has one name, in the kernel's form, whether it came from
// /proc/sys (dashes) or systemd's %b (none); anything else is refused.
func TestParseBootID(t *testing.T) {
	const want = "0123abcd-4567-89ef-0123-456789abcdef"
	for _, in := range []string{want, "0123abcd456789ef0123456789abcdef", " 0123ABCD-4567-89EF-0123-456789ABCDEF\n"} {
		if got, err := ParseBootID(in); err != nil || got != want {
			t.Errorf("ParseBootID(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0123abcd456789ef0123456789abcde", "0123abcd456789ef0123456789abcdef0", "g123abcd456789ef0123456789abcdef", "0123abcd 456789ef0123456789abcdef"} {
		if got, err := ParseBootID(in); err == nil {
			t.Errorf("ParseBootID(%q) = %q, want an error", in, got)
		}
	}
}

// The state an earlier version left (a page per container scope's floor,
// scopes/NAME.floor, and its owner in NAME.owner) is moved into the table
// at open, the files removed: an upgrade loses no floor, and a floor the
// table holds too is kept at the higher of the two.
func TestStoreUpgrade(t *testing.T) {
	state := t.TempDir()
	s := open(t, state, "/run/genid", "b1")
	f, _ := s.Scope("both")
	f.Store(9)
	f.Close()
	s.Close()
	// As the earlier version wrote them.
	scopes := filepath.Join(s.Dir(), scopesDir)
	if err := os.Mkdir(scopes, 0o700); err != nil {
		t.Fatal(err)
	}
	dirfd, err := openDir(unix.AT_FDCWD, scopes, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirfd)
	long := strings.Repeat("l", slots.MaxName)
	old := map[string]uint32{"c1": 5, "both": 4, "a.floor": 7, long: 2}
	for name, gen := range old {
		w, err := page.CreateAt(dirfd, name+floorSuffix, name)
		if err != nil {
			t.Fatal(err)
		}
		w.Store(gen)
		w.Close()
		meta := `{"name":"` + name + `"}`
		if name == long { // as long as a slot holds
			meta += strings.Repeat(" ", MaxMeta-len(meta))
		}
		if err := os.WriteFile(filepath.Join(scopes, name+metaSuffix), []byte(meta), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(scopes, ".c2.floor.tmp"), nil, 0o600) // a write cut short

	s = open(t, state, "/run/genid", "b1")
	recs, err := s.Records()
	longMeta := `{"name":"` + long + `"}`
	longMeta += strings.Repeat(" ", MaxMeta-len(longMeta))
	want := []Record{{"a.floor", 7, []byte(`{"name":"a.floor"}`)}, {"both", 9, []byte(`{"name":"both"}`)},
		{"c1", 5, []byte(`{"name":"c1"}`)}, {long, 2, []byte(longMeta)}}
	if err != nil || fmt.Sprint(recs) != fmt.Sprint(want) {
		t.Fatalf("records after the upgrade %v %v, want %v", recs, err, want)
	}
	if _, err := os.Stat(scopes); !os.IsNotExist(err) {
		t.Fatalf("the earlier version's files left: %v", err)
	}
	f, err = s.Scope("c1")
	if err != nil || f.Load() != 5 {
		t.Fatalf("c1's floor after the upgrade: %v %v", f.Load(), err)
	}
	// Another boot's earlier state is wiped, files and all.
	s.Close()
	os.Mkdir(scopes, 0o700)
	os.WriteFile(filepath.Join(scopes, "c3"+floorSuffix), []byte{3, 0, 0, 0}, 0o600)
	s = open(t, state, "/run/genid", "b2")
	if recs, _ := s.Records(); len(recs) != 0 {
		t.Fatalf("another boot's floors kept: %v", recs)
	}
	if _, err := os.Stat(scopes); !os.IsNotExist(err) {
		t.Fatalf("another boot's files left: %v", err)
	}
}

// The table keeps every floor and meta across opens, reuses a removed
// scope's slot from the start of the file, and a floor of a removed scope,
// still open, no longer writes.
func TestTable(t *testing.T) {
	state := t.TempDir()
	s := open(t, state, "/run/genid", "b1")
	const n = 131 // slots over three pages and more than one mapping
	floors := make([]*Scope, n)
	for i := range n {
		name := fmt.Sprintf("c%d", i)
		f, err := s.Scope(name)
		if err != nil {
			t.Fatal(err)
		}
		f.Store(uint32(i + 100))
		if err := s.SetMeta(name, []byte(name)); err != nil {
			t.Fatal(err)
		}
		floors[i] = f
	}
	if floors[0].Load() != 100 {
		t.Fatalf("c0's floor %d, want 100", floors[0].Load())
	}
	// Closed, a floor no longer writes, and opens again, as it was.
	floors[0].Close()
	floors[0].Store(3)
	if floors[1].Load() != 101 {
		t.Fatalf("a closed floor's store: c1's floor %d, want 101", floors[1].Load())
	}
	if f, err := s.Scope("c0"); err != nil || f.Load() != 100 {
		t.Fatalf("c0 opened again: floor %d %v, want 100", f.Load(), err)
	} else {
		floors[0] = f
	}
	s.Remove("c1")
	floors[1].Store(55) // a removed scope's floor: nothing
	if floors[1].Load() != 0 {
		t.Fatal("a removed floor keeps something")
	}
	f, err := s.Scope("new")
	if err != nil || f.Load() != 0 || f.slot != 1 {
		t.Fatalf("new scope: floor %d slot %d %v, want 0 in slot 1", f.Load(), f.slot, err)
	}
	f.Store(1)
	if err := s.SetMeta("new", make([]byte, MaxMeta+1)); err == nil {
		t.Fatal("a meta longer than a slot's kept")
	}
	if err := s.SetMeta("new", []byte(strings.Repeat("m", MaxMeta))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Scope(strings.Repeat("n", slots.MaxName+1)); err == nil {
		t.Fatal("a name longer than a slot's")
	}
	s.Close()
	floors[2].Store(7) // the store closed: nothing, and no fault
	if floors[2].Load() != 0 {
		t.Fatal("a closed store's floor keeps something")
	}

	s = open(t, state, "/run/genid", "b1")
	recs, err := s.Records()
	if err != nil || len(recs) != n {
		t.Fatalf("%d records, %v; want %d", len(recs), err, n)
	}
	for _, r := range recs {
		var i int
		fmt.Sscanf(r.Name, "c%d", &i)
		switch {
		case r.Name == "new":
			if r.Floor != 1 || string(r.Meta) != strings.Repeat("m", MaxMeta) {
				t.Errorf("record %s: floor %d, meta of %d bytes", r.Name, r.Floor, len(r.Meta))
			}
		case r.Floor != uint32(i+100) || string(r.Meta) != r.Name:
			t.Errorf("record %s: floor %d meta %q", r.Name, r.Floor, r.Meta)
		}
	}
}
