package genid

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/genid-project/genid/internal/page"
	"github.com/genid-project/genid/internal/wire"
)

// Client is a process's handle on genid: the mmap'd page for the hot-path
// check, and a connection to the daemon for everything else. A Client is safe
// for concurrent use.
//
//	c, err := genid.Open(genid.DefaultRunDir)
//	...
//	if g := c.Generation(); g != seen { reseed() }
type Client struct {
	runDir string
	page   *mapping
	s      *session
	closed atomic.Bool

	// done ends with Close, and with it every WaitChange in progress.
	done     context.Context
	closeAll context.CancelFunc
}

// mapping is the page's mapping, shared by a Client and its Watchers: it is
// unmapped when the last of them closes.
type mapping struct {
	page.Reader // embedded by value: Load stays one load from the Client
	refs        atomic.Int32
}

// hold takes a reference, unless the mapping is gone already.
func (m *mapping) hold() bool {
	for {
		n := m.refs.Load()
		if n == 0 {
			return false
		}
		if m.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release drops a reference, unmapping the page with the last one.
func (m *mapping) release() error {
	if m.refs.Add(-1) > 0 {
		return nil
	}
	return m.Reader.Close()
}

// Open maps the page of runDir. The daemon is dialed on first use, so Open
// works while the daemon is down, provided it ran once. A run dir that
// another user could have made (neither root's nor this user's, or
// writable by others) is refused.
func Open(runDir string) (*Client, error) {
	if err := trustRunDir(runDir); err != nil {
		return nil, fmt.Errorf("open genid: %w", err)
	}
	pg, err := page.Open(filepath.Join(runDir, PageFile))
	if err != nil {
		return nil, fmt.Errorf("open genid page: %w", err)
	}
	m := &mapping{Reader: *pg}
	m.refs.Store(1)
	done, closeAll := context.WithCancel(context.Background())
	return &Client{runDir: runDir, page: m, s: &session{path: filepath.Join(runDir, SocketFile)}, done: done, closeAll: closeAll}, nil
}

// SocketPath is the daemon's socket this client uses.
func (c *Client) SocketPath() string { return c.s.path }

// Generation loads the current generation from the page: no system call.
func (c *Client) Generation() uint32 { return c.page.Load() }

// WaitChange blocks until the generation differs from seen, and returns it.
// The thread sleeps on the page itself (a futex that the daemon wakes with
// each bump), so a change is seen with no connection to the daemon, even
// while it restarts: cheaper than a Watcher, but the daemon does not know of
// the waiter, so WaitWatchers does not wait for it to rebuild. Use it where
// a thread needs the wake-up but not the barrier. Each call in progress
// holds an OS thread. It gives up with ctx's error when ctx ends, and with
// ErrClosed when c is closed.
func (c *Client) WaitChange(ctx context.Context, seen uint32) (uint32, error) {
	if c.closed.Load() || !c.page.hold() {
		return 0, fmt.Errorf("wait for a change: %w", ErrClosed)
	}
	defer c.page.release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.done, cancel)
	defer stop()
	g, err := c.page.Wait(ctx, seen)
	if err != nil {
		if c.done.Err() != nil {
			err = ErrClosed
		}
		return g, fmt.Errorf("wait for a change: %w", err)
	}
	return g, nil
}

// Close releases the page and the connection. Watchers made by c stay usable
// until closed themselves (the page stays mapped for them). After Close, c's
// other methods must not be used. Closing twice is harmless.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.closeAll()
	c.s.close()
	return c.page.release()
}

// MinAvoiding returns the min of a bump whose result must be greater than n.
func MinAvoiding(n uint32) (uint32, error) {
	if n == math.MaxUint32 {
		return 0, fmt.Errorf("avoid %d: %w", n, ErrOverflow)
	}
	return n + 1, nil
}

// Outdated returns the number of watchers that have not acked the current
// generation.
func (c *Client) Outdated(ctx context.Context) (int, error) {
	return outdated(ctx, c.s)
}

// WaitWatchers returns nil when no watcher is outdated, an error matching
// ErrTimeout after timeout (0 waits as long as ctx allows; a negative one
// has passed already).
func (c *Client) WaitWatchers(ctx context.Context, timeout time.Duration) error {
	return waitWatchers(ctx, c.s, timeout)
}

// Status returns the state of the client's scope: its generation, counts
// and last bump (who the watchers are is for an administrator: Admin).
func (c *Client) Status(ctx context.Context) (*Status, error) {
	f, err := c.s.call(ctx, wire.OpStatus, nil, true)
	if err != nil {
		return nil, err
	}
	var st Status
	if err := json.Unmarshal(f.Payload, &st); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return &st, nil
}

