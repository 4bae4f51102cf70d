package scope

import (
	"errors"
	"testing"
)

// The first watcher registered sits at index 0 of the scope's list: it is
// as live as any other, and a wait of its owner judges it like any other.
func TestFirstWatcherIsLive(t *testing.T) {
	s := New[int](0)
	w, _ := s.Watch(1, 0, nil)
	if w.Closed() {
		t.Fatal("the only watcher reports closed")
	}
	gen := mustBump(t, s, 0).Gen
	ch, err := s.Wait(1, w)
	if err != nil || len(ch.Ended) != 1 || !errors.Is(ch.Ended[0].Err, ErrInterrupted) || s.Waiting(1) {
		t.Fatalf("the first watcher, outdated, waits: %+v %v", ch.Ended, err)
	}
	if _, err := s.Ack(w, gen); err != nil {
		t.Fatal(err)
	}
	s.Close(w)
	if !w.Closed() {
		t.Fatal("a closed watcher reports live")
	}
	if _, err := s.Ack(w, gen); !errors.Is(err, ErrClosed) {
		t.Fatalf("ack after close: %v", err)
	}
}

// A waiter whose own watcher closes waits on as a plain waiter: a later
// bump, which its closed watcher never saw, does not interrupt it, and it
// ends once no live watcher is outdated.
func TestWaiterWatcherClosed(t *testing.T) {
	s := New[int](0)
	self, _ := s.Watch(1, 0, nil)
	other, _ := s.Watch(2, 0, nil)
	gen := mustBump(t, s, 0).Gen
	s.Ack(self, gen)
	if ch, err := s.Wait(1, self); err != nil || len(ch.Ended) != 0 {
		t.Fatalf("wait with another watcher outdated: %+v %v", ch.Ended, err)
	}
	if ch := s.Close(self); len(ch.Ended) != 0 || !s.Waiting(1) {
		t.Fatalf("closing the waiter's watcher: %+v", ch.Ended)
	}
	gen = mustBump(t, s, 0).Gen
	if !s.Waiting(1) {
		t.Fatal("a bump interrupted a waiter whose watcher is closed")
	}
	ch, err := s.Ack(other, gen)
	if err != nil || len(ch.Ended) != 1 || ch.Ended[0] != (Ended[int]{1, nil}) {
		t.Fatalf("the last ack: %+v %v", ch.Ended, err)
	}
	recount(t, s)
}
