package server

import (
	"errors"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid/wire"
)

// maxHeld bounds what a connection may leave unconsumed in its socket: a
// few requests answered without output (see readable).
const maxHeld = 256

// readable answers every complete frame the client sent.
//
// The kernel wakes a client blocked in read() on its unix socket both when
// data arrives and when what it sent is consumed: unix_write_space wakes
// the socket's one wait queue, and a blocked read() does not tell the two
// apart (poll and epoll do). So requests are peeked, answered, and only
// then consumed: consuming a request before its reply is written would wake
// such a client twice, once for nothing, and consuming it after wakes it
// once. A request answered without output (a quiet ack, a wait-watchers
// still pending) would wake it for nothing whenever it is consumed, so its
// bytes are held: left in the socket, and consumed right after the next
// write to the client, which wakes it anyway. Connections are
// edge-triggered in epoll, so that held bytes do not keep them ready; at
// most maxHeld bytes are held.
//
// A client that does not read its replies is paused (output.go): its
// requests are left in the socket, behind the held bytes, until the edge
// that flushes its backlog calls readable again.
func (l *loop) readable(c *conn) {
	for {
		if !c.draining && c.paused() {
			// Not reading is not the client's delay: a frame in part gets
			// a new clock when reading resumes.
			l.deadlines.clear(c)
			return
		}
		held, writes, n, err := c.peek(l.buf)
		switch {
		case err == unix.EAGAIN:
			return
		case err != nil || n == 0:
			l.closeConn(c)
			return
		case n == held:
			// Nothing behind the held bytes: the edge was a hang-up (or the
			// re-arming of EPOLLOUT). Consume them to see what follows.
			if !c.settle(l.buf, 0, false, writes) {
				l.closeConn(c)
				return
			}
			continue
		}
		fresh := n - held
		if c.draining {
			if !c.settle(l.buf, fresh, false, writes) {
				l.closeConn(c)
				return
			}
			if c.drained += fresh; c.drained >= drainBytes {
				l.closeConn(c)
				return
			}
		} else if !l.answer(c, l.buf[held:n], writes) {
			return
		}
		if n < len(l.buf) {
			return // all read: the next edge tells of more
		}
	}
}

// answer handles the fresh bytes peeked from c, then consumes or holds the
// ones it answered. It returns false once c is closed.
func (l *loop) answer(c *conn, fresh []byte, writes uint32) bool {
	data := fresh
	prev := len(c.in) // a frame's start, consumed earlier
	if prev > 0 {
		c.in = append(c.in, data...)
		data = c.in
	}
	done, paused := l.frames(c, data)
	if c.isDead() {
		l.closeConn(c) // a write failed: the client is gone
		return false
	}
	used := len(fresh)
	complete := false
	switch {
	case done < 0: // draining after a bad frame
	case paused && done == 0:
		// Not one frame answered: the fresh bytes stay in the socket, and
		// a frame in part waits in c.in without a clock (see readable).
		c.in = c.in[:prev]
		l.deadlines.clear(c)
		used, complete = 0, true
	case paused || done == len(data):
		// Whole frames answered; when paused, the rest stays in the socket.
		c.in = nil
		l.deadlines.clear(c)
		used, complete = done-prev, true
	default:
		// Keep the rest of a frame (out of the shared buffer, which settle
		// overwrites); a started frame must complete in time, a new one
		// starts its own clock.
		rest := data[done:]
		if done > 0 || c.dl < 0 {
			l.deadlines.set(c, l.now()+l.srv.cfg.FrameTimeout)
		}
		if len(c.in) == 0 {
			c.in = append([]byte(nil), rest...)
		} else {
			c.in = c.in[:copy(c.in, rest)]
		}
	}
	if !c.settle(l.buf, used, complete, writes) {
		l.srv.log.Warn("socket read: peeked bytes gone", "pid", c.peer.pid)
		l.closeConn(c)
		return false
	}
	return true
}

// peek reads what the socket holds without consuming it: the held bytes
// first, then the fresh ones. It also returns the write count, for settle.
func (c *conn) peek(buf []byte) (held int, writes uint32, n int, err error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n, err = rawRecv(c.fd, buf, unix.MSG_PEEK)
	return c.held, c.writes, n, err
}

// settle disposes of fresh bytes just answered, which follow the held ones
// in the socket. They are held too if hold is set (they were whole frames),
// nothing was written since peek, and they fit; else everything is
// consumed. It returns false if the socket failed. buf is scratch space.
func (c *conn) settle(buf []byte, fresh int, hold bool, writes uint32) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if hold && c.writes == writes && c.held+fresh <= maxHeld {
		c.held += fresh
		return true
	}
	want := c.held + fresh // a write since peek may have consumed the held ones
	c.held = 0
	if want == 0 {
		return true
	}
	m, err := rawRecv(c.fd, buf[:want], 0)
	return err == nil && m == want
}

// consumeHeldLocked consumes the held bytes; called after a write, which
// wakes the client anyway.
func (c *conn) consumeHeldLocked() {
	var sink [maxHeld]byte
	n, err := rawRecv(c.fd, sink[:c.held], 0)
	if err != nil || n != c.held {
		c.srv.log.Warn("socket read", "pid", c.peer.pid, "held", c.held, "read", n, "err", err)
		c.killLocked()
	}
	c.held = 0
}

// frames handles the complete frames at the start of data and returns how
// many bytes they took, or -1 after a frame that cannot be trusted (the
// connection is then draining). It stops early, paused, when the client
// does not read its replies (output.go).
func (l *loop) frames(c *conn, data []byte) (done int, paused bool) {
	maxPayload := l.srv.cfg.MaxPayload
	for len(data)-done >= wire.HeaderSize {
		// Before the first frame, readable has just checked.
		if done > 0 && c.paused() {
			return done, true
		}
		h, err := wire.ParseHeader(data[done:], maxPayload)
		if err != nil {
			// The stream cannot be resynchronised: answer, then hang up.
			st := wire.StatusBadRequest
			if errors.Is(err, wire.ErrVersion) {
				st = wire.StatusVersion
			}
			c.replyStatus(h, st, err.Error())
			l.srv.log.Debug("bad frame", "pid", c.peer.pid, "err", err)
			l.drain(c)
			return -1, false
		}
		end := done + wire.HeaderSize + int(h.Len)
		if len(data) < end {
			break
		}
		c.handle(wire.Frame{Header: h, Payload: data[done+wire.HeaderSize : end]})
		done = end
	}
	return done, false
}

// drain stops answering c: its write side is shut (the error reply queued
// before goes out first), and what it still sends is read and dropped for a
// moment before the connection closes.
func (l *loop) drain(c *conn) {
	c.draining = true
	c.in = nil
	rawShutdown(c.fd, unix.SHUT_WR)
	l.deadlines.set(c, l.now()+drainTime)
}
