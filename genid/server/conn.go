package server

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/wire"
)

// conn is one client connection. The loop reads it and answers its
// requests; events are written by whoever bumps, replies to wait-watchers by
// its waiter, none of them ever blocking on a slow client (output.go).
//
// It is kept small: an idle watcher is this struct, its Registration and
// its fd, nothing else.
type conn struct {
	srv  *Server
	fd   int
	seq  uint32 // the loop's number for it, in its epoll events
	peer peer

	// Loop goroutine only.
	ino      uint64        // inode of our end, to find it from the client's end; 0 until query-peer looks
	in       []byte        // a frame received in part, nil when none
	deadline time.Duration // when the frame in part (or the drain) is overdue
	dl       int32         // index in the loop's deadline heap, -1 if none
	draining bool          // broke the protocol: reading and dropping until closed
	drained  int

	watcher atomic.Pointer[genid.Registration]
	waiting atomic.Bool // has a pending wait-watchers (set under waits.mu)

	wmu      sync.Mutex
	held     int    // bytes of requests answered without output, not yet consumed (input.go)
	writes   uint32 // writes tried: tells the loop whether handling a request wrote
	out      []byte // bytes not yet written; non-empty only while the socket is full
	pollOut  bool   // EPOLLOUT is armed, to flush out
	hold     bool   // events wait until the reply to watch/attach is queued
	due      bool   // an event is pending (coalesced)
	dueGen   uint32
	dueFlags uint32
	dead     bool // writing failed: the loop closes it
	closed   bool // the fd is closed: nothing may touch it
}

// handle answers one request. Errors become error replies; only the
// connection's own failures end it.
func (c *conn) handle(f wire.Frame) {
	s := c.srv
	switch f.Op {
	case wire.OpGet:
		if len(f.Payload) != 0 {
			c.replyErr(f.Header, badPayload(f))
			return
		}
		c.reply(f.Header, wire.U32(s.scope.Generation()))

	case wire.OpWatch:
		if len(f.Payload) != 0 {
			c.replyErr(f.Header, badPayload(f))
			return
		}
		if w := c.watcher.Load(); w != nil {
			c.reply(f.Header, wire.U32(w.Acked()))
			return
		}
		gen, err := c.register(nil)
		if err != nil {
			c.replyErr(f.Header, err)
			return
		}
		c.reply(f.Header, wire.U32(gen))
		c.release(0)

	case wire.OpAttach:
		a, err := wire.ParsePair(f.Payload)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("attach: %v: %w", err, genid.ErrBadRequest))
			return
		}
		flags, acked := a.A, a.B
		if flags&^(wire.FlagWatcher|wire.FlagRestored) != 0 {
			c.replyErr(f.Header, fmt.Errorf("attach: unknown flags %#x: %w", flags, genid.ErrBadRequest))
			return
		}
		if c.watcher.Load() != nil {
			c.replyErr(f.Header, fmt.Errorf("attach: connection is already a watcher: %w", genid.ErrBadRequest))
			return
		}
		gen := s.scope.Generation()
		if flags&wire.FlagWatcher != 0 {
			if gen, err = c.register(&acked); err != nil {
				c.replyErr(f.Header, err)
				return
			}
		}
		c.reply(f.Header, wire.U32(gen))
		if flags&wire.FlagRestored != 0 {
			s.log.Info("connection restored", "pid", c.peer.pid, "watcher", flags&wire.FlagWatcher != 0, "acked", acked, "generation", gen)
		}
		c.release(flags & wire.FlagRestored)

	case wire.OpAck:
		a, err := wire.ParseAck(f.Payload)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("ack: %v: %w", err, genid.ErrBadRequest))
			return
		}
		w := c.watcher.Load()
		if w == nil {
			c.replyErr(f.Header, fmt.Errorf("ack: register with watch first: %w", genid.ErrNotWatcher))
			return
		}
		if err := w.Ack(a.Gen); err != nil {
			c.replyErr(f.Header, fmt.Errorf("ack: %w", err))
			return
		}
		if a.Flags&wire.FlagQuiet == 0 {
			c.reply(f.Header, nil)
		}
		if s.waits.pending.Load() > 0 && s.scope.Outdated() == 0 {
			s.waits.check()
		}

	case wire.OpOutdated:
		if len(f.Payload) != 0 {
			c.replyErr(f.Header, badPayload(f))
			return
		}
		c.reply(f.Header, wire.U32(uint32(s.scope.Outdated())))

	case wire.OpWaitWatchers:
		ms, err := wire.ParseU32(f.Payload)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("wait-watchers: %v: %w", err, genid.ErrBadRequest))
			return
		}
		s.waits.start(c, f.Header, time.Duration(ms)*time.Millisecond)

	case wire.OpBump:
		b, err := wire.ParseBump(f.Payload)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("bump: %v: %w", err, genid.ErrBadRequest))
			return
		}
		if err := checkBump(c.fd, c.peer); err != nil {
			s.log.Warn("bump refused", "pid", c.peer.pid, "uid", c.peer.uid, "err", err)
			c.replyErr(f.Header, fmt.Errorf("bump: %w", err))
			return
		}
		reason := b.Reason
		if reason == "" {
			reason = "manual"
		}
		gen, err := s.scope.Bump(b.Min, reason)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("bump: %w", err))
			return
		}
		c.reply(f.Header, wire.U32(gen))
		// Logged after the reply: a restore waits on it, not on the log.
		s.log.Info("bumped", "generation", gen, "min", b.Min, "reason", reason, "pid", c.peer.pid, "uid", c.peer.uid)

	case wire.OpStatus:
		if len(f.Payload) != 0 {
			c.replyErr(f.Header, badPayload(f))
			return
		}
		js, err := json.Marshal(s.status())
		if err != nil {
			c.replyErr(f.Header, err)
			return
		}
		c.reply(f.Header, js)

	case wire.OpQueryPeer:
		// Each query dumps every unix socket of the system on the one event
		// loop: only the CRIU plugin needs it, and it runs privileged.
		if err := checkBump(c.fd, c.peer); err != nil {
			s.log.Warn("query-peer refused", "pid", c.peer.pid, "uid", c.peer.uid, "err", err)
			c.replyErr(f.Header, fmt.Errorf("query-peer: %w", err))
			return
		}
		c.queryPeer(f)

	default:
		c.replyStatus(f.Header, wire.StatusUnknownOp, fmt.Sprintf("unknown op %d", f.Op))
	}
}

