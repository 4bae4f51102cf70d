package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/wire"
)

// maxBacklog bounds what a connection may have queued for a client that does
// not read. Events do not count: they are coalesced into one.
const maxBacklog = 4 << 20

// conn is one client connection. One goroutine reads and answers requests;
// events are written by whoever bumps, never blocking on a slow client.
type conn struct {
	srv  *Server
	uc   *net.UnixConn
	raw  syscall.RawConn
	peer peer
	ino  uint64 // inode of our end, to find it from the client's end

	ctx    context.Context
	cancel context.CancelFunc

	watcher atomic.Pointer[genid.Registration]
	waiting atomic.Bool // a wait-watchers is pending

	wmu      sync.Mutex
	out      []byte // bytes not yet written; non-empty only while flushing
	flushing bool   // a flush goroutine owns the socket's write side
	hold     bool   // events wait until the reply to watch/attach is queued
	due      bool   // an event is pending (coalesced)
	dueGen   uint32
	dueFlags uint32
	dead     bool
}

func newConn(s *Server, uc *net.UnixConn) (*conn, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	p, err := peerOf(raw)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{srv: s, uc: uc, raw: raw, peer: p, ino: st.Ino, ctx: ctx, cancel: cancel}, nil
}

// serve reads requests until the client goes away or breaks the protocol.
func (c *conn) serve() {
	defer c.cleanup()
	maxPayload := c.srv.cfg.MaxPayload
	var hdr [wire.HeaderSize]byte
	for {
		// Idle connections may wait forever; a started frame must finish in time.
		n, err := c.uc.Read(hdr[:])
		if err != nil {
			return
		}
		if n < len(hdr) {
			c.uc.SetReadDeadline(time.Now().Add(c.srv.cfg.FrameTimeout))
			if _, err := io.ReadFull(c.uc, hdr[n:]); err != nil {
				c.srv.log.Debug("partial header", "pid", c.peer.pid, "err", err)
				return
			}
		}
		h, err := wire.ParseHeader(hdr[:], maxPayload)
		if err != nil {
			// The stream cannot be resynchronised: answer, then hang up.
			st := wire.StatusBadRequest
			if errors.Is(err, wire.ErrVersion) {
				st = wire.StatusVersion
			}
			c.replyStatus(h, st, err.Error())
			c.srv.log.Debug("bad frame", "pid", c.peer.pid, "err", err)
			c.drain()
			return
		}
		var payload []byte
		if h.Len > 0 {
			c.uc.SetReadDeadline(time.Now().Add(c.srv.cfg.FrameTimeout))
			payload = make([]byte, h.Len)
			if _, err := io.ReadFull(c.uc, payload); err != nil {
				c.srv.log.Debug("partial payload", "pid", c.peer.pid, "err", err)
				return
			}
		}
		if n < len(hdr) || h.Len > 0 {
			c.uc.SetReadDeadline(time.Time{})
		}
		c.handle(wire.Frame{Header: h, Payload: payload})
	}
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
		gen, err := wire.ParseU32(f.Payload)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("ack: %v: %w", err, genid.ErrBadRequest))
			return
		}
		w := c.watcher.Load()
		if w == nil {
			c.replyErr(f.Header, fmt.Errorf("ack: register with watch first: %w", genid.ErrNotWatcher))
			return
		}
		if err := w.Ack(gen); err != nil {
			c.replyErr(f.Header, fmt.Errorf("ack: %w", err))
			return
		}
		c.reply(f.Header, nil)

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
		if !c.waiting.CompareAndSwap(false, true) {
			c.replyErr(f.Header, fmt.Errorf("wait-watchers: one at a time per connection: %w", genid.ErrLimit))
			return
		}
		go c.waitWatchers(f.Header, time.Duration(ms)*time.Millisecond, c.watcher.Load())

	case wire.OpBump:
		b, err := wire.ParseBump(f.Payload)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("bump: %v: %w", err, genid.ErrBadRequest))
			return
		}
		if err := checkBump(c.raw, c.peer); err != nil {
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
		s.log.Info("bumped", "generation", gen, "min", b.Min, "reason", reason, "pid", c.peer.pid, "uid", c.peer.uid)
		c.reply(f.Header, wire.U32(gen))

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
	w, gen := c.srv.scope.Watch(c.peer.pid, acked, c.event)
	c.watcher.Store(w)
	if acked != nil && *acked != gen {
		c.event(gen) // outdated from the start: readable at once
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
	if c.due && !c.flushing {
		c.writeLocked(c.takeEventLocked())
	}
}

func (c *conn) waitWatchers(h wire.Header, timeout time.Duration, self *genid.Registration) {
	ctx := c.ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	err := c.srv.scope.WaitWatchers(ctx, self)
	// Free the slot before replying: the client may ask again at once.
	c.waiting.Store(false)
	switch {
	case c.ctx.Err() != nil:
		return // the client is gone
	case errors.Is(err, context.DeadlineExceeded):
		err = fmt.Errorf("wait-watchers: %d outdated after %v: %w", c.srv.scope.Outdated(), timeout, genid.ErrTimeout)
	}
	if err != nil {
		c.replyErr(h, err)
		return
	}
	c.reply(h, nil)
}

func (c *conn) reply(req wire.Header, payload []byte) {
	c.send(wire.Append(nil, wire.Header{Op: req.Op, ID: req.ID}, payload))
}

func (c *conn) replyStatus(req wire.Header, st wire.Status, msg string) {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	c.send(wire.Append(nil, wire.Header{Op: req.Op, ID: req.ID, Status: st}, []byte(msg)))
}

func (c *conn) replyErr(req wire.Header, err error) {
	c.replyStatus(req, genid.StatusOf(err), err.Error())
}

// event is the watcher's notify function: it queues an event frame with the
// new generation. A client that does not read gets only the latest one.
func (c *conn) event(gen uint32) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.due, c.dueGen = true, gen
	if c.hold || c.flushing {
		return
	}
	c.writeLocked(c.takeEventLocked())
}

