// Package scope is the state machine of one generation counter, as the
// sysgenid driver proposal defined it: the generation, the watchers and the
// generation each acknowledged, the exact count of outdated watchers, and
// the callers waiting for that count to reach zero (the barrier).
//
// It does no I/O and takes no locks. One goroutine (the daemon's event
// loop) calls it; each call that can change something returns a Change,
// the work left to the caller, which carries it out in the order Change
// documents. The watchers' owners are the caller's values (the daemon's
// connections): the scope never calls back into them.
package scope

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Errors of the state machine. The daemon maps each to a protocol result.
var (
	// ErrStale: an ack of a generation that is not the current one.
	ErrStale = errors.New("stale generation")
	// ErrOverflow: the bump would leave the counter at its maximum, where
	// no later bump (a restore) could move it on.
	ErrOverflow = errors.New("generation overflow")
	// ErrInterrupted: a wait by a watcher that is (or became) outdated,
	// which would otherwise wait on itself.
	ErrInterrupted = errors.New("interrupted: the waiter itself is outdated")
	// ErrClosed: an ack on a watcher that was closed.
	ErrClosed = errors.New("watcher closed")
	// ErrBusy: a second wait by the same owner.
	ErrBusy = errors.New("a wait is already pending for this owner")
)

// Max is the highest generation a bump may reach: one below the u32
// maximum, so that a counter can always be bumped once more (a restore
// needs that).
const Max = math.MaxUint32 - 1

// Scope is one generation counter and its watchers. T identifies an owner:
// the caller's handle of whoever registered a watcher or waits.
type Scope[T comparable] struct {
	gen      uint32
	watchers []*Watcher[T]
	outdated int // the watchers whose acked is not gen, exactly
	last     Bump
	waits    map[T]*wait[T]
}

// Watcher is a registration: the generation it last acknowledged.
type Watcher[T comparable] struct {
	owner T
	pid   int
	acked uint32
	idx   int // in Scope.watchers; -1 once closed
}

type wait[T comparable] struct {
	self *Watcher[T] // the owner's own watcher, if it has one
}

// Bump records a scope's last bump.
type Bump struct {
	Generation uint32    `json:"generation"`
	Reason     string    `json:"reason"`
	Time       time.Time `json:"time"`
}

// Change is the work a call leaves to the caller, to be done in this order:
//  1. if Bumped, make Gen visible (write the page) before anything else, so
//     that whoever is told can read it;
//  2. send Gen, as an event, to each owner in Notify;
//  3. answer each wait in Ended.
type Change[T comparable] struct {
	Gen    uint32
	Bumped bool
	Notify []T
	Ended  []Ended[T]
}

// Ended is a wait that ended: Err is nil when no watcher is outdated, or
// ErrInterrupted.
type Ended[T comparable] struct {
	Owner T
	Err   error
}

// New returns a scope at generation gen, with no watchers.
func New[T comparable](gen uint32) *Scope[T] {
	return &Scope[T]{gen: gen, waits: make(map[T]*wait[T])}
}

// Generation returns the current generation.
func (s *Scope[T]) Generation() uint32 { return s.gen }

// Outdated returns the number of watchers that have not acked the current
// generation.
func (s *Scope[T]) Outdated() int { return s.outdated }

// Len returns the number of watchers.
func (s *Scope[T]) Len() int { return len(s.watchers) }

// LastBump returns the record of the last bump (zero if none).
func (s *Scope[T]) LastBump() Bump { return s.last }

// Watchers returns the registered watchers. The slice is the scope's: it
// must not be kept across calls that change the scope.
func (s *Scope[T]) Watchers() []*Watcher[T] { return s.watchers }

// Watch registers a watcher for owner, with the given acked generation (nil:
// the current one, so it starts up to date). A watcher that starts outdated
// (its acked generation is not the current one: an older one, or even a
// newer one, as a client re-attaching after a daemon restart may hold) is
// notified at once, and a pending wait of its owner is interrupted.
func (s *Scope[T]) Watch(owner T, pid int, acked *uint32) (*Watcher[T], Change[T]) {
	w := &Watcher[T]{owner: owner, pid: pid, acked: s.gen, idx: len(s.watchers)}
	if acked != nil {
		w.acked = *acked
	}
	s.watchers = append(s.watchers, w)
	ch := Change[T]{Gen: s.gen}
	if wt := s.waits[owner]; wt != nil {
		wt.self = w
	}
	if w.acked != s.gen {
		s.outdated++
		ch.Notify = []T{owner}
		if s.waits[owner] != nil {
			delete(s.waits, owner)
			ch.Ended = []Ended[T]{{owner, ErrInterrupted}}
		}
	}
	return w, ch
}