func badPayload(f wire.Frame) error {
	return fmt.Errorf("%s: unexpected payload of %d bytes: %w", f.Op, len(f.Payload), genid.ErrBadRequest)
}

// register makes the connection a watcher. Events are held until release,
// so the reply to the registration is always the first frame the client
// reads (the CRIU plugin relies on it).
func (c *conn) register(acked *uint32) (uint32, error) {
	if c.srv.watchers.Add(1) > int64(c.srv.cfg.MaxWatchers) {
		c.srv.watchers.Add(-1)
		return 0, fmt.Errorf("watch: %d watchers: %w", c.srv.cfg.MaxWatchers, genid.ErrLimit)
	}
	c.wmu.Lock()
	c.hold = true
	c.wmu.Unlock()
	// A watcher outdated from the start gets its event from Watch, ordered
	// with the bumps' events: sent here, after Watch, it could overwrite the
	// newer event of a bump made in between by another goroutine.
	w, gen := c.srv.scope.Watch(c.peer.pid, acked, c.event)
	c.watcher.Store(w)
	if c.waiting.Load() {
		// A wait-watchers started before: its asker is now a watcher, maybe
		// an outdated one, which must interrupt it.
		c.srv.waits.check()
	}
	return gen, nil
}

// release lets held events out, adding flags (FlagRestored) to the first.
func (c *conn) release(flags uint32) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.hold = false
	if flags != 0 {
		if !c.due {
			c.due, c.dueGen = true, c.srv.scope.Generation()
		}
		c.dueFlags |= flags
	}
	if c.due && len(c.out) == 0 {
		c.writeEventLocked()
	}
}

// isDead tells the loop to close a connection that writing gave up on.
func (c *conn) isDead() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.dead
}

// close closes the fd (loop goroutine only).
func (c *conn) close() {
	c.wmu.Lock()
	c.closed = true
	c.out = nil
	rawClose(c.fd)
	c.wmu.Unlock()
}
