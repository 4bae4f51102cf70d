package server

import (
	"encoding/binary"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/wire"
)

// Output: every write is a non-blocking send. What does not fit waits in
// c.out, and the loop flushes it when epoll says the socket is writable
// (EPOLLOUT is armed only then, so that clients reading do not wake the
// daemon).
//
// pauseBacklog is the back-pressure threshold: while more than this waits
// in c.out, the loop answers no more of the connection's requests and
// leaves them in the socket, whose buffer then fills and blocks the
// client's writes. It resumes when EPOLLOUT lets c.out drain. So c.out
// never holds more than pauseBacklog, one reply (an administrator's status
// of a big scope is the largest), the reply to the connection's one
// wait-watchers and an event: a client that does not read costs its socket
// buffers and a few KiB, however much it sends.
const pauseBacklog = 4 << 10

// reply sends a success reply to request h.
func (c *conn) reply(h wire.Header, payload []byte) {
	var buf [64]byte
	c.send(wire.Append(buf[:0], wire.Header{Op: h.Op, ID: h.ID}, payload))
}

// replyStatus sends a refusal of request h.
func (c *conn) replyStatus(h wire.Header, st wire.Status, msg string) {
	c.srv.refused(c, st)
	c.send(refusal(h, st, msg))
}

// refusal is the frame of a refusal: the status and a message of at most
// 1024 bytes.
func refusal(h wire.Header, st wire.Status, msg string) []byte {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	return wire.Append(nil, wire.Header{Op: h.Op, ID: h.ID, Status: st}, []byte(msg))
}

// refuseConn tells a connection refused at connect why, before the loop
// closes it: OpRefused, with the status and message a refused request
// would get, so that a client can tell a limit from a daemon that died.
// The socket is new and its buffer empty: the one send takes the frame
// whole, or the client is gone.
func (c *conn) refuseConn(err error) {
	st := statusOf(err)
	c.srv.refused(c, st)
	rawSend(c.fd, refusal(wire.Header{Op: wire.OpRefused}, st, err.Error()))
}

// replyErr sends the refusal err stands for (errors.go).
func (c *conn) replyErr(h wire.Header, err error) {
	c.replyStatus(h, statusOf(err), err.Error())
}

// event tells a watcher of a new generation. Events of a client that does
// not read coalesce: it gets the latest when its backlog drains.
func (c *conn) event(gen, flags uint32) {
	c.due, c.dueGen, c.dueFlags = true, gen, c.dueFlags|flags
	if len(c.out) == 0 {
		c.writeEvent()
	}
}

func (c *conn) writeEvent() {
	var f [wire.HeaderSize + 8]byte
	wire.PutHeader(f[:], wire.Header{Op: wire.OpEvent, Len: 8})
	binary.LittleEndian.PutUint32(f[wire.HeaderSize:], c.dueGen)
	binary.LittleEndian.PutUint32(f[wire.HeaderSize+4:], c.dueFlags)
	c.due, c.dueFlags = false, 0
	c.write(f[:])
}

// send queues a frame behind anything not yet written. The backlog needs no
// bound here: the loop stops answering at pauseBacklog.
func (c *conn) send(frame []byte) {
	if len(c.out) > 0 {
		c.out = append(c.out, frame...)
		return
	}
	c.write(frame)
}

// write tries one non-blocking write; the rest waits for EPOLLOUT.
func (c *conn) write(b []byte) {
	if c.dead || c.closed {
		return
	}
	c.writes++
	n, err := rawSend(c.fd, b)
	c.consumeHeld() // the client wakes for b anyway
	if err == unix.EAGAIN {
		n, err = 0, nil
	}
	if err != nil {
		c.kill()
		return
	}
	if n < len(b) {
		c.out = append(c.out[:0], b[n:]...)
		c.armOut(true)
	}
}

// flush writes the backlog, then a coalesced event; the loop calls it when
// the socket is writable.
func (c *conn) flush() {
	for !c.dead && !c.closed {
		if len(c.out) == 0 {
			if c.due {
				c.writeEvent()
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
			c.kill()
			return
		}
		c.out = c.out[n:]
	}
}

// backlogged tells the loop to answer no more of c's requests for now: its
// client does not read, and answering would only grow c.out. It tries a
// flush first, which also finds a client that hung up or shut its reading
// side: no edge may come to tell (the write fails, c is dead and no longer
// backlogged, and the loop closes it on reading).
func (c *conn) backlogged() bool {
	if !c.overBacklog() {
		return false
	}
	c.flush()
	return c.overBacklog()
}

// overBacklog tells whether more than pauseBacklog waits in c.out.
func (c *conn) overBacklog() bool { return len(c.out) > pauseBacklog }

// armOut asks epoll for EPOLLOUT, or stops asking.
func (c *conn) armOut(on bool) {
	if c.pollOut == on || c.closed {
		return
	}
	c.pollOut = on
	epollCtl(c.srv.loop.ep, unix.EPOLL_CTL_MOD, c.fd, c.pollEvent(on))
}
