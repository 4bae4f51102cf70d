package history

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/genid-project/genid/genid"
)

func entry(reason string) genid.HistoryEntry { return genid.HistoryEntry{Reason: reason} }

func seqs(list []genid.HistoryEntry) string {
	var b strings.Builder
	for _, e := range list {
		fmt.Fprintf(&b, "%d%s ", e.Seq, e.Reason)
	}
	return strings.TrimSpace(b.String())
}

func TestRingBounded(t *testing.T) {
	r := New(3)
	if r.Size() != 3 || r.Len() != 0 || r.Last() != 0 || r.Get(1) != nil {
		t.Fatalf("empty ring: %d %d %d", r.Size(), r.Len(), r.Last())
	}
	for _, s := range []string{"a", "b"} {
		r.Add(entry(s))
	}
	if got := seqs(r.List(nil, 0)); got != "1a 2b" {
		t.Fatalf("%q", got)
	}
	for _, s := range []string{"c", "d", "e"} {
		r.Add(entry(s))
	}
	if got := seqs(r.List(nil, 0)); got != "3c 4d 5e" || r.Len() != 3 || r.Last() != 5 {
		t.Fatalf("%q len %d last %d", got, r.Len(), r.Last())
	}
	if r.Get(2) != nil || r.Get(6) != nil || r.Get(0) != nil {
		t.Fatal("an entry not kept is found")
	}
	for seq := uint64(3); seq <= 5; seq++ {
		if e := r.Get(seq); e == nil || e.Seq != seq {
			t.Fatalf("Get(%d) = %+v", seq, e)
		}
	}
	r.Get(4).Reason = "D"
	if got := seqs(r.List(nil, 2)); got != "4D 5e" {
		t.Fatalf("latest 2: %q", got)
	}
	if got := seqs(r.List(func(e *genid.HistoryEntry) bool { return e.Seq != 4 }, 0)); got != "3c 5e" {
		t.Fatalf("filtered: %q", got)
	}
	if got := seqs(r.List(func(e *genid.HistoryEntry) bool { return e.Seq != 5 }, 1)); got != "4D" {
		t.Fatalf("filtered latest 1: %q", got)
	}
	if New(0).Size() != DefaultSize || New(-1).Size() != DefaultSize {
		t.Fatal("default size")
	}
	var seen []uint64
	r.Range(func(e *genid.HistoryEntry) bool { seen = append(seen, e.Seq); return len(seen) < 2 })
	if fmt.Sprint(seen) != "[3 4]" {
		t.Fatalf("Range: %v", seen)
	}
}

// A list handed out is the caller's: later updates do not change it.
func TestListCopies(t *testing.T) {
	r := New(4)
	g := uint32(7)
	seq := r.Add(genid.HistoryEntry{Restore: &genid.RestoreInfo{RecordedGeneration: &g}, HookResults: []genid.HookResult{{Name: "a"}}})
	list := r.List(nil, 0)
	e := r.Get(seq)
	*e.Restore.RecordedGeneration = 9
	e.Restore.RecordedScope = "x"
	e.HookResults[0].Name = "b"
	if c := list[0]; *c.Restore.RecordedGeneration != 7 || c.Restore.RecordedScope != "" || c.HookResults[0].Name != "a" {
		t.Fatalf("the copy changed: %+v %+v", c.Restore, c.HookResults)
	}
	c := Clone(&genid.HistoryEntry{Seq: 3})
	if c.Restore != nil || c.HookResults != nil || c.Seq != 3 {
		t.Fatalf("clone of a plain entry: %+v", c)
	}
}

