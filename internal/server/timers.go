package server

import (
	"container/heap"
	"time"
)

// timer is something the loop must do at a time: end a connection whose
// frame (or drain) is overdue, time a wait-watchers out, end a restore that
// never finished, write the history's file. Timers live in the structs they
// belong to, and the loop keeps the scheduled ones in a heap: few at any
// time, and none while the daemon is idle.
type timer struct {
	at   time.Duration // on the loop's clock
	idx  int           // in the heap; -1 when not scheduled
	kind timerKind
	c    *conn
	st   *scopeState
}

type timerKind uint8

const (
	timerFrame   timerKind = iota // c's frame in part, or its drain
	timerWait                     // c's wait-watchers
	timerRestore                  // st's restore window
	timerHistory                  // the history's file has changes to write
)

func newTimer(kind timerKind, c *conn, st *scopeState) timer {
	return timer{idx: -1, kind: kind, c: c, st: st}
}

type timerHeap []*timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *timerHeap) Push(x any) {
	t := x.(*timer)
	t.idx = len(*h)
	*h = append(*h, t)
}
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.idx = -1
	return t
}

// set schedules t at at, or moves it there.
func (h *timerHeap) set(t *timer, at time.Duration) {
	t.at = at
	if t.idx >= 0 {
		heap.Fix(h, t.idx)
	} else {
		heap.Push(h, t)
	}
}

// stop unschedules t, if it was.
func (h *timerHeap) stop(t *timer) {
	if t.idx >= 0 {
		heap.Remove(h, t.idx)
	}
}

// due pops the next timer that is due at now, or returns nil.
func (h *timerHeap) due(now time.Duration) *timer {
	if len(*h) == 0 || (*h)[0].at > now {
		return nil
	}
	return heap.Pop(h).(*timer)
}

// next is when the earliest timer is due; 0 if none.
func (h timerHeap) next() time.Duration {
	if len(h) == 0 {
		return 0
	}
	return h[0].at
}
