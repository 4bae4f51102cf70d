package server

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/history"
	"github.com/genid-project/genid/internal/proctest"
)

// A history file that cannot be written is told once in the log, however
// many writes fail after: the history is then kept in memory only.
func TestHistoryWriteFailureLoggedOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, historyFile)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path) // read-only: every write fails
	if err != nil {
		t.Fatal(err)
	}
	statefd, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer statefd.Close()
	log := &proctest.Buffer{}
	w := startHistoryWriter(slog.New(slog.NewTextHandler(log, nil)), int(statefd.Fd()), f, 0, history.New(history.DefaultSize), time.Now)
	for i := range 3 {
		w.put(&genid.HistoryEntry{Seq: uint64(i + 1), Generation: uint32(i + 1)})
		time.Sleep(2 * historyEvery) // each its own write
	}
	w.close()
	if n := strings.Count(log.String(), "history file not written"); n != 1 {
		t.Fatalf("the failure told %d times, want once:\n%s", n, log)
	}
}

// stepClock is a clock for the history writer that moves by step at each
// reading: each reading is an hour after the last, or before it, however
// the writer's goroutine and the test interleave.
type stepClock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

func (c *stepClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(c.step)
	return c.t
}

func (c *stepClock) set(step time.Duration) {
	c.mu.Lock()
	c.step = step
	c.mu.Unlock()
}

// openHistory opens a history file in a new directory for a writer.
func openHistory(t *testing.T) (f, statefd *os.File) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.OpenFile(filepath.Join(dir, historyFile), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	statefd, err = os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { statefd.Close() })
	return f, statefd
}

// A change after a quiet spell longer than historyEvery is written at
// once: the writer waits only to gather the changes of a storm. Its clock
// moves an hour at each reading, so no real wait is needed.
func TestHistoryWriterQuietSpell(t *testing.T) {
	f, statefd := openHistory(t)
	clock := &stepClock{t: time.Now(), step: time.Hour}
	w := startHistoryWriter(slog.Default(), int(statefd.Fd()), f, 0, history.New(history.DefaultSize), clock.now)
	defer w.close()
	for seq := 1; seq <= 2; seq++ {
		w.put(&genid.HistoryEntry{Seq: uint64(seq), Generation: uint32(seq)})
		waitWritten(t, f.Name(), seq)
	}
}

// The writer gathers the changes that come while it waits, and writes each
// entry's latest state once; the file is rewritten from the writer's copy
// of the ring once it holds twice as many lines as the ring's entries. Its
// clock moves an hour forward at each reading, then an hour back: the
// writer then waits until it is closed, and writes once.
func TestHistoryWriterGathersAndCompacts(t *testing.T) {
	f, statefd := openHistory(t)
	clock := &stepClock{t: time.Now(), step: time.Hour}
	path := f.Name()
	lines := func() []string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	const size = 4
	w := startHistoryWriter(slog.Default(), int(statefd.Fd()), f, 0, history.New(size), clock.now)
	put := func(seq int, reason string) {
		w.put(&genid.HistoryEntry{Seq: uint64(seq), Generation: uint32(seq), Reason: reason})
	}
	// Each change written before the next: the file grows a line a change,
	// up to twice the ring's size, and is then rewritten with the ring.
	for seq := 1; seq <= 3*size; seq++ {
		put(seq, "")
		waitWritten(t, path, seq)
		if n := len(lines()); n >= 2*size {
			t.Fatalf("after change %d the file has %d lines, a ring of %d entries", seq, n, size)
		}
	}
	clock.set(-time.Hour)
	before := len(lines())
	put(3*size, "first")
	time.Sleep(100 * time.Millisecond) // what a writer that did not wait would have written by now
	put(3*size, "second")
	w.close()
	l := lines()
	if len(l) != before+1 || !strings.Contains(l[len(l)-1], `"reason":"second"`) {
		t.Fatalf("two changes of an entry while the writer waited: %d lines after %d, the last %s", len(l), before, l[len(l)-1])
	}
}

// waitWritten waits until the last line of the history file at path is
// entry seq's, for 5 s at most.
func waitWritten(t *testing.T, path string, seq int) {
	t.Helper()
	want := fmt.Sprintf(`"seq":%d,`, seq)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		l := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		if strings.Contains(l[len(l)-1], want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry %d not written after 5 s", seq)
		}
	}
}
