package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/wire"
)

// The input path's edges, seen from inside: what the loop holds, and
// when it reads (read.go, loop.go's frame reader). The protocol's view of
// the same is in server_test.go and mutants_test.go.

// serve starts a daemon on a run dir of its own, after set (if any) has
// changed its loop, and stops it when the test ends. Its log is kept in
// log; one that logged an error fails the test (these tests break no rule
// of the daemon's: their clients only misbehave).
func serve(t *testing.T, cfg Config, set func(*loop)) *Server {
	s, _ := serveLog(t, cfg, set)
	return s
}

func serveLog(t *testing.T, cfg Config, set func(*loop)) (*Server, *proctest.Buffer) {
	t.Helper()
	cfg.RunDir = t.TempDir()
	log := &proctest.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
	t.Cleanup(func() { // after the stop below: the log is whole
		if text := log.String(); strings.Contains(text, "level=ERROR") {
			t.Errorf("the daemon logged an error:\n%s", text)
		}
	})
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if set != nil {
		set(s.loop)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("daemon still serving 10 s after it was told to stop")
		}
	})
	return s, log
}

func dialUnix(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func exchange(t *testing.T, c *net.UnixConn, req []byte) wire.Frame {
	t.Helper()
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := wire.ReadFrame(c, wire.MaxReplyPayload)
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	return f
}

// watch registers c as a watcher and returns the generation it saw.
func watch(t *testing.T, c *net.UnixConn) uint32 {
	t.Helper()
	f := exchange(t, c, wire.Append(nil, wire.Header{Op: wire.OpWatch, ID: 1}, nil))
	gen, err := wire.ParseU32(f.Payload)
	if f.Status != wire.StatusOK || err != nil {
		t.Fatalf("watch: %+v %q", f.Header, f.Payload)
	}
	return gen
}

func quietAck(gen uint32, id uint32) []byte {
	return wire.Append(nil, wire.Header{Op: wire.OpAck, ID: id}, wire.Ack{Gen: gen, Flags: wire.FlagQuiet}.Encode())
}

// eventually polls cond on the loop until it holds, for 5 s at most.
func eventually(t *testing.T, s *Server, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		var ok bool
		if err := s.do(func() { ok = cond() }); err != nil {
			t.Fatal(err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 5 s", what)
		}
	}
}

// member is the one connection on the scope's socket.
func member(l *loop) *conn {
	for _, c := range l.byFD {
		if c != nil && !c.admin {
			return c
		}
	}
	return nil
}

// A read that fills the loop's buffer is not all there was: the loop reads
// on. Quiet acks (no reply, so nothing the client reads gives the loop a
// new edge) fill more than the buffer, all sent while the loop is held, so
// that it takes them in at one edge; the request behind them is answered.
func TestFullReadIsNotAll(t *testing.T) {
	s := serve(t, Config{}, nil)
	c := dialUnix(t, s.SocketPath())
	gen := watch(t, c)
	var req []byte
	for i := uint32(2); len(req) < len(s.loop.buf)*3/2; i++ {
		req = append(req, quietAck(gen, i)...)
	}
	req = wire.Append(req, wire.Header{Op: wire.OpGet, ID: 1 << 30}, nil)

	held, release := make(chan struct{}), make(chan struct{})
	if !s.loop.post(func() { close(held); <-release }) {
		t.Fatal("loop gone")
	}
	<-held
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Write(req)
	close(release)
	if err != nil {
		t.Fatalf("%d bytes did not fit in the socket: %v", len(req), err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := wire.ReadFrame(c, wire.MaxReplyPayload)
	if err != nil || f.ID != 1<<30 || f.Status != wire.StatusOK {
		t.Fatalf("the request after %d bytes of quiet acks: %+v %v", len(req), f.Header, err)
	}
}

// The bytes of requests answered without output stay in the socket, up to
// maxHeld: ten quiet acks are held, the eleventh's arrival consumes them.
func TestHeldUpToMaxHeld(t *testing.T) {
	s := serve(t, Config{}, nil)
	c := dialUnix(t, s.SocketPath())
	gen := watch(t, c)
	size := len(quietAck(gen, 0))
	var held int
	readHeld := func() bool { held = member(s.loop).held; return true }
	for i := 1; i <= maxHeld/size+1; i++ {
		before := held
		if _, err := c.Write(quietAck(gen, uint32(i))); err != nil {
			t.Fatal(err)
		}
		eventually(t, s, "the quiet ack taken in", func() bool { readHeld(); return held != before })
		want := i * size
		if want > maxHeld {
			want = 0
		}
		if held != want {
			t.Fatalf("after %d quiet acks of %d bytes: %d held, want %d (at most %d)", i, size, held, want, maxHeld)
		}
	}
}

// badFrame is a header whose length is over any bound: the loop answers it,
// then drains the connection.
func badFrame() []byte {
	h := make([]byte, wire.HeaderSize)
	wire.PutHeader(h, wire.Header{Op: wire.OpGet, ID: 7, Len: 1 << 30})
	return h
}

// refused reads the error reply to badFrame, then the end of what the
// daemon sends (it shut its side for writing).
func refused(t *testing.T, c *net.UnixConn) {
	t.Helper()
	f := exchange(t, c, badFrame())
	if f.ID != 7 || f.Status != wire.StatusBadRequest {
		t.Fatalf("bad frame answered %+v %q", f.Header, f.Payload)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after the error reply: %v, want EOF", err)
	}
}

// hungUp waits for the daemon to close its end (POLLHUP: both directions
// shut), for 5 s at most.
func hungUp(t *testing.T, c *net.UnixConn) bool {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var hup bool
	for deadline := time.Now().Add(5 * time.Second); !hup && time.Now().Before(deadline); {
		raw.Control(func(fd uintptr) {
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(p, 10); err == nil {
				hup = p[0].Revents&unix.POLLHUP != 0
			}
		})
	}
	return hup
}

// unread is what c sent that its peer has not read (SIOCOUTQ).
func unread(t *testing.T, c *net.UnixConn) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	raw.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func bothSockets(t *testing.T, s *Server, f func(t *testing.T, c *net.UnixConn)) {
	t.Run("member", func(t *testing.T) { f(t, dialUnix(t, s.SocketPath())) })
	t.Run("admin", func(t *testing.T) { f(t, dialUnix(t, s.AdminSocketPath())) })
}

// After a bad frame the daemon reads and drops what the client sends for
// drainTime, or drainBytes, whichever ends first; then it closes. Here the
// time is long: the bytes end it, at drainBytes exactly.
func TestDrainReadsOn(t *testing.T) {
	s := serve(t, Config{FrameTimeout: time.Minute}, func(l *loop) { l.drainTime = time.Minute })
	bothSockets(t, s, func(t *testing.T, c *net.UnixConn) {
		refused(t, c)
		junk := make([]byte, drainBytes)
		sent := 0
		for _, n := range []int{100, 100, drainBytes - 201, 1} {
			// Sent after the bad frame's reply, and after the drain read
			// the last bytes: the connection is still open.
			time.Sleep(20 * time.Millisecond)
			if _, err := c.Write(junk[:n]); err != nil {
				t.Fatalf("%d bytes into the drain: %v", sent, err)
			}
			sent += n
			for start := time.Now(); unread(t, c) != 0; time.Sleep(time.Millisecond) {
				if time.Since(start) > 5*time.Second {
					t.Fatalf("%d bytes into the drain: not read", sent)
				}
			}
		}
		if !hungUp(t, c) {
			t.Fatalf("still open after %d bytes drained", sent)
		}
	})
}

// The drain's time ends it, when the client sends nothing more.
func TestDrainEnds(t *testing.T) {
	s := serve(t, Config{FrameTimeout: time.Minute}, nil)
	bothSockets(t, s, func(t *testing.T, c *net.UnixConn) {
		refused(t, c)
		if !hungUp(t, c) {
			t.Fatalf("still open 5 s after a bad frame; the drain is %v", drainTime)
		}
		if _, err := c.Write([]byte{1}); !errors.Is(err, unix.EPIPE) && !errors.Is(err, unix.ECONNRESET) {
			t.Fatalf("a write after the close: %v, want EPIPE", err)
		}
	})
}

// cpuTime is the CPU time this process has used.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A timer pending (a frame in part) does not keep the loop running: it
// parks until the timer is due, not in a busy loop that would still fire
// it on time.
func TestLoopSleepsUntilTimer(t *testing.T) {
	s := serve(t, Config{FrameTimeout: time.Minute}, nil)
	c := dialUnix(t, s.SocketPath())
	if _, err := c.Write(make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	eventually(t, s, "the frame's clock set", func() bool { m := member(s.loop); return m != nil && m.deadline.idx >= 0 })
	const window = 500 * time.Millisecond
	c0 := cpuTime(t)
	time.Sleep(window)
	if used := cpuTime(t) - c0; used > window/5 {
		t.Fatalf("the process used %v of CPU in %v while the daemon waited for a timer", used, window)
	}
}

// Out of file descriptors, the daemon stops accepting for a while, longer
// each time (not spinning on a listening socket that stays readable, nor
// giving up), and accepts the waiting connection once fds are free again:
// on either socket, with no timer pending or one due much later.
func TestAcceptBackOff(t *testing.T) {
	for _, tc := range []struct {
		name  string
		admin bool
		timer bool
	}{
		{"member socket, no timer", false, false},
		{"admin socket, a timer due later", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, log := serveLog(t, Config{FrameTimeout: time.Minute}, nil)
			if tc.timer { // a frame in part
				partial := dialUnix(t, s.SocketPath())
				if _, err := partial.Write(make([]byte, 5)); err != nil {
					t.Fatal(err)
				}
				eventually(t, s, "the frame's clock set", func() bool { m := member(s.loop); return m != nil && m.deadline.idx >= 0 })
			}
			path, req := s.SocketPath(), wire.Append(nil, wire.Header{Op: wire.OpGet, ID: 3}, nil)
			if tc.admin {
				path, req = s.AdminSocketPath(), wire.Append(nil, wire.Header{Op: wire.OpGet, ID: 3}, wire.AppendName(nil, ""))
			}
			waiting := acceptedAfterFDs(t, s, log, path)
			defer unix.Close(waiting)
			if _, err := unix.Write(waiting, req); err != nil {
				t.Fatal(err)
			}
			if err := unix.SetsockoptTimeval(waiting, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
				t.Fatal(err)
			}
			f, err := wire.ReadFrame(fdReader(waiting), wire.MaxReplyPayload)
			if err != nil || f.ID != 3 || f.Status != wire.StatusOK {
				t.Fatalf("the connection that waited for an fd: %+v %v", f.Header, err)
			}
		})
	}
}

// acceptedAfterFDs connects to path while this process, the daemon's, is
// out of fds, checks that the daemon backs off, frees the fds, and returns
// the connection.
func acceptedAfterFDs(t *testing.T, s *Server, log *proctest.Buffer, path string) int {
	t.Helper()
	waiting, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = min(lim.Cur, 1024)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fillers []int
	defer func() {
		for _, fd := range fillers {
			unix.Close(fd)
		}
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}()
	for {
		fd, err := unix.Dup(waiting)
		if err == unix.EMFILE {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		fillers = append(fillers, fd)
	}
	if err := unix.Connect(waiting, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	eventually(t, s, "accepting again after a back-off of 80 ms", func() bool { return s.loop.backoff >= 80*time.Millisecond })
	// Five tries at least (5, 10, 20, 40, 80 ms); many more would be a spin.
	if tries := strings.Count(log.String(), "msg=accept"); tries > 10 {
		t.Fatalf("%d tries to accept in the first 155 ms of back-off", tries)
	}
	return waiting
}

// fdReader reads a blocking fd.
type fdReader int

func (fd fdReader) Read(p []byte) (int, error) {
	n, err := unix.Read(int(fd), p)
	if n < 0 {
		n = 0
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	return n, err
}
