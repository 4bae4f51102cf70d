package server

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/wire"
)

// drainTime and drainBytes bound how long a connection that broke the
// protocol is read (and discarded) after its error reply, so that the reply
// reaches a client that is still sending instead of a reset.
const (
	drainTime  = 100 * time.Millisecond
	drainBytes = 64 << 10
)

// loop is the daemon's event loop. One goroutine serves an epoll instance
// holding the listening sockets, every connection, the pidfds of processes
// that scopes belong to, and a wake-up eventfd. It alone touches the
// daemon's state: the scopes, the connections, the timers. Other
// goroutines (backends, the sock_diag snapshot, Server's methods) post
// work to it (post), which it runs between events.
//
// Nothing runs while the daemon is idle: the loop is parked without a
// deadline unless a timer is scheduled, and no goroutine or timer exists
// per connection.
type loop struct {
	srv      *Server
	ep       int      // epoll instance
	epFile   *os.File // ep in Go's netpoller: the loop parks on it
	stopping atomic.Bool

	wakeMu sync.Mutex // post and stop may run on any goroutine, even as close runs
	wake   int        // eventfd that post and stop write to; noFD once closed
	posted []func()   // under wakeMu

	// Owned by the loop goroutine.
	byFD    []*conn         // connections by fd
	special map[int]special // listening sockets and pidfds by fd
	seq     uint32          // tells a connection from an earlier one on the same fd
	timers  timerHeap
	epoch   time.Time     // the loop's clock: time since epoch
	retry   time.Duration // when to accept again after running out of fds; 0: not waiting
	backoff time.Duration
	buf     []byte // read buffer, shared by all connections
	oob     []byte // control messages of the admin socket's reads
	events  []unix.EpollEvent
	failed  error // epoll or accept failed for good: run returns it

	drainTime time.Duration // drainTime; tests of the drain change it
}

// special is a non-connection fd in the epoll set.
type special struct {
	kind  specialKind
	scope *scopeState
}

type specialKind uint8

const (
	specialListen specialKind = iota // a scope's socket
	specialAdmin                     // the admin socket
	specialPidfd                     // the process a scope belongs to
)

func newLoop(s *Server) (*loop, error) {
	l := &loop{srv: s, epoch: time.Now(), buf: make([]byte, 64<<10), oob: make([]byte, 256),
		events: make([]unix.EpollEvent, 256), special: make(map[int]special), drainTime: drainTime}
	var err error
	if l.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	// Non-blocking, so that os.NewFile puts it in the netpoller.
	if err := unix.SetNonblock(l.ep, true); err != nil {
		unix.Close(l.ep)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	l.epFile = os.NewFile(uintptr(l.ep), "epoll")
	if err := l.epFile.SetReadDeadline(time.Time{}); err != nil {
		l.epFile.Close()
		return nil, fmt.Errorf("epoll fd not pollable by the Go runtime: %w", err)
	}
	if l.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		l.epFile.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := epollCtl(l.ep, unix.EPOLL_CTL_ADD, l.wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.wake)}); err != nil {
		l.epFile.Close()
		unix.Close(l.wake)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	return l, nil
}

func (l *loop) now() time.Duration { return time.Since(l.epoch) }

// watch adds a special fd to the epoll set.
func (l *loop) watch(fd int, sp special) error {
	if err := epollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	l.special[fd] = sp
	return nil
}

// unwatch removes a special fd from the epoll set; the caller closes it.
func (l *loop) unwatch(fd int) {
	epollCtl(l.ep, unix.EPOLL_CTL_DEL, fd, nil)
	delete(l.special, fd)
}

// post runs f on the loop, between events; safe from any goroutine. It
// reports false if the loop has closed, and f will not run.
func (l *loop) post(f func()) bool {
	l.wakeMu.Lock()
	defer l.wakeMu.Unlock()
	if l.wake == noFD {
		return false
	}
	l.posted = append(l.posted, f)
	one := [8]byte{1}
	unix.Write(l.wake, one[:])
	return true
}

// stop makes run return; safe from any goroutine, before or after close.
func (l *loop) stop() {
	l.stopping.Store(true)
	// Under wakeMu: run may see stopping and return, and close the eventfd,
	// before we write; its number may belong to another file by then.
	l.wakeMu.Lock()
	defer l.wakeMu.Unlock()
	if l.wake == noFD {
		return
	}
	one := [8]byte{1}
	unix.Write(l.wake, one[:])
}

