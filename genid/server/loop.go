package server

import (
	"container/heap"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// drainTime and drainBytes bound how long a connection that broke the
// protocol is read (and discarded) after its error reply, so that the reply
// reaches a client that is still sending instead of a reset.
const (
	drainTime  = 100 * time.Millisecond
	drainBytes = 64 << 10
)

// loop is the daemon's event loop. One goroutine serves an epoll instance
// holding the listening socket, every connection and a wake-up eventfd: it
// accepts, reads and answers requests, flushes backlogs, and ends
// connections whose started frame is overdue. Only the loop opens and
// closes connection fds, so an fd is valid for as long as the loop sees its
// conn.
//
// Nothing runs while the daemon is idle: the loop is parked without a
// deadline unless a frame is half received, and no goroutine or timer
// exists per connection.
type loop struct {
	srv      *Server
	ep       int      // epoll instance
	epFile   *os.File // ep in Go's netpoller: the loop parks on it
	lfd      int      // listening socket
	stopping atomic.Bool

	wakeMu sync.Mutex // stop may run on any goroutine, even as close runs
	wake   int        // eventfd that stop writes to; -1 once closed

	// Owned by the loop goroutine.
	byFD      []*conn // by fd
	nconns    int
	seq       uint32 // tells a connection from an earlier one on the same fd
	deadlines deadlineHeap
	epoch     time.Time     // the loop's clock: time since epoch
	retry     time.Duration // when to accept again after running out of fds; 0: not waiting
	backoff   time.Duration
	buf       []byte // read buffer, shared by all connections
	events    []unix.EpollEvent
	failed    error // accept failed for good: run returns it
}

func newLoop(s *Server, lfd int) (*loop, error) {
	l := &loop{srv: s, lfd: lfd, epoch: time.Now(), buf: make([]byte, 64<<10), events: make([]unix.EpollEvent, 256)}
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
	for _, fd := range []int{lfd, l.wake} {
		if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			l.epFile.Close()
			unix.Close(l.wake)
			return nil, fmt.Errorf("epoll: %w", err)
		}
	}
	return l, nil
}

func (l *loop) now() time.Duration { return time.Since(l.epoch) }

// stop makes run return; safe from any goroutine, before or after close.
func (l *loop) stop() {
	l.stopping.Store(true)
	// Under wakeMu: run may see stopping and return, and close the eventfd,
	// before we write; its number may belong to another file by then.
	l.wakeMu.Lock()
	defer l.wakeMu.Unlock()
	if l.wake < 0 {
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
		switch {
		case fd == l.wake:
			var v [8]byte
			rawRead(l.wake, v[:])
		case fd == l.lfd:
			if err := l.accept(); err != nil {
				l.srv.log.Error("accept", "err", err)
				l.failed = err
			}
		default:
			c := l.conn(fd)
			if c == nil || c.seq != uint32(ev.Pad) {
				continue // closed earlier in this batch
			}
			if ev.Events&unix.EPOLLOUT != 0 {
				c.flush()
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				l.readable(c)
			}
		}
	}
	l.expire()
}

func (l *loop) conn(fd int) *conn {
	if fd < 0 || fd >= len(l.byFD) {
		return nil
	}
	return l.byFD[fd]
}

// conns lists the open connections (loop goroutine only).
func (l *loop) conns() []*conn {
	out := make([]*conn, 0, l.nconns)
	for _, c := range l.byFD {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// next is when the loop must look at the time again: the earliest frame
// (or drain) deadline or accept retry; 0 if none, and so none while idle.
func (l *loop) next() time.Duration {
	next := time.Duration(0)
	if len(l.deadlines) > 0 {
		next = l.deadlines[0].deadline
	}
	if l.retry > 0 && (next == 0 || l.retry < next) {
		next = l.retry
	}
	return next
}

// expire ends connections whose started frame (or drain) is overdue, and
// resumes accepting after a back-off.
func (l *loop) expire() {
	now := l.now()
	for len(l.deadlines) > 0 && l.deadlines[0].deadline <= now {
		c := l.deadlines[0]
		if !c.draining {
			l.srv.log.Debug("partial frame not completed in time", "pid", c.peer.pid, "timeout", l.srv.cfg.FrameTimeout)
		}
		l.closeConn(c)
	}
	if l.retry > 0 && l.retry <= now {
		l.retry = 0
		epollCtl(l.ep, unix.EPOLL_CTL_MOD, l.lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.lfd)})
	}
}

