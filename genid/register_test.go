package genid

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/genid-project/genid/internal/page"
)

// A watcher registering with a restarted daemon takes the generation of
// the answer; an event the daemon sent after it, but handed over by the
// link's reader before the answer was taken, is newer and must win, else
// the watcher misses that generation (make torture's crash case found it).
// With no event meanwhile the answer is taken, lower or not.
func TestRegisteredAfterNewerEvent(t *testing.T) {
	w := pageWatcher(t)
	events := w.events // as the registration is asked
	w.event(6, 0)      // the daemon's next bump
	w.registered(5, events)
	if g, err := w.TryWait(); g != 6 || err != nil {
		t.Fatalf("after an event of 6 and a registration answered with 5: TryWait %d, %v; want 6", g, err)
	}

	w.registered(0, w.events) // a daemon that starts again at 0
	if g, err := w.TryWait(); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("after a registration answered with 0 (acked 0): TryWait %d, %v; want ErrWouldBlock", g, err)
	}
}

// pageWatcher is a watcher with no daemon, over a page at 0.
func pageWatcher(t *testing.T) *Watcher {
	path := filepath.Join(t.TempDir(), PageFile)
	if err := os.WriteFile(path, make([]byte, page.Size), 0o644); err != nil {
		t.Fatal(err)
	}
	pg, err := page.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	m := &mapping{Reader: *pg}
	m.refs.Store(1)
	t.Cleanup(func() { m.release() })
	return &Watcher{page: m, changed: make(chan struct{})}
}
