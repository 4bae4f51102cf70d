package server

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/scope"
	"github.com/genid-project/genid/internal/wire"
)

// conn is one client connection. The loop goroutine alone touches it: it
// reads and answers requests (read.go, dispatch.go), writes replies and
// events (write.go), and closes it.
//
// A connection is a member of one scope (it connected to that scope's
// socket) or an administrator's (the admin socket), which names a scope in
// each request. It is kept small: an idle watcher is this struct, its
// scope.Watcher and its fd.
type conn struct {
	srv   *Server
	fd    int
	seq   uint32 // the loop's number for it, in its epoll events
	peer  peer
	admin bool
	scope *scopeState // a member's scope; nil on the admin socket

	// Input (read.go).
	in       []byte // a frame received in part, nil when none
	held     int    // bytes of requests answered without output, left in the socket
	inPriv   bool   // admin: every byte of in came from an administrator
	draining bool   // broke the protocol: reading and dropping until closed
	drained  int
	deadline timer // a frame in part, or the drain, must end by then

	// Output (write.go).
	writes   uint32 // writes tried: tells whether handling a request wrote
	out      []byte // bytes not yet written; non-empty only while the socket is full
	pollOut  bool   // EPOLLOUT is armed, to flush out
	due      bool   // an event is pending (coalesced)
	dueGen   uint32
	dueFlags uint32
	dead     bool // writing failed: the loop closes it
	closed   bool // the fd is closed: nothing may touch it

	watcher *scope.Watcher[*conn]
	wait    *pendingWait // its one pending wait-watchers, if any
	ino     uint64       // inode of our end; 0 until a query-peer looks
	restore *restoreSession
}

// pendingWait is a wait-watchers the scope has not answered yet.
type pendingWait struct {
	scope   *scopeState
	h       wire.Header
	timeout time.Duration
	timer   timer
}

// consumeHeld consumes the request bytes left in the socket after requests
// answered without output (read.go): called right after a write, which
// wakes the client anyway.
func (c *conn) consumeHeld() {
	if c.held == 0 {
		return
	}
	var sink [maxHeld]byte
	n, err := rawRecv(c.fd, sink[:c.held], 0)
	if err != nil || n != c.held {
		c.srv.log.Warn("socket read", "pid", c.peer.pid, "held", c.held, "read", n, "err", err)
		c.kill()
	}
	c.held = 0
}

// kill gives up on the client: shutting the socket down makes it readable
// (EOF), and the loop, which alone closes fds, closes it.
func (c *conn) kill() {
	if c.dead || c.closed {
		return
	}
	c.dead = true
	c.out = nil
	rawShutdown(c.fd, unix.SHUT_RDWR)
}

// pollEvent is the connection's epoll registration: edge-triggered, since
// requests answered without output stay in the socket (read.go) and must
// not keep it ready; EPOLLOUT only while output waits (write.go).
func (c *conn) pollEvent(out bool) *unix.EpollEvent {
	ev := &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(c.fd), Pad: int32(c.seq)}
	if out {
		ev.Events |= unix.EPOLLOUT
	}
	return ev
}
