package genid

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recount checks the invariant the kernel patch broke: the outdated count is
// exactly the number of registrations whose acked is not the current value.
func recount(t *testing.T, s *Scope) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for w := range s.watchers {
		if w.acked != s.gen {
			n++
		}
	}
	if n != s.outdated {
		t.Fatalf("outdated count %d, but %d registrations are outdated", s.outdated, n)
	}
}

func TestBumpSemantics(t *testing.T) {
	s := NewScope(0, nil)
	steps := []struct {
		min, want uint32
	}{
		{0, 1}, {0, 2}, {10, 10}, {5, 11}, {11, 12}, {100, 100},
	}
	for _, st := range steps {
		got, err := s.Bump(st.min, "test")
		if err != nil || got != st.want {
			t.Fatalf("Bump(%d) = %d, %v; want %d", st.min, got, err, st.want)
		}
	}
	if r := s.LastBump(); r.Generation != 100 || r.Reason != "test" || r.Time.IsZero() {
		t.Fatalf("last bump %+v", r)
	}
	min, err := MinAvoiding(100)
	if err != nil || min != 101 {
		t.Fatalf("MinAvoiding(100) = %d, %v", min, err)
	}
	if got, _ := s.Bump(min, "avoid"); got != 101 {
		t.Fatalf("avoid 100 gave %d", got)
	}
	if _, err := MinAvoiding(math.MaxUint32); !errors.Is(err, ErrOverflow) {
		t.Fatalf("MinAvoiding(max) err = %v", err)
	}
}

func TestOverflowRefused(t *testing.T) {
	s := NewScope(math.MaxUint32-1, nil)
	if g, err := s.Bump(0, "x"); err != nil || g != math.MaxUint32 {
		t.Fatalf("last bump: %d, %v", g, err)
	}
	if _, err := s.Bump(0, "x"); !errors.Is(err, ErrOverflow) {
		t.Fatalf("bump past max: %v", err)
	}
	if g := s.Generation(); g != math.MaxUint32 {
		t.Fatalf("generation moved to %d", g)
	}
}

func TestAckAndOutdated(t *testing.T) {
	s := NewScope(3, nil)
	a, g := s.Watch(1, nil, nil)
	b, _ := s.Watch(2, nil, nil)
	if g != 3 || a.Acked() != 3 || s.Outdated() != 0 {
		t.Fatalf("new watchers must start up to date: gen %d acked %d outdated %d", g, a.Acked(), s.Outdated())
	}
	s.Bump(0, "t")
	if s.Outdated() != 2 || !a.Outdated() {
		t.Fatalf("after bump: outdated %d", s.Outdated())
	}
	if err := a.Ack(3); !errors.Is(err, ErrStale) {
		t.Fatalf("ack of old generation: %v", err)
	}
	if err := a.Ack(5); !errors.Is(err, ErrStale) {
		t.Fatalf("ack of future generation: %v", err)
	}
	if err := a.Ack(4); err != nil {
		t.Fatal(err)
	}
	if err := a.Ack(4); err != nil {
		t.Fatalf("second ack: %v", err)
	}
	if s.Outdated() != 1 {
		t.Fatalf("outdated %d after one ack (twice)", s.Outdated())
	}
	b.Close()
	b.Close()
	if s.Outdated() != 0 || len(s.Watchers()) != 1 {
		t.Fatalf("closing an outdated watcher must lower the count: %d", s.Outdated())
	}
	if err := b.Ack(4); !errors.Is(err, ErrClosed) {
		t.Fatalf("ack after close: %v", err)
	}
	// A registration restored from a checkpoint starts outdated.
	old := uint32(2)
	r, _ := s.Watch(3, &old, nil)
	if !r.Outdated() || s.Outdated() != 1 {
		t.Fatal("a registration with an old acked generation must be outdated")
	}
	recount(t, s)
}

func TestPagePublishedBeforeNotify(t *testing.T) {
	var page atomic.Uint32
	s := NewScope(0, page.Store)
	bad := make(chan uint32, 10)
	s.Watch(1, nil, func(gen uint32) {
		if page.Load() < gen {
			bad <- gen
		}
	})
	for range 5 {
		s.Bump(0, "t")
	}
	close(bad)
	for g := range bad {
		t.Fatalf("watcher told of %d before the page showed it", g)
	}
}

func TestWaitWatchers(t *testing.T) {
	s := NewScope(0, nil)
	a, _ := s.Watch(1, nil, nil)
	self, _ := s.Watch(2, nil, nil)
	ctx := context.Background()
	if err := s.WaitWatchers(ctx, nil); err != nil {
		t.Fatalf("no outdated watcher: %v", err)
	}
	gen, _ := s.Bump(0, "t")

	// Outdated itself: interrupted at once, never waiting on itself.
	if err := s.WaitWatchers(ctx, self); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("outdated caller: %v", err)
	}
	self.Ack(gen)

	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := s.WaitWatchers(tctx, self); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timeout: %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- s.WaitWatchers(ctx, self) }()
	time.Sleep(10 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("returned with a watcher outdated: %v", err)
	default:
	}
	a.Ack(gen)
	if err := <-done; err != nil {
		t.Fatalf("after the last ack: %v", err)
	}

	// The caller becoming outdated while it waits is interrupted too. a is
	// left outdated, so only the interruption can end the wait.
	gen, _ = s.Bump(0, "t")
	self.Ack(gen)
	go func() { done <- s.WaitWatchers(ctx, self) }()
	time.Sleep(10 * time.Millisecond)
	s.Bump(0, "t")
	select {
	case err := <-done:
		if !errors.Is(err, ErrInterrupted) {
			t.Fatalf("caller became outdated: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not interrupted when it became outdated")
	}
}