func outdated(ctx context.Context, s *session) (int, error) {
	f, err := s.call(ctx, wire.OpOutdated, nil, true)
	if err != nil {
		return 0, err
	}
	n, err := wire.ParseU32(f.Payload)
	return int(n), err
}

func waitWatchers(ctx context.Context, s *session, timeout time.Duration) error {
	_, err := s.call(ctx, wire.OpWaitWatchers, wire.U32(waitMillis(timeout)), true)
	return err
}

// waitMillis is a wait-watchers timeout as the protocol takes it: a timeout
// that has passed already is the shortest the protocol has (1 ms), not a
// wrap-around to 49 days; 0 is none.
func waitMillis(timeout time.Duration) uint32 {
	ms := uint32(min(max(timeout, 0).Milliseconds(), math.MaxUint32))
	if timeout != 0 && ms == 0 {
		ms = 1
	}
	return ms
}

// Watcher is a registration with the daemon: it learns of every new
// generation and counts as outdated until it acks. Like a sysgenid fd:
// Wait is read, TryWait is a non-blocking read, Ack is write, and Fd is the
// descriptor to poll.
type Watcher struct {
	page *mapping
	s    *session

	mu      sync.Mutex
	closed  bool // the page is released: not to be loaded
	acked   uint32
	latest  uint32
	events  uint64        // events handled, to tell a registration's answer from newer news
	changed chan struct{} // closed and replaced when latest changes or the link drops
	fd      *readyFd      // made by Fd, else nil

	stopFollow context.CancelFunc
}

// Watch registers a new watcher, up to date with the current generation.
func (c *Client) Watch(ctx context.Context) (*Watcher, error) {
	if c.closed.Load() || !c.page.hold() {
		return nil, fmt.Errorf("watch: %w", ErrClosed)
	}
	w := &Watcher{page: c.page, changed: make(chan struct{})}
	registered := false
	w.s = &session{
		path:    c.s.path,
		onEvent: w.event,
		setup: func(ctx context.Context, l *link) error {
			if !registered {
				f, err := l.call(ctx, wire.OpWatch, nil)
				if err != nil {
					return fmt.Errorf("watch: %w", err)
				}
				gen, err := wire.ParseU32(f.Payload)
				if err != nil {
					return err
				}
				w.mu.Lock()
				w.acked, w.latest = gen, max(w.latest, gen)
				w.fd.set(w.outdatedLocked())
				w.mu.Unlock()
				registered = true
				return nil
			}
			// A new daemon (or a restarted one): register again with what we
			// acked, so a change made meanwhile shows as outdated.
			w.mu.Lock()
			acked, events := w.acked, w.events
			w.mu.Unlock()
			f, err := l.call(ctx, wire.OpAttach, wire.U32s(wire.FlagWatcher, acked))
			if err != nil {
				return fmt.Errorf("watch again: %w", err)
			}
			gen, err := wire.ParseU32(f.Payload)
			if err != nil {
				return err
			}
			w.registered(gen, events)
			return nil
		},
	}
	if _, err := w.s.current(ctx); err != nil {
		w.Close()
		return nil, err
	}
	fctx, stop := context.WithCancel(context.Background())
	w.stopFollow = stop
	go w.follow(fctx)
	return w, nil
}

// follow keeps the watcher registered, so that the daemon counts it and
// events arrive while nobody calls it (a hot path that only reads the
// page, an event loop that polls its Fd): after a daemon restart, it
// connects to the new daemon and registers again.
func (w *Watcher) follow(ctx context.Context) {
	for {
		l := w.connect(ctx)
		if l == nil {
			return
		}
		select {
		case <-l.done:
		case <-ctx.Done():
			return
		}
	}
}

// connect returns a live link, trying ever more patiently while the
// daemon is away; nil once the watcher is closed.
func (w *Watcher) connect(ctx context.Context) *link {
	for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		l, err := w.s.current(ctx)
		if err == nil {
			return l
		}
		if errors.Is(err, ErrClosed) || ctx.Err() != nil {
			return nil
		}
		sleepCtx(ctx, backoff)
	}
}

func (w *Watcher) event(gen, _ uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	w.setLatestLocked(gen)
}

// registered takes gen, the generation a daemon answered a registration
// with, events being the count of events handled before it was asked.
// The daemon sends events on the new connection only after its answer, but
// the link's reader may hand one over before the answer is taken here: it
// is newer, and must not be overwritten (the watcher would miss that
// generation). Without one, gen is taken as is, lower or not: a daemon
// without a state dir starts again at 0 when its run dir was removed.
func (w *Watcher) registered(gen uint32, events uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.events != events {
		gen = max(gen, w.latest)
	}
	w.setLatestLocked(gen)
}

