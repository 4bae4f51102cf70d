package server

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/history"
	"github.com/genid-project/genid/internal/proctest"
)

// openHistory opens a history file in a new directory, and keeps it.
func openHistory(t *testing.T, flag int) *historyStore {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, historyFile)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	statefd, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	hs := newHistoryStore(int(statefd.Fd()), f, 0)
	t.Cleanup(func() {
		hs.file.Close()
		statefd.Close()
	})
	return hs
}

// readLines reads the lines of the history file f writes to: by its
// descriptor, which names the file that took its name after a rewrite.
func (f *historyStore) readLines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", f.file.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// A history file that cannot be written is told once in the log, however
// many writes fail after: the history is then kept in memory only.
func TestHistoryWriteFailureLoggedOnce(t *testing.T) {
	log := &proctest.Buffer{}
	s := &Server{log: slog.New(slog.NewTextHandler(log, nil)), obs: observer{ring: history.New(history.DefaultSize)}}
	s.obs.file = openHistory(t, os.O_RDONLY) // every write fails
	for i := range 3 {
		seq := s.obs.ring.Add(genid.HistoryEntry{Generation: uint32(i + 1)})
		now := time.Duration(i+1) * time.Hour
		s.obs.file.mark(seq, now)
		s.writeHistory(now)
	}
	if n := strings.Count(log.String(), "history file not written"); n != 1 {
		t.Fatalf("the failure told %d times, want once:\n%s", n, log)
	}
}

// A change after a quiet spell of historyEvery or more is written at once;
// one that comes sooner after a write waits until historyEvery has passed
// since it, and a round with nothing to write does not count as one.
func TestHistoryStoreWhen(t *testing.T) {
	f := openHistory(t, os.O_WRONLY|os.O_APPEND)
	ring := history.New(history.DefaultSize)
	const t0 = time.Hour
	seq := ring.Add(genid.HistoryEntry{})
	if at := f.mark(seq, t0); at != t0 {
		t.Fatalf("the first change: written at %v, want at once (%v)", at, t0)
	}
	if err := f.write(ring, t0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		now, want time.Duration
	}{
		{t0 + time.Millisecond, t0 + historyEvery},
		{t0 + historyEvery - 1, t0 + historyEvery},
		{t0 + historyEvery, t0 + historyEvery},
		{t0 + historyEvery + 1, t0 + historyEvery + 1},
		{t0 + time.Hour, t0 + time.Hour},
	} {
		if at := f.mark(seq, c.now); at != c.want {
			t.Errorf("a change at %v, %v after the last write: written at %v, want %v", c.now, c.now-t0, at, c.want)
		}
	}
	clear(f.changed)
	if err := f.write(ring, 2*t0); err != nil { // nothing to write
		t.Fatal(err)
	}
	if at := f.mark(seq, 2*t0+time.Millisecond); at != 2*t0+time.Millisecond {
		t.Errorf("after a round with nothing written: written at %v, want at once", at)
	}
	if n := len(f.readLines(t)); n != 1 {
		t.Errorf("%d lines, want 1", n)
	}
}

// The changes gathered between two writes are written once each, with each
// entry's latest state, oldest first; the file is rewritten from the ring
// once it would hold twice as many lines as the ring's entries.
func TestHistoryStoreGathersAndCompacts(t *testing.T) {
	f := openHistory(t, os.O_WRONLY|os.O_APPEND)
	const size = 4
	ring := history.New(size)
	now := time.Hour
	write := func() {
		t.Helper()
		if err := f.write(ring, now); err != nil {
			t.Fatal(err)
		}
		now += time.Hour
	}
	// Each change written before the next: the file grows a line a change,
	// up to twice the ring's size, and is then rewritten with the ring.
	for i := 1; i <= 3*size; i++ {
		f.mark(ring.Add(genid.HistoryEntry{Generation: uint32(i)}), now)
		write()
		l := f.readLines(t)
		if !strings.Contains(l[len(l)-1], fmt.Sprintf(`"seq":%d,`, i)) {
			t.Fatalf("after change %d the last line is %s", i, l[len(l)-1])
		}
		want := i
		if i >= 2*size {
			want = size + (i-2*size)%size // rewritten at 2*size, and again at 3*size
		}
		if len(l) != want || f.lines != want {
			t.Fatalf("after change %d: %d lines (%d counted), want %d", i, len(l), f.lines, want)
		}
	}
	before := f.lines
	last := ring.Last()
	e := ring.Get(last)
	older := ring.Get(last - 1)
	e.Reason = "first"
	f.mark(last, now)
	older.Reason = "older"
	f.mark(last-1, now)
	e.Reason = "second"
	f.mark(last, now)
	write()
	l := f.readLines(t)
	if len(l) != before+2 || !strings.Contains(l[len(l)-2], `"reason":"older"`) || !strings.Contains(l[len(l)-1], `"reason":"second"`) {
		t.Fatalf("three changes of two entries: %d lines after %d, the last two:\n%s", len(l), before, strings.Join(l[len(l)-2:], "\n"))
	}
	write() // nothing changed since
	if n := len(f.readLines(t)); n != before+2 {
		t.Errorf("a write with nothing changed: %d lines, want %d", n, before+2)
	}
}