func (c *conn) takeEventLocked() []byte {
	f := wire.Append(nil, wire.Header{Op: wire.OpEvent}, wire.U32s(c.dueGen, c.dueFlags))
	c.due, c.dueFlags = false, 0
	return f
}

// send queues a frame behind anything not yet written.
func (c *conn) send(frame []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.flushing {
		if len(c.out)+len(frame) > maxBacklog {
			c.srv.log.Warn("client does not read its replies; closing", "pid", c.peer.pid)
			c.dead = true
			c.uc.Close()
			return
		}
		c.out = append(c.out, frame...)
		return
	}
	c.writeLocked(frame)
}

// writeLocked tries one non-blocking write; what does not fit is handed to a
// flush goroutine, so a bump never waits for a slow client.
func (c *conn) writeLocked(b []byte) {
	if c.dead {
		return
	}
	var n int
	var err error
	cerr := c.raw.Write(func(fd uintptr) bool {
		for {
			n, err = unix.Write(int(fd), b)
			if err != unix.EINTR {
				return true
			}
		}
	})
	if err == unix.EAGAIN {
		n, err = 0, nil
	}
	if n < 0 {
		n = 0
	}
	if cerr != nil || err != nil {
		c.dead = true
		c.uc.Close()
		return
	}
	if n < len(b) {
		c.out = append(c.out[:0], b[n:]...)
		c.flushing = true
		go c.flush()
	}
}

// flush writes the backlog, waiting for the socket to drain, then any
// coalesced event.
func (c *conn) flush() {
	for {
		c.wmu.Lock()
		if len(c.out) == 0 {
			if !c.due || c.hold || c.dead {
				c.flushing = false
				c.wmu.Unlock()
				return
			}
			c.out = c.takeEventLocked()
		}
		buf := c.out
		c.out = nil
		c.wmu.Unlock()

		var err error
		cerr := c.raw.Write(func(fd uintptr) bool {
			for len(buf) > 0 {
				var n int
				n, err = unix.Write(int(fd), buf)
				switch {
				case err == unix.EINTR:
					continue
				case err == unix.EAGAIN:
					err = nil
					return false // wait until writable
				case err != nil:
					return true
				}
				buf = buf[n:]
			}
			return true
		})
		if cerr != nil || err != nil {
			c.wmu.Lock()
			c.dead, c.flushing = true, false
			c.wmu.Unlock()
			c.uc.Close()
			return
		}
	}
}

// drain gives an error reply a moment to reach a client that is still
// sending, instead of resetting the connection under it.
func (c *conn) drain() {
	c.uc.CloseWrite()
	c.uc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	io.CopyN(io.Discard, c.uc, 64<<10)
}

// hangUp ends the connection from any goroutine; serve then cleans up.
func (c *conn) hangUp() {
	c.cancel()
	c.wmu.Lock()
	c.dead = true
	c.wmu.Unlock()
	c.uc.Close()
}

// cleanup runs once, when serve returns: the watcher stops counting.
func (c *conn) cleanup() {
	c.hangUp()
	if w := c.watcher.Swap(nil); w != nil {
		w.Close()
		c.srv.watchers.Add(-1)
	}
	c.srv.untrack(c)
}
