package server

import (
	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/wire"
)

// Input: the loop reads a member connection's requests without consuming
// them, answers them, and only then consumes them.
//
// The kernel wakes a client blocked in read() on its unix socket both when
// data arrives and when what it sent is consumed: unix_write_space wakes
// the socket's one wait queue, and a blocked read() does not tell the two
// apart (poll and epoll do). Consuming a request before its reply is
// written would wake such a client twice, once for nothing; consuming it
// after wakes it once. A request answered without output (a quiet ack, a
// wait-watchers still pending) would wake it for nothing whenever it is
// consumed, so its bytes are held: left in the socket, and consumed right
// after the next write to the client, which wakes it anyway (conn.go). At
// most maxHeld bytes are held.
//
// The admin socket's connections are peeked the same way, with the
// credentials of each sender (peer.go), and each request is judged on who
// sent it. What was peeked is consumed once answered, and none of it is
// held: requests that are answered later (wait-watchers) are few there.

// maxHeld bounds what a connection may leave unconsumed in its socket: ten
// quiet acks.
const maxHeld = 10 * (wire.HeaderSize + 8)

// peek reads what the socket holds without consuming it: the held bytes
// first, then fresh ones.
func (c *conn) peek(buf []byte) (n int, err error) {
	return rawRecv(c.fd, buf, unix.MSG_PEEK)
}

// settle disposes of fresh bytes just answered, which follow the held ones
// in the socket. They are held too if hold is set (they were whole frames),
// nothing was written to the client since writes was read, and they fit;
// else everything is consumed. It returns false if the socket failed. buf
// is scratch space.
func (c *conn) settle(buf []byte, fresh int, hold bool, writes uint32) bool {
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

// keepPartial keeps the start of a frame, out of the shared read buffer,
// until the rest arrives.
func (c *conn) keepPartial(rest []byte) {
	if len(c.in) == 0 {
		c.in = append([]byte(nil), rest...)
	} else {
		c.in = c.in[:copy(c.in, rest)]
	}
}

// peekAdmin reads what an administrator's connection sent, with the
// sender's credentials (the kernel never returns bytes of two senders in
// one read), without consuming it: settle does, once it is answered.
// Without a control buffer there, fds sent with it are never installed.
func (c *conn) peekAdmin(buf, oob []byte) (n int, from sender, err error) {
	n, oobn, err := rawRecvmsg(c.fd, buf, oob, unix.MSG_PEEK)
	if err != nil || n == 0 {
		return n, sender{}, err
	}
	return n, parseSender(oob[:oobn]), nil
}
