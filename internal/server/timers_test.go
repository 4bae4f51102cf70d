package server

import (
	"slices"
	"testing"
	"time"
)

// The loop's timers come due earliest first, each at its time and not
// before; a timer moved or stopped is due at its new time or never.
func TestTimerHeap(t *testing.T) {
	var h timerHeap
	ts := make([]timer, 5)
	for i, at := range []int{30, 10, 20, 50, 40} {
		ts[i] = newTimer(timerFrame, nil, nil)
		h.set(&ts[i], dur(at))
	}
	h.set(&ts[0], dur(5))  // 30 -> 5: first now
	h.set(&ts[1], dur(45)) // 10 -> 45
	h.stop(&ts[3])         // 50: never
	h.stop(&ts[3])         // stopped twice: no harm
	if next := h.next(); next != dur(5) {
		t.Fatalf("next %v, want 5", next)
	}
	var order []int // the times of the timers due, each at a now it is due at
	for _, now := range []int{4, 5, 19, 20, 39, 40, 45, 100} {
		for tm := h.due(dur(now)); tm != nil; tm = h.due(dur(now)) {
			if tm.at > dur(now) || tm.idx != -1 {
				t.Fatalf("at %d: a timer of %v, index %d", now, tm.at, tm.idx)
			}
			order = append(order, int(tm.at), now)
		}
	}
	if want := []int{5, 5, 20, 20, 40, 40, 45, 45}; !slices.Equal(order, want) {
		t.Fatalf("timers (at, when due) %v, want %v", order, want)
	}
	if h.Len() != 0 || h.next() != 0 {
		t.Fatalf("%d timers left, next %v", h.Len(), h.next())
	}
}

func dur(n int) time.Duration { return time.Duration(n) }