// Bump moves the generation to max(current+1, min) and notifies every
// watcher. The caller checks privilege; reason and now are recorded.
func (s *Scope[T]) Bump(min uint32, reason string, now time.Time) (Change[T], error) {
	next := max(uint64(s.gen)+1, uint64(min))
	if next > Max {
		return Change[T]{Gen: s.gen}, fmt.Errorf("bump from %d to %d would leave the counter at its maximum %d, which no later restore could bump past: %w",
			s.gen, next, uint32(math.MaxUint32), ErrOverflow)
	}
	s.gen = uint32(next)
	s.last = Bump{Generation: s.gen, Reason: reason, Time: now}
	ch := Change[T]{Gen: s.gen, Bumped: true, Notify: make([]T, 0, len(s.watchers))}
	// Counted, not assumed to be every watcher: one attached with an acked
	// generation from ahead of the old one may have acked this one already.
	s.outdated = 0
	for _, w := range s.watchers {
		if w.acked != s.gen {
			s.outdated++
		}
		ch.Notify = append(ch.Notify, w.owner)
	}
	s.endWaits(&ch)
	return ch, nil
}

// Ack acknowledges gen for w, which must be the current generation. Acking
// twice is harmless.
func (s *Scope[T]) Ack(w *Watcher[T], gen uint32) (Change[T], error) {
	ch := Change[T]{Gen: s.gen}
	if w.idx < 0 {
		return ch, ErrClosed
	}
	if gen != s.gen {
		return ch, fmt.Errorf("ack of %d, current is %d: %w", gen, s.gen, ErrStale)
	}
	if w.acked != s.gen {
		w.acked = gen
		s.outdated--
		s.endWaits(&ch)
	}
	return ch, nil
}

// Close unregisters w; an outdated watcher stops counting. Closing twice is
// harmless.
func (s *Scope[T]) Close(w *Watcher[T]) Change[T] {
	ch := Change[T]{Gen: s.gen}
	if w.idx < 0 {
		return ch
	}
	last := s.watchers[len(s.watchers)-1]
	s.watchers[w.idx], last.idx = last, w.idx
	s.watchers[len(s.watchers)-1] = nil
	s.watchers = s.watchers[:len(s.watchers)-1]
	w.idx = -1
	if wt := s.waits[w.owner]; wt != nil && wt.self == w {
		wt.self = nil
	}
	if w.acked != s.gen {
		s.outdated--
		s.endWaits(&ch)
	}
	return ch
}

// Wait starts a wait of owner for no watcher to be outdated (self, if not
// nil, is owner's own watcher). It ends at once when no watcher is outdated
// (nil) or self is outdated (ErrInterrupted): the Change's Ended then holds
// it. Otherwise it is pending, and a later Change ends it. An owner has at
// most one pending wait (else ErrBusy).
func (s *Scope[T]) Wait(owner T, self *Watcher[T]) (Change[T], error) {
	ch := Change[T]{Gen: s.gen}
	if s.waits[owner] != nil {
		return ch, ErrBusy
	}
	if self != nil && self.idx < 0 {
		self = nil
	}
	switch {
	case self != nil && self.acked != s.gen:
		ch.Ended = []Ended[T]{{owner, ErrInterrupted}}
	case s.outdated == 0:
		ch.Ended = []Ended[T]{{owner, nil}}
	default:
		s.waits[owner] = &wait[T]{self: self}
	}
	return ch, nil
}

// Waiting reports whether owner has a pending wait.
func (s *Scope[T]) Waiting(owner T) bool { return s.waits[owner] != nil }

// CancelWait drops owner's pending wait (its timeout passed, or it went
// away), and reports whether there was one.
func (s *Scope[T]) CancelWait(owner T) bool {
	if s.waits[owner] == nil {
		return false
	}
	delete(s.waits, owner)
	return true
}

// endWaits ends the pending waits that the current state answers.
func (s *Scope[T]) endWaits(ch *Change[T]) {
	for owner, wt := range s.waits {
		var err error
		switch {
		case wt.self != nil && wt.self.acked != s.gen:
			err = ErrInterrupted
		case s.outdated == 0:
		default:
			continue
		}
		delete(s.waits, owner)
		ch.Ended = append(ch.Ended, Ended[T]{owner, err})
	}
}

// Owner returns the owner the watcher was registered for.
func (w *Watcher[T]) Owner() T { return w.owner }

// PID returns the process id the watcher was registered with.
func (w *Watcher[T]) PID() int { return w.pid }

// Acked returns the generation the watcher last acknowledged.
func (w *Watcher[T]) Acked() uint32 { return w.acked }

// Closed reports whether the watcher was closed.
func (w *Watcher[T]) Closed() bool { return w.idx < 0 }
