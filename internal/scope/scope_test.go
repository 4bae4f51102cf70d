package scope

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

var now = time.Unix(1700000000, 0)

// recount checks the invariant the kernel patch broke: the outdated count is
// exactly the number of watchers whose acked is not the current generation.
func recount(t *testing.T, s *Scope[int]) {
	t.Helper()
	n := 0
	for i, w := range s.watchers {
		if w.idx != i {
			t.Fatalf("watcher %d holds index %d", i, w.idx)
		}
		if w.acked != s.gen {
			n++
		}
	}
	if n != s.outdated {
		t.Fatalf("outdated count %d, but %d watchers are outdated", s.outdated, n)
	}
}

func mustBump(t *testing.T, s *Scope[int], min uint32) Change[int] {
	t.Helper()
	ch, err := s.Bump(min, "test", now)
	if err != nil {
		t.Fatalf("Bump(%d): %v", min, err)
	}
	return ch
}

func TestBumpSemantics(t *testing.T) {
	s := New[int](0)
	for _, st := range []struct{ min, want uint32 }{
		{0, 1}, {0, 2}, {10, 10}, {5, 11}, {11, 12}, {100, 100},
	} {
		ch := mustBump(t, s, st.min)
		if ch.Gen != st.want || !ch.Bumped || s.Generation() != st.want {
			t.Fatalf("Bump(%d) = %+v, generation %d; want %d", st.min, ch, s.Generation(), st.want)
		}
	}
	if r := s.LastBump(); r.Generation != 100 || r.Reason != "test" || !r.Time.Equal(now) {
		t.Fatalf("last bump %+v", r)
	}
}

// A bump that would leave the counter at the u32 maximum is refused, and
// changes nothing: the counter must always be able to move once more.
func TestOverflowRefused(t *testing.T) {
	s := New[int](Max - 1)
	s.Watch(1, 0, nil)
	if ch := mustBump(t, s, 0); ch.Gen != Max {
		t.Fatalf("bump to Max: %+v", ch)
	}
	for _, min := range []uint32{0, Max, math.MaxUint32} {
		ch, err := s.Bump(min, "x", now)
		if !errors.Is(err, ErrOverflow) || ch.Bumped || len(ch.Notify) != 0 {
			t.Fatalf("Bump(%d) at Max: %+v, %v", min, ch, err)
		}
	}
	s2 := New[int](5)
	if _, err := s2.Bump(math.MaxUint32, "crafted", now); !errors.Is(err, ErrOverflow) || s2.Generation() != 5 {
		t.Fatalf("a bump to the maximum: %v, generation %d", err, s2.Generation())
	}
	recount(t, s)
}

