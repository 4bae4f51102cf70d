package server

import (
	"encoding/binary"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/wire"
)

// pauseBacklog is the back-pressure threshold: while more than this waits in
// c.out, the loop answers no more of the connection's requests and leaves
// them in the socket, whose buffer then fills and blocks the client's
// writes (input.go). It resumes when EPOLLOUT lets c.out drain. So c.out
// never holds more than pauseBacklog, one reply (a status JSON of every
// watcher is the largest), the reply to the connection's one wait-watchers
// and an event: a client that does not read costs its socket buffers and a
// few KiB, however much it sends. c.out fills only once the socket's
// buffer is full, so a client that keeps reading is paused seldom and
// briefly.
const pauseBacklog = 4 << 10

// Every write is a non-blocking send: what does not fit waits in c.out,
// and the loop flushes it when epoll says the socket is writable (EPOLLOUT
// is armed only then, so that clients reading do not wake the daemon).
// c.out is never empty while a connection is paused, so EPOLLOUT is armed
// then, and the edge that flushes c.out also reports the requests left in
// the socket (EPOLLIN): the loop reads them right after the flush.

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

// send queues a frame behind anything not yet written. The backlog needs
// no bound here: the loop stops answering at pauseBacklog (paused).
func (c *conn) send(frame []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.out) > 0 {
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
	c.flushLocked()
}

// paused tells the loop to answer no more of c's requests for now: its
// client does not read, and answering would only grow c.out. It tries a
// write first, which also finds a client that hung up or shut its reading
// side: no edge may come to tell (the write fails, c is dead and no longer
// paused, and the loop closes it on reading).
func (c *conn) paused() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.out) <= pauseBacklog {
		return false
	}
	c.flushLocked()
	return len(c.out) > pauseBacklog
}

func (c *conn) flushLocked() {
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
