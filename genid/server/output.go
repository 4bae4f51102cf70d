package server

import (
	"encoding/binary"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/wire"
)

// maxBacklog bounds what a connection may have queued for a client that does
// not read. Events do not count: they are coalesced into one.
const maxBacklog = 4 << 20

// Every write is a non-blocking send: what does not fit waits in c.out,
// and the loop flushes it when epoll says the socket is writable (EPOLLOUT
// is armed only then, so that clients reading do not wake the daemon).

func (c *conn) reply(req wire.Header, payload []byte) {
	var buf [64]byte
	c.send(wire.Append(buf[:0], wire.Header{Op: req.Op, ID: req.ID}, payload))
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

// event is the watcher's notify function: it sends an event frame with the
// new generation. A client that does not read gets only the latest one.
//
// The watcher is outdated now: if it is itself waiting on watchers, that
// wait is interrupted.
func (c *conn) event(gen uint32) {
	c.wmu.Lock()
	c.due, c.dueGen = true, gen
	if !c.hold && len(c.out) == 0 { // else after the reply to watch/attach, or after the backlog
		c.writeEventLocked()
	}
	c.wmu.Unlock()
	if c.waiting.Load() {
		c.srv.waits.check()
	}
}

// writeEventLocked sends the pending event.
func (c *conn) writeEventLocked() {
	var f [wire.HeaderSize + 8]byte
	wire.PutHeader(f[:], wire.Header{Op: wire.OpEvent, Len: 8})
	binary.LittleEndian.PutUint32(f[wire.HeaderSize:], c.dueGen)
	binary.LittleEndian.PutUint32(f[wire.HeaderSize+4:], c.dueFlags)
	c.due, c.dueFlags = false, 0
	c.writeLocked(f[:])
}

// send queues a frame behind anything not yet written.
func (c *conn) send(frame []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.out) > 0 {
		if len(c.out)+len(frame) > maxBacklog {
			c.srv.log.Warn("client does not read its replies; closing", "pid", c.peer.pid)
			c.killLocked()
			return
		}
		c.out = append(c.out, frame...)
		return
	}
	c.writeLocked(frame)
}

// writeLocked tries one non-blocking write; the rest waits for EPOLLOUT.
func (c *conn) writeLocked(b []byte) {
	if c.dead || c.closed {
		return
	}
	c.writes++
	n, err := rawSend(c.fd, b)
	if c.held > 0 {
		c.consumeHeldLocked() // the client wakes for b anyway
	}
	if err == unix.EAGAIN {
		n, err = 0, nil
	}
	if err != nil {
		c.killLocked()
		return
	}
	if n < len(b) {
		c.out = append(c.out[:0], b[n:]...)
		c.armOut(true)
	}
}

// flush runs on the loop when the socket is writable: it writes the
// backlog, then a coalesced event.
func (c *conn) flush() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for !c.dead && !c.closed {
		if len(c.out) == 0 {
			if c.due && !c.hold {
				c.writeEventLocked()
				continue
			}
			c.out = nil
			c.armOut(false)
			return
		}
		n, err := rawSend(c.fd, c.out)
		if err == unix.EAGAIN {
			return // still full: wait for the next EPOLLOUT
		}
		if err != nil {
			c.killLocked()
			return
		}
		c.out = c.out[n:]
	}
}

// killLocked gives up on the client: shutting the socket down makes it
// readable (EOF), and the loop, which alone closes fds, closes it.
func (c *conn) killLocked() {
	if c.dead || c.closed {
		return
	}
	c.dead = true
	c.out = nil
	rawShutdown(c.fd, unix.SHUT_RDWR)
}

// armOut asks epoll for EPOLLOUT, or stops asking.
func (c *conn) armOut(on bool) {
	if c.pollOut == on || c.closed {
		return
	}
	c.pollOut = on
	epollCtl(c.srv.loop.ep, unix.EPOLL_CTL_MOD, c.fd, c.pollEvent(on))
}

func (c *conn) pollEvent(out bool) *unix.EpollEvent {
	// Edge-triggered: requests answered without output stay in the socket
	// (input.go), which must not keep the connection ready.
	ev := &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(c.fd), Pad: int32(c.seq)}
	if out {
		ev.Events |= unix.EPOLLOUT
	}
	return ev
}