// run serves until stop. It returns an error only if epoll or accept fail
// for good.
//
// The loop waits in Go's netpoller, on the epoll fd (which is readable when
// any of its fds is ready), and fetches the events with a non-blocking
// epoll_wait, all without a blocking system call: entering one wakes the
// runtime's sysmon thread from its idle sleep (sys.go). A parked goroutine
// leaves the daemon entirely asleep, and wakes without stirring sysmon.
func (l *loop) run() error {
	rc, err := l.epFile.SyscallConn()
	if err != nil {
		return err
	}
	var deadline time.Duration // the epoll fd's read deadline; 0: none
	serve := func(uintptr) bool {
		for !l.stopping.Load() && l.failed == nil {
			n, err := epollPoll(l.ep, l.events)
			if err != nil {
				l.failed = fmt.Errorf("epoll_wait: %w", err)
				break
			}
			if n > 0 {
				l.dispatch(l.events[:n])
				continue
			}
			l.expire()
			if l.next() != deadline {
				break // to set the new deadline
			}
			return false // park until the epoll fd is readable
		}
		return true
	}
	for !l.stopping.Load() && l.failed == nil {
		if next := l.next(); next != deadline {
			var at time.Time
			if next > 0 {
				at = l.epoch.Add(next)
			}
			l.epFile.SetReadDeadline(at)
			deadline = next
		}
		err := rc.Read(serve)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			l.expire()
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll: %w", err)
		}
	}
	return l.failed
}

// dispatch handles a batch of epoll events.
func (l *loop) dispatch(events []unix.EpollEvent) {
	for _, ev := range events {
		fd := int(ev.Fd)
		if fd == l.wake {
			var v [8]byte
			rawRead(l.wake, v[:])
			l.runPosted()
			continue
		}
		if sp, ok := l.special[fd]; ok {
			switch sp.kind {
			case specialListen, specialAdmin:
				if err := l.accept(fd, sp); err != nil {
					l.srv.log.Error("accept", "err", err)
					l.failed = err
				}
			case specialPidfd:
				l.srv.scopeOwnerGone(sp.scope)
			}
			continue
		}
		c := l.conn(fd)
		if c == nil || c.seq != uint32(ev.Pad) {
			continue // closed earlier in this batch
		}
		if ev.Events&unix.EPOLLOUT != 0 {
			c.flush()
		}
		if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			if c.admin {
				l.readableAdmin(c)
			} else {
				l.readable(c)
			}
		}
	}
	l.expire()
}

func (l *loop) runPosted() {
	l.wakeMu.Lock()
	fs := l.posted
	l.posted = nil
	l.wakeMu.Unlock()
	for _, f := range fs {
		f()
	}
}

func (l *loop) conn(fd int) *conn {
	if fd < 0 || fd >= len(l.byFD) {
		return nil
	}
	return l.byFD[fd]
}

