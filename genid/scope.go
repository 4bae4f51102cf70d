package genid

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// Scope is one generation counter and the watchers of it: the state machine
// of the sysgenid driver, without I/O. Every method is safe for concurrent use.
//
// All counting happens under one mutex, so a close or an ack racing a bump can
// neither lose nor double-count an outdated watcher (the races of the kernel
// patch). A daemon may hold several scopes: one per container, one for the VM.
type Scope struct {
	publish func(uint32) // makes a new generation visible (the page) before anyone is told

	mu       sync.Mutex
	gen      uint32
	watchers map[*Registration]struct{}
	outdated int // the watchers whose acked is not gen, exactly
	last     BumpRecord
	changed  chan struct{} // closed and replaced on every bump, ack and close: wakes waiters

	// fanout is taken before mu and held through a bump's notifications, so
	// that those of successive bumps run in order. mu is not held meanwhile:
	// notify functions may call the scope.
	fanout sync.Mutex
}

// BumpRecord describes the last bump of a scope.
type BumpRecord struct {
	Generation uint32    `json:"generation"`
	Reason     string    `json:"reason"`
	Time       time.Time `json:"time"`
}

// Registration is one watcher registered with a Scope: the generation it
// last acknowledged and how to tell it about a new one.
type Registration struct {
	scope  *Scope
	pid    int
	notify func(gen uint32)

	// Guarded by scope.mu.
	acked  uint32
	closed bool
}

// WatcherInfo is a watcher as status reports it.
type WatcherInfo struct {
	PID      int    `json:"pid"`
	Acked    uint32 `json:"acked"`
	Outdated bool   `json:"outdated"`
}

// NewScope returns a scope at generation gen. publish, if not nil, is called
// with each new generation under the scope's lock before any watcher is
// notified; it must not block.
func NewScope(gen uint32, publish func(uint32)) *Scope {
	if publish == nil {
		publish = func(uint32) {}
	}
	return &Scope{
		publish:  publish,
		gen:      gen,
		watchers: make(map[*Registration]struct{}),
		changed:  make(chan struct{}),
	}
}

// Generation returns the current generation.
func (s *Scope) Generation() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// Outdated returns the number of watchers whose acked generation is not the
// current one.
func (s *Scope) Outdated() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outdated
}

// Watch registers a watcher with the given acked generation (nil: the
// current one, so the watcher starts up to date). notify is called, without
// locks held and in bump order, with each new generation; it must not block
// for long. A watcher that starts outdated (acked is not the current
// generation: an older one, or even a newer one, as a client re-attaching
// after a daemon restart may hold) is notified once at registration, before
// any later bump's notification. It returns the watcher and the current
// generation at registration.
func (s *Scope) Watch(pid int, acked *uint32, notify func(gen uint32)) (*Registration, uint32) {
	if notify == nil {
		notify = func(uint32) {}
	}
	if acked == nil {
		w, gen, _ := s.register(pid, nil, notify)
		return w, gen
	}
	// Its first notification is ordered with the bumps' fan-outs: a bump
	// that follows registration must not be overtaken by an older
	// generation.
	s.fanout.Lock()
	defer s.fanout.Unlock()
	w, gen, outdated := s.register(pid, acked, notify)
	if outdated {
		notify(gen)
	}
	return w, gen
}

// register adds a watcher and reports whether it starts outdated.
func (s *Scope) register(pid int, acked *uint32, notify func(gen uint32)) (*Registration, uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &Registration{scope: s, pid: pid, notify: notify, acked: s.gen}
	if acked != nil {
		w.acked = *acked
	}
	s.watchers[w] = struct{}{}
	outdated := w.acked != s.gen
	if outdated {
		s.outdated++
	}
	return w, s.gen, outdated
}

// Bump moves the generation to max(current+1, min) and notifies every
// watcher. Callers check privilege; reason and time are recorded.
//
// fanout is taken first: a second bump waits for the first one's fan-out
// without holding mu, which that fan-out's notify functions may need (the
// daemon re-checks pending waits there).
func (s *Scope) Bump(min uint32, reason string) (uint32, error) {
	s.fanout.Lock()
	defer s.fanout.Unlock()
	next, notify, err := s.advance(min, reason)
	if err != nil {
		return 0, err
	}
	for _, n := range notify {
		n(next)
	}
	return next, nil
}

// advance moves the generation and recounts the outdated watchers, under
// mu; it returns the notify functions to call.
func (s *Scope) advance(min uint32, reason string) (uint32, []func(uint32), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == math.MaxUint32 {
		return 0, nil, fmt.Errorf("bump from %d: %w", s.gen, ErrOverflow)
	}
	next := max(s.gen+1, min)
	s.publish(next)
	s.gen = next
	s.last = BumpRecord{Generation: next, Reason: reason, Time: time.Now()}
	// Counted, not assumed to be every watcher: one attached with an acked
	// generation from ahead of the old one may have acked next already.
	s.outdated = 0
	notify := make([]func(uint32), 0, len(s.watchers))
	for w := range s.watchers {
		if w.acked != next {
			s.outdated++
		}
		notify = append(notify, w.notify)
	}
	s.wakeLocked()
	return next, notify, nil
}

// LastBump returns the record of the last bump (zero if none since start).
func (s *Scope) LastBump() BumpRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Watchers lists the registered watchers.
func (s *Scope) Watchers() []WatcherInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]WatcherInfo, 0, len(s.watchers))
	for w := range s.watchers {
		list = append(list, WatcherInfo{PID: w.pid, Acked: w.acked, Outdated: w.acked != s.gen})
	}
	return list
}

// WaitWatchers returns nil once no watcher is outdated, ErrInterrupted at once
// if self (may be nil) is or becomes outdated, and ctx.Err() when ctx ends.
func (s *Scope) WaitWatchers(ctx context.Context, self *Registration) error {
	for {
		s.mu.Lock()
		if self != nil && !self.closed && self.acked != s.gen {
			s.mu.Unlock()
			return ErrInterrupted
		}
		if s.outdated == 0 {
			s.mu.Unlock()
			return nil
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// wakeLocked wakes every WaitWatchers call to look again.
func (s *Scope) wakeLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Acked returns the generation the watcher last acknowledged.
func (w *Registration) Acked() uint32 {
	w.scope.mu.Lock()
	defer w.scope.mu.Unlock()
	return w.acked
}

// PID returns the process id the watcher was registered with.
func (w *Registration) PID() int { return w.pid }

// Outdated reports whether the watcher has not acked the current generation.
func (w *Registration) Outdated() bool {
	w.scope.mu.Lock()
	defer w.scope.mu.Unlock()
	return !w.closed && w.acked != w.scope.gen
}

// Ack acknowledges gen, which must be the current generation. Acking twice is
// harmless.
func (w *Registration) Ack(gen uint32) error {
	s := w.scope
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	if gen != s.gen {
		return fmt.Errorf("ack %d, current is %d: %w", gen, s.gen, ErrStale)
	}
	if w.acked != s.gen {
		w.acked = gen
		s.outdated--
		s.wakeLocked()
	}
	return nil
}

// Close unregisters the watcher; an outdated one stops counting. Closing
// twice is harmless.
func (w *Registration) Close() {
	s := w.scope
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	delete(s.watchers, w)
	if w.acked != s.gen {
		s.outdated--
		s.wakeLocked()
	}
}