func (w *Watcher) setLatestLocked(gen uint32) {
	if gen != w.latest {
		w.latest = gen
		close(w.changed)
		w.changed = make(chan struct{})
	}
	w.fd.set(w.outdatedLocked())
}

// outdatedLocked tells whether the newest generation known is not the one
// acked.
func (w *Watcher) outdatedLocked() bool {
	return !w.closed && w.currentLocked() != w.acked
}

// currentLocked is the newest generation known: from events, or from the
// page, which shows a bump before any event is sent.
func (w *Watcher) currentLocked() uint32 {
	return max(w.latest, w.page.Load())
}

// TryWait returns the current generation if the watcher is outdated, else
// ErrWouldBlock.
func (w *Watcher) TryWait() (uint32, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, ErrClosed
	}
	if g := w.currentLocked(); g != w.acked {
		return g, nil
	}
	return 0, ErrWouldBlock
}

// Wait returns the current generation once it differs from the acked one,
// at once while the watcher stays outdated. It follows the daemon across
// restarts, reporting a change made while it was away.
func (w *Watcher) Wait(ctx context.Context) (uint32, error) {
	return w.wait(ctx, 0, false)
}

// WaitAfter is Wait for a generation greater than after: a caller that
// failed to handle one generation (and did not ack it) waits for the next.
func (w *Watcher) WaitAfter(ctx context.Context, after uint32) (uint32, error) {
	return w.wait(ctx, after, true)
}

func (w *Watcher) wait(ctx context.Context, after uint32, strict bool) (uint32, error) {
	backoff := 50 * time.Millisecond
	for {
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			return 0, ErrClosed
		}
		g := w.currentLocked()
		ch := w.changed
		outdated := g != w.acked && (!strict || g > after)
		w.mu.Unlock()
		if outdated {
			return g, nil
		}
		l, err := w.s.current(ctx)
		if err != nil {
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				return 0, err
			}
			// The daemon is away: try again, ever more patiently.
			sleepCtx(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		select {
		case <-ch:
		case <-l.done:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Ack acknowledges gen, which must be the current generation (else an error
// matching ErrStale: a newer one came meanwhile, and Wait returns it next).
// It waits for the daemon's answer. An ack that did not reach the daemon
// (an error matching ErrUnreachable: it is restarting) is not lost: the
// watcher counts gen as acked, and registers with the next daemon so.
func (w *Watcher) Ack(ctx context.Context, gen uint32) error {
	_, err := w.s.call(ctx, wire.OpAck, wire.U32(gen), true)
	var refused *Error
	if errors.As(err, &refused) {
		return err
	}
	w.setAcked(gen)
	return err
}

// AckQuiet acknowledges gen without waiting for the daemon's answer, for
// an event loop that must not block on genid: the watcher counts gen as
// acked at once, and sends the ack (ctx bounds a reconnection to a daemon
// that restarted; one that is away gets the ack with the registration
// when it is back). The daemon answers only a refusal, and that is not
// reported: the one an ack of the generation that Wait or TryWait returned
// can get is ErrStale, when a newer generation came meanwhile, and then
// the watcher stays outdated, its Fd readable, until it acks that one.
func (w *Watcher) AckQuiet(ctx context.Context, gen uint32) error {
	w.setAcked(gen)
	return w.s.send(ctx, wire.OpAck, wire.Ack{Gen: gen, Flags: wire.FlagQuiet}.Encode())
}

func (w *Watcher) setAcked(gen uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.acked = gen
	w.fd.set(w.outdatedLocked())
}

// Acked returns the generation last acknowledged.
func (w *Watcher) Acked() uint32 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

// Outdated returns the number of outdated watchers.
func (w *Watcher) Outdated(ctx context.Context) (int, error) { return outdated(ctx, w.s) }

// WaitWatchers waits until no watcher is outdated; it fails at once with an
// error matching ErrInterrupted if this watcher is or becomes outdated.
func (w *Watcher) WaitWatchers(ctx context.Context, timeout time.Duration) error {
	return waitWatchers(ctx, w.s, timeout)
}

// Close unregisters the watcher, and closes its Fd. Closing twice is
// harmless.
func (w *Watcher) Close() error {
	if w.stopFollow != nil {
		w.stopFollow()
	}
	w.s.close()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	err := errors.Join(w.page.release(), w.fd.close())
	w.fd = nil
	return err
}