func TestKeep(t *testing.T) {
	r := New(2)
	if r.Keep(genid.HistoryEntry{}) || r.Len() != 0 {
		t.Fatal("an entry of no seq kept")
	}
	if !r.Keep(genid.HistoryEntry{Seq: 5, Reason: "a"}) || r.Last() != 5 {
		t.Fatal("a first entry")
	}
	if !r.Keep(genid.HistoryEntry{Seq: 5, Reason: "A"}) || r.Get(5).Reason != "A" {
		t.Fatal("an update")
	}
	if r.Keep(genid.HistoryEntry{Seq: 4}) {
		t.Fatal("an older entry kept")
	}
	r.Keep(genid.HistoryEntry{Seq: 9, Reason: "b"})
	r.Keep(genid.HistoryEntry{Seq: 10, Reason: "c"})
	if got := seqs(r.List(nil, 0)); got != "9b 10c" {
		t.Fatalf("%q", got)
	}
	// Gaps: Get finds each.
	if r.Get(9) == nil || r.Get(10) == nil || r.Get(5) != nil {
		t.Fatal("Get across a gap")
	}
	if r.Add(entry("d")) != 11 {
		t.Fatal("Add numbers on from the newest")
	}
}

func TestFileRoundTrip(t *testing.T) {
	var file bytes.Buffer
	r := New(3)
	for _, s := range []string{"a", "b", "c", "d"} {
		seq := r.Add(entry(s))
		line, err := Line(r.Get(seq))
		if err != nil || !bytes.HasSuffix(line, []byte("}\n")) || bytes.Count(line, []byte("\n")) != 1 {
			t.Fatalf("line %q %v", line, err)
		}
		file.Write(line)
	}
	e := r.Get(3)
	e.Barrier = genid.BarrierCleared
	line, _ := Line(e)
	file.Write(line)                     // an update of 3
	file.WriteString("not json\n")       // skipped
	file.WriteString(`{"seq":0}` + "\n") // no seq: skipped
	file.WriteString(`{"seq":1}` + "\n") // older than kept: skipped
	file.WriteString(`{"seq":5,"reas`)   // torn
	back, lines, bad, err := Read(&file, 3)
	if err != nil || lines != 9 || bad != 4 {
		t.Fatalf("read: %d lines, %d bad, %v", lines, bad, err)
	}
	if got := seqs(back.List(nil, 0)); got != "2b 3c 4d" || back.Get(3).Barrier != genid.BarrierCleared || back.Last() != 4 {
		t.Fatalf("%q %+v", got, back.Get(3))
	}
}

func TestReadLongLine(t *testing.T) {
	var file bytes.Buffer
	file.WriteString(`{"seq":1}` + "\n")
	file.WriteString(`{"seq":2,"reason":"` + strings.Repeat("x", MaxLine) + `"}` + "\n")
	back, _, bad, err := Read(&file, 3)
	if err != nil || bad != 1 || back.Len() != 1 {
		t.Fatalf("%d bad, %d kept, %v", bad, back.Len(), err)
	}
	// The longest line that Read takes back is what Line writes, and no
	// longer.
	base, _ := Line(&genid.HistoryEntry{Seq: 1})
	longest := genid.HistoryEntry{Seq: 1, Reason: strings.Repeat("x", MaxLine-len(base))}
	line, err := Line(&longest)
	if err != nil || len(line) != MaxLine {
		t.Fatalf("a line of %d bytes: %v", len(line), err)
	}
	if back, _, bad, err := Read(bytes.NewReader(line), 3); err != nil || bad != 0 || back.Get(1) == nil {
		t.Fatalf("the longest line not read back: %d bad, %v", bad, err)
	}
	longest.Reason += "x"
	if _, err := Line(&longest); err == nil {
		t.Fatal("a line too long to read back is written")
	}
}

func TestCompact(t *testing.T) {
	if Compact(511, 256) || !Compact(512, 256) || !Compact(600, 256) {
		t.Fatal("compact at twice the ring")
	}
}

type failReader struct{}

func (failReader) Read([]byte) (int, error) { return 0, fmt.Errorf("disk on fire") }

func TestReadFails(t *testing.T) {
	if _, _, _, err := Read(failReader{}, 3); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("%v", err)
	}
}