// TestStorm races bumps against acks, closes and registrations and checks
// the count after every phase. Run with -race.
func TestStorm(t *testing.T) {
	s := NewScope(0, nil)
	const workers = 16
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var bumps atomic.Int64

	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			s.Bump(0, "storm")
			bumps.Add(1)
		}
	}()
	var orderErr atomic.Value
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(i), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				var last atomic.Uint32
				w, _ := s.Watch(i, nil, func(gen uint32) {
					if prev := last.Swap(gen); prev >= gen {
						orderErr.Store(errors.New("notifications out of order"))
					}
				})
				for range rnd.IntN(20) {
					g := s.Generation()
					_ = w.Ack(g) // may be stale by now: that is the race under test
				}
				if rnd.IntN(2) == 0 {
					_ = w.Ack(s.Generation())
				}
				w.Close()
			}
		}()
	}
	deadline := time.After(300 * time.Millisecond)
	for done := false; !done; {
		select {
		case <-deadline:
			done = true
		default:
			recount(t, s)
			time.Sleep(time.Millisecond)
		}
	}
	close(stop)
	wg.Wait()
	recount(t, s)
	if s.Outdated() != 0 || len(s.Watchers()) != 0 {
		t.Fatalf("after every close: outdated %d, watchers %d", s.Outdated(), len(s.Watchers()))
	}
	if err, _ := orderErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if bumps.Load() == 0 {
		t.Fatal("no bump ran")
	}
}

// TestCloseRacingBump is the kernel patch's lost/double decrement: a watcher
// closing exactly while a bump makes it outdated.
func TestCloseRacingBump(t *testing.T) {
	for range 200 {
		s := NewScope(0, nil)
		ws := make([]*Registration, 50)
		for i := range ws {
			ws[i], _ = s.Watch(i, nil, nil)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for _, w := range ws {
				w.Close()
			}
		}()
		go func() {
			defer wg.Done()
			s.Bump(0, "race")
		}()
		wg.Wait()
		if n := s.Outdated(); n != 0 {
			t.Fatalf("outdated = %d after every watcher closed", n)
		}
	}
}

// A watcher attached with an acked generation ahead of the current one (a
// client re-attaching after a daemon restart may hold one) is outdated until
// the generation reaches it; a bump to exactly that generation must not
// count it, or its ack and close never bring the count back to zero.
func TestWatchAckedAhead(t *testing.T) {
	s := NewScope(3, nil)
	ahead := uint32(4)
	w, _ := s.Watch(1, &ahead, nil)
	if !w.Outdated() || s.Outdated() != 1 {
		t.Fatalf("acked ahead: outdated %v, count %d", w.Outdated(), s.Outdated())
	}
	s.Bump(0, "t") // to 4: what w acked
	recount(t, s)
	if w.Outdated() || s.Outdated() != 0 {
		t.Fatalf("bumped to its acked generation: outdated %v, count %d", w.Outdated(), s.Outdated())
	}
	if err := w.Ack(4); err != nil {
		t.Fatal(err)
	}
	w.Close()
	recount(t, s)
	if s.Outdated() != 0 {
		t.Fatalf("outdated %d with no watcher", s.Outdated())
	}
	if err := s.WaitWatchers(context.Background(), nil); err != nil {
		t.Fatal(err)
	}

	// Bumped past it: outdated as any other.
	ahead = 6
	w, _ = s.Watch(1, &ahead, nil)
	s.Bump(10, "t")
	recount(t, s)
	if s.Outdated() != 1 {
		t.Fatalf("bumped past its acked generation: count %d", s.Outdated())
	}
	w.Ack(10)
	recount(t, s)
}

// A watcher that starts outdated is notified by Watch itself, before any
// later bump's notification: the daemon sends that first event from there,
// and an older generation must never overtake a newer one.
func TestWatchOutdatedNotifiedFirst(t *testing.T) {
	s := NewScope(5, nil)
	old := uint32(2)
	var got []uint32
	bumped := make(chan struct{})
	s.Watch(1, &old, func(gen uint32) {
		got = append(got, gen)
		if len(got) == 1 {
			// A bump from another goroutine comes in right now.
			go func() { s.Bump(0, "t"); close(bumped) }()
			time.Sleep(20 * time.Millisecond)
		}
	})
	select {
	case <-bumped:
	case <-time.After(5 * time.Second):
		t.Fatalf("notifications %v: none at registration", got)
	}
	if len(got) != 2 || got[0] != 5 || got[1] != 6 {
		t.Fatalf("notifications %v, want [5 6]", got)
	}
}

// Two bumps from two goroutines while a notify function calls back into
// the scope, as the daemon's re-check of a pending wait does: the second
// bump must not hold mu while it waits for the first one's fan-out.
func TestConcurrentBumpsNotifyCallsScope(t *testing.T) {
	s := NewScope(0, nil)
	inFanout := make(chan struct{}, 1)
	s.Watch(1, nil, func(uint32) {
		select {
		case inFanout <- struct{}{}:
			time.Sleep(50 * time.Millisecond) // the second bump starts meanwhile
		default:
		}
		s.Outdated() // takes mu
	})
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		wg.Go(func() { s.Bump(0, "a") })
		<-inFanout
		wg.Go(func() { s.Bump(0, "b") })
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("two concurrent bumps deadlocked")
	}
}