func TestAckAndOutdated(t *testing.T) {
	s := New[int](3)
	a, ch := s.Watch(1, 0, nil)
	b, _ := s.Watch(2, 0, nil)
	if ch.Gen != 3 || len(ch.Notify) != 0 || a.Acked() != 3 || s.Outdated() != 0 {
		t.Fatalf("new watchers must start up to date: %+v acked %d outdated %d", ch, a.Acked(), s.Outdated())
	}
	ch = mustBump(t, s, 0)
	if s.Outdated() != 2 || !slices.Equal(sorted(ch.Notify), []int{1, 2}) {
		t.Fatalf("after bump: outdated %d, notify %v", s.Outdated(), ch.Notify)
	}
	for _, g := range []uint32{3, 5} {
		if _, err := s.Ack(a, g); !errors.Is(err, ErrStale) {
			t.Fatalf("ack of %d at 4: %v", g, err)
		}
	}
	if _, err := s.Ack(a, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ack(a, 4); err != nil {
		t.Fatalf("second ack: %v", err)
	}
	if s.Outdated() != 1 {
		t.Fatalf("outdated %d after one ack (twice)", s.Outdated())
	}
	s.Close(b)
	s.Close(b)
	if s.Outdated() != 0 || s.Len() != 1 || !b.Closed() {
		t.Fatalf("closing an outdated watcher must lower the count: %d", s.Outdated())
	}
	if _, err := s.Ack(b, 4); !errors.Is(err, ErrClosed) {
		t.Fatalf("ack after close: %v", err)
	}
	// A watcher restored from a checkpoint starts outdated, and is told.
	old := uint32(2)
	r, ch := s.Watch(3, 0, &old)
	if r.Acked() == s.Generation() || s.Outdated() != 1 || !slices.Equal(ch.Notify, []int{3}) {
		t.Fatalf("a watcher with an old acked generation must be outdated and told: %+v", ch)
	}
	recount(t, s)
}

func sorted(s []int) []int { return slices.Sorted(slices.Values(s)) }

func TestWaits(t *testing.T) {
	s := New[int](0)
	a, _ := s.Watch(1, 0, nil)
	self, _ := s.Watch(2, 0, nil)
	ended := func(ch Change[int], err error) []Ended[int] {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return ch.Ended
	}
	if e := ended(s.Wait(9, nil)); len(e) != 1 || e[0] != (Ended[int]{9, nil}) {
		t.Fatalf("no outdated watcher: %v", e)
	}
	gen := mustBump(t, s, 0).Gen

	// Outdated itself: interrupted at once, never waiting on itself.
	if e := ended(s.Wait(2, self)); len(e) != 1 || !errors.Is(e[0].Err, ErrInterrupted) {
		t.Fatalf("outdated caller: %v", e)
	}
	s.Ack(self, gen)
	if e := ended(s.Wait(2, self)); len(e) != 0 || !s.Waiting(2) {
		t.Fatalf("a watcher is outdated: ended %v", e)
	}
	if _, err := s.Wait(2, self); !errors.Is(err, ErrBusy) {
		t.Fatalf("second wait: %v", err)
	}
	if e := ended(s.Wait(7, nil)); len(e) != 0 {
		t.Fatalf("a second waiter: %v", e)
	}
	ch, _ := s.Ack(a, gen)
	if got := ch.Ended; len(got) != 2 || got[0].Err != nil || got[1].Err != nil || s.Waiting(2) || s.Waiting(7) {
		t.Fatalf("the last ack ends both waits: %v", got)
	}

	// The waiter becoming outdated while it waits is interrupted; the
	// others wait on (a stays outdated).
	gen = mustBump(t, s, 0).Gen
	s.Ack(self, gen)
	s.Wait(2, self)
	s.Wait(7, nil)
	ch = mustBump(t, s, 0)
	if len(ch.Ended) != 1 || ch.Ended[0].Owner != 2 || !errors.Is(ch.Ended[0].Err, ErrInterrupted) || !s.Waiting(7) {
		t.Fatalf("a bump with two waits pending: %+v", ch.Ended)
	}
	// A waiter that becomes a watcher, outdated, is interrupted too.
	if !s.CancelWait(7) || s.CancelWait(7) {
		t.Fatal("CancelWait")
	}
	s.Wait(8, nil)
	old := uint32(0)
	if _, ch := s.Watch(8, 0, &old); len(ch.Ended) != 1 || !errors.Is(ch.Ended[0].Err, ErrInterrupted) {
		t.Fatalf("waiter turned outdated watcher: %+v", ch.Ended)
	}
	// Closing the outdated watchers ends a wait with success.
	s.Wait(9, nil)
	var last Change[int]
	for _, w := range slices.Clone(s.Watchers()) {
		last = s.Close(w)
	}
	if len(last.Ended) != 1 || last.Ended[0] != (Ended[int]{9, nil}) {
		t.Fatalf("last outdated watcher closed: %+v", last.Ended)
	}
	recount(t, s)
}

// A watcher attached with an acked generation ahead of the current one (a
// client re-attaching after a daemon restart may hold one) is outdated until
// the generation reaches it; a bump to exactly that generation must not
// count it, or its ack and close never bring the count back to zero.
func TestWatchAckedAhead(t *testing.T) {
	s := New[int](3)
	ahead := uint32(4)
	w, _ := s.Watch(1, 0, &ahead)
	if s.Outdated() != 1 {
		t.Fatalf("acked ahead: count %d", s.Outdated())
	}
	mustBump(t, s, 0) // to 4: what w acked
	recount(t, s)
	if s.Outdated() != 0 {
		t.Fatalf("bumped to its acked generation: count %d", s.Outdated())
	}
	if _, err := s.Ack(w, 4); err != nil {
		t.Fatal(err)
	}
	s.Close(w)
	if ch, _ := s.Wait(1, nil); len(ch.Ended) != 1 {
		t.Fatal("outdated count left above zero")
	}
	ahead = 6
	w, _ = s.Watch(1, 0, &ahead)
	mustBump(t, s, 10)
	recount(t, s)
	if s.Outdated() != 1 {
		t.Fatalf("bumped past its acked generation: count %d", s.Outdated())
	}
	s.Ack(w, 10)
	recount(t, s)
}

// TestModel runs random operations against a plain model of the semantics
// and checks the count, the notifications and the waits after each.
func TestModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		s := New[int](uint32(rng.IntN(5)))
		live := map[int]*Watcher[int]{}
		waiting := map[int]bool{}
		next := 0
		for range 300 {
			switch op := rng.IntN(10); {
			case op < 3:
				next++
				var acked *uint32
				if rng.IntN(3) == 0 {
					a := uint32(rng.IntN(int(s.gen) + 3))
					acked = &a
				}
				w, ch := s.Watch(next, next, acked)
				live[next] = w
				if outdated := w.acked != s.gen; outdated != (len(ch.Notify) == 1) {
					t.Fatalf("round %d: watch acked %d at %d notified %v", round, w.acked, s.gen, ch.Notify)
				}
			case op < 5:
				prev := s.gen
				ch, err := s.Bump(s.gen+uint32(rng.IntN(3)), "m", now)
				if err != nil || ch.Gen <= prev || len(ch.Notify) != len(live) {
					t.Fatalf("round %d: bump %+v %v", round, ch, err)
				}
				for _, e := range ch.Ended {
					delete(waiting, e.Owner)
				}
			case op < 8 && len(live) > 0:
				id := pick(rng, live)
				ch, err := s.Ack(live[id], s.gen)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range ch.Ended {
					delete(waiting, e.Owner)
				}
			case op < 9 && len(live) > 0:
				id := pick(rng, live)
				ch := s.Close(live[id])
				delete(live, id)
				for _, e := range ch.Ended {
					delete(waiting, e.Owner)
				}
			default:
				owner := 1000 + rng.IntN(5)
				if waiting[owner] {
					continue
				}
				ch, err := s.Wait(owner, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(ch.Ended) == 0 {
					waiting[owner] = true
				} else if s.outdated != 0 {
					t.Fatalf("round %d: a wait ended with %d outdated", round, s.outdated)
				}
			}
			recount(t, s)
			if len(waiting) > 0 && s.outdated == 0 {
				t.Fatalf("round %d: %d waits pending with no watcher outdated", round, len(waiting))
			}
			if len(s.waits) != len(waiting) {
				t.Fatalf("round %d: scope has %d waits, model %d", round, len(s.waits), len(waiting))
			}
		}
	}
}

func pick(rng *rand.Rand, m map[int]*Watcher[int]) int {
	keys := slices.Sorted(func(yield func(int) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
	return keys[rng.IntN(len(keys))]
}