// conns lists the open connections.
func (l *loop) conns() []*conn {
	var out []*conn
	for _, c := range l.byFD {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// next is when the loop must look at the time again: the earliest timer or
// accept retry; 0 if none, and so none while idle.
func (l *loop) next() time.Duration {
	next := l.timers.next()
	if l.retry > 0 && (next == 0 || l.retry < next) {
		next = l.retry
	}
	return next
}

// expire runs the timers that are due, and resumes accepting after a
// back-off.
func (l *loop) expire() {
	now := l.now()
	for t := l.timers.due(now); t != nil; t = l.timers.due(now) {
		switch t.kind {
		case timerFrame:
			if !t.c.draining {
				l.srv.log.Debug("partial frame not completed in time", "pid", t.c.peer.pid, "timeout", l.srv.cfg.FrameTimeout)
			}
			l.closeConn(t.c)
		case timerWait:
			l.srv.waitTimedOut(t.c)
		case timerRestore:
			l.srv.restoreExpired(t.st)
		case timerHistory:
			l.srv.writeHistory(now)
		}
	}
	if l.retry > 0 && l.retry <= now {
		l.retry = 0
		for fd := range l.special {
			if k := l.special[fd].kind; k == specialListen || k == specialAdmin {
				epollCtl(l.ep, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
			}
		}
	}
}

// accept takes the pending connections of a listening socket.
func (l *loop) accept(lfd int, sp special) error {
	s := l.srv
	for range 256 {
		r, _, errno := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		fd := int(r)
		switch errno {
		case 0:
		case unix.EAGAIN:
			return nil
		case unix.EINTR, unix.ECONNABORTED, unix.EPROTO, unix.EPERM:
			continue
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			// Out of fds or memory: stop listening for a while instead of
			// spinning on sockets that stay readable.
			l.backoff = min(max(2*l.backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept", "err", errno, "retry_in", l.backoff)
			l.retry = l.now() + l.backoff
			for fd, sp := range l.special {
				if sp.kind == specialListen || sp.kind == specialAdmin {
					epollCtl(l.ep, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: 0, Fd: int32(fd)})
				}
			}
			return nil
		default:
			return fmt.Errorf("accept: %w", errno)
		}
		l.backoff = 0
		if err := l.add(fd, sp); err != nil {
			rawClose(fd)
			s.log.Debug("connection refused", "err", err)
		}
	}
	return nil
}

// add admits and registers an accepted connection.
func (l *loop) add(fd int, sp special) error {
	p, err := peerOf(fd)
	if err != nil {
		return err
	}
	if sp.kind == specialAdmin && l.srv.cfg.AdminGroup != noGroup {
		if p.groups, err = peerGroups(fd); err != nil {
			return fmt.Errorf("SO_PEERGROUPS: %w", err)
		}
	}
	c := &conn{srv: l.srv, fd: fd, peer: p, admin: sp.kind == specialAdmin, scope: sp.scope}
	c.deadline = newTimer(timerFrame, c, nil)
	if err := l.srv.admitConn(c); err != nil {
		c.refuseConn(err)
		return err
	}
	l.seq++
	c.seq = l.seq
	if err := epollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, c.pollEvent(false)); err != nil {
		l.srv.releaseConn(c)
		return err
	}
	for len(l.byFD) <= fd {
		l.byFD = append(l.byFD, nil)
	}
	l.byFD[fd] = c
	return nil
}

// closeConn ends a connection: its watcher stops counting, its pending
// wait-watchers is dropped, its restore ends.
func (l *loop) closeConn(c *conn) {
	if c.closed {
		return
	}
	l.timers.stop(&c.deadline)
	epollCtl(l.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	c.closed = true
	c.out = nil
	rawClose(c.fd)
	l.byFD[c.fd] = nil
	l.srv.connClosed(c)
}

// readable answers every complete frame a member connection sent (see
// read.go for why requests are peeked, answered, then consumed). A client
// that does not read its replies is paused (write.go): its requests are
// left in the socket until the edge that flushes its backlog calls readable
// again.
func (l *loop) readable(c *conn) {
	for {
		if c.draining {
			l.discard(c)
			return
		}
		if c.backlogged() {
			// Not reading is not the client's delay: a frame in part gets
			// a new clock when reading resumes.
			l.timers.stop(&c.deadline)
			return
		}
		writes := c.writes
		n, err := c.peek(l.buf)
		held := c.held
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
		if !l.answer(c, l.buf[held:n], writes) {
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
	if prev != 0 {
		c.in = append(c.in, data...)
		data = c.in
	}
	done, paused := l.frames(c, data, true)
	if c.dead {
		l.closeConn(c) // a write failed: the client is gone
		return false
	}
	if c.closed {
		return false // its scope was removed while answering
	}
	used := len(fresh)
	complete := false
	switch {
	case done < 0: // draining after a bad frame
	case paused || done == len(data):
		// Whole frames answered. When paused, the rest stays in the
		// socket, a frame in part too: it gets a clock when reading
		// resumes (see readable).
		c.in = nil
		l.timers.stop(&c.deadline)
		used, complete = done-prev, true
	default:
		// Keep the rest of a frame; a started frame must complete in time,
		// a new one starts its own clock.
		if done > 0 || c.deadline.idx < 0 {
			l.timers.set(&c.deadline, l.now()+l.srv.cfg.FrameTimeout)
		}
		c.keepPartial(data[done:])
	}
	if !c.settle(l.buf, used, complete, writes) {
		l.srv.log.Warn("socket read: peeked bytes gone", "pid", c.peer.pid)
		l.closeConn(c)
		return false
	}
	return true
}

// frames handles the complete frames at the start of data and returns how
// many bytes they took, or -1 after a frame that cannot be trusted (the
// connection is then draining). It stops early, paused, after a frame once
// the client is not reading its replies (or the frame closed c): so a
// paused return has answered at least one frame. priv tells whether an
// administrator sent the frames (admin socket only).
func (l *loop) frames(c *conn, data []byte, priv bool) (done int, paused bool) {
	rest := data
	for len(rest) >= wire.HeaderSize {
		f, n, err := wire.Decode(rest, l.srv.cfg.MaxPayload)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			// The stream cannot be resynchronised: answer, then hang up.
			h, _ := wire.ParseHeader(rest, ^uint32(0))
			st := wire.StatusBadRequest
			if errors.Is(err, wire.ErrVersion) {
				st = wire.StatusVersion
			}
			c.replyStatus(h, st, err.Error())
			l.srv.log.Debug("bad frame", "pid", c.peer.pid, "err", err)
			l.drain(c)
			return -1, false
		}
		l.srv.handle(c, f, priv)
		rest = rest[n:]
		// The rest waits, in the socket, for the client to read.
		if c.closed || c.backlogged() {
			return len(data) - len(rest), true
		}
	}
	return len(data) - len(rest), false
}

// readableAdmin reads an administrator's connection, with each sender's
// credentials, and answers its complete frames; it consumes what it read
// once answered (read.go). A frame counts as an administrator's only if
// every byte of it was.
func (l *loop) readableAdmin(c *conn) {
	for !c.closed {
		if c.draining {
			l.discard(c)
			return
		}
		if c.backlogged() {
			l.timers.stop(&c.deadline)
			return
		}
		n, from, err := c.peekAdmin(l.buf, l.oob)
		switch {
		case err == unix.EAGAIN:
			return
		case err != nil || n == 0:
			l.closeConn(c)
			return
		}
		priv := l.srv.isAdmin(c, from)
		if len(c.in) == 0 {
			c.inPriv = priv
		} else {
			c.inPriv = c.inPriv && priv
		}
		c.in = append(c.in, l.buf[:n]...)
		done, _ := l.frames(c, c.in, c.inPriv)
		if c.dead {
			l.closeConn(c)
			return
		}
		if c.closed {
			return
		}
		if !c.settle(l.buf, n, false, c.writes) { // consumed: an admin connection holds none
			l.srv.log.Warn("socket read: peeked bytes gone", "pid", c.peer.pid)
			l.closeConn(c)
			return
		}
		if done < 0 {
			continue // draining reads on plainly
		}
		// Frames answered whole: keep the rest, which must complete in time.
		c.in = append(c.in[:0], c.in[done:]...)
		switch {
		case len(c.in) == 0:
			c.in = nil
			l.timers.stop(&c.deadline)
		case done > 0 || c.deadline.idx < 0:
			l.timers.set(&c.deadline, l.now()+l.srv.cfg.FrameTimeout)
		}
	}
}

// drain stops answering c: its write side is shut (the error reply queued
// before goes out first), and what it still sends is read and dropped for a
// moment before the connection closes.
func (l *loop) drain(c *conn) {
	c.draining = true
	c.in = nil
	rawShutdown(c.fd, unix.SHUT_WR)
	l.timers.set(&c.deadline, l.now()+l.drainTime)
}

// discard reads and drops what a draining connection sends (plainly: no
// byte of it is answered, so none is held), and closes it after drainBytes.
func (l *loop) discard(c *conn) {
	for {
		n, err := rawRecv(c.fd, l.buf, 0)
		switch {
		case err == unix.EAGAIN:
			return
		case err != nil || n == 0:
			l.closeConn(c)
			return
		}
		if c.drained += n; c.drained >= drainBytes {
			l.closeConn(c)
			return
		}
	}
}

// close ends every connection and releases the loop; run must have
// returned.
func (l *loop) close() {
	for _, c := range l.byFD {
		if c != nil {
			l.closeConn(c)
		}
	}
	l.wakeMu.Lock()
	unix.Close(l.wake)
	l.wake = noFD
	l.posted = nil
	l.wakeMu.Unlock()
	l.epFile.Close()
}