// accept takes the pending connections.
func (l *loop) accept() error {
	s := l.srv
	for range 256 {
		r, _, errno := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(l.lfd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		fd := int(r)
		switch errno {
		case 0:
		case unix.EAGAIN:
			return nil
		case unix.EINTR, unix.ECONNABORTED, unix.EPROTO, unix.EPERM:
			continue
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			// Out of fds or memory: stop listening for a while instead of
			// spinning on a socket that stays readable.
			l.backoff = min(max(2*l.backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept", "err", errno, "retry_in", l.backoff)
			l.retry = l.now() + l.backoff
			epollCtl(l.ep, unix.EPOLL_CTL_MOD, l.lfd, &unix.EpollEvent{Events: 0, Fd: int32(l.lfd)})
			return nil
		default:
			return fmt.Errorf("accept: %w", errno)
		}
		l.backoff = 0
		if l.nconns >= s.cfg.MaxConns {
			rawClose(fd)
			s.log.Warn("connection refused: too many connections", "max_conns", s.cfg.MaxConns)
			continue
		}
		if err := l.add(fd); err != nil {
			rawClose(fd)
			s.log.Warn("connection dropped", "err", err)
		}
	}
	return nil
}

// add registers an accepted connection.
func (l *loop) add(fd int) error {
	p, err := peerOf(fd)
	if err != nil {
		return err
	}
	l.seq++
	c := &conn{srv: l.srv, fd: fd, seq: l.seq, dl: -1, peer: p}
	if err := epollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, c.pollEvent(false)); err != nil {
		return err
	}
	if fd >= len(l.byFD) {
		l.byFD = append(l.byFD, make([]*conn, fd+1-len(l.byFD))...)
	}
	l.byFD[fd] = c
	l.nconns++
	return nil
}

// closeConn ends a connection: its watcher stops counting, a pending
// wait-watchers is dropped.
func (l *loop) closeConn(c *conn) {
	l.deadlines.clear(c)
	epollCtl(l.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	c.close()
	l.srv.waits.drop(c)
	if w := c.watcher.Swap(nil); w != nil {
		w.Close()
		l.srv.watchers.Add(-1)
		l.srv.waits.check() // it may have been the last outdated one
	}
	l.byFD[c.fd] = nil
	l.nconns--
}

// close ends every connection and releases the loop; run must have
// returned.
func (l *loop) close() {
	for _, c := range l.byFD {
		if c != nil {
			l.closeConn(c)
		}
	}
	unix.Close(l.lfd)
	l.wakeMu.Lock()
	unix.Close(l.wake)
	l.wake = -1
	l.wakeMu.Unlock()
	l.epFile.Close()
}

// deadlineHeap orders the connections that have a deadline (a frame half
// received, or a drain): few at any time, and none while idle.
type deadlineHeap []*conn

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].deadline < h[j].deadline }
func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].dl, h[j].dl = int32(i), int32(j)
}
func (h *deadlineHeap) Push(x any) {
	c := x.(*conn)
	c.dl = int32(len(*h))
	*h = append(*h, c)
}
func (h *deadlineHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.dl = -1
	return c
}

func (h *deadlineHeap) set(c *conn, at time.Duration) {
	c.deadline = at
	if c.dl >= 0 {
		heap.Fix(h, int(c.dl))
	} else {
		heap.Push(h, c)
	}
}

func (h *deadlineHeap) clear(c *conn) {
	if c.dl >= 0 {
		heap.Remove(h, int(c.dl))
	}
}
