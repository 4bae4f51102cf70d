package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/servertest"
	"github.com/genid-project/genid/internal/wire"
)

// daemon is the daemon in this process, on a run dir of its own.
type daemon struct {
	*servertest.Daemon
	dir  string
	stop func()
}

func start(t *testing.T, dir string, cfg server.Config) *daemon {
	t.Helper()
	d := servertest.Start(t, dir, cfg)
	return &daemon{Daemon: d, dir: d.RunDir, stop: d.Stop}
}

func (d *daemon) dial(t *testing.T) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.SocketPath(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c net.Conn, op wire.Op, id uint32, payload []byte) {
	t.Helper()
	if _, err := c.Write(wire.Append(nil, wire.Header{Op: op, ID: id}, payload)); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, c net.Conn) wire.Frame {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := wire.ReadFrame(c, wire.MaxReplyPayload)
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	return f
}

func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue // an error reply before the close
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("connection still open")
		}
		return
	}
}

// expectRefused waits for the frame of a connection refused at connect
// (op refused, id 0, status st, a message that has want), then its close.
func expectRefused(t *testing.T, c net.Conn, st wire.Status, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := wire.ReadFrame(c, wire.MaxReplyPayload)
	if err != nil {
		t.Fatalf("no refusal: %v", err)
	}
	if f.Op != wire.OpRefused || f.ID != 0 || f.Status != st || !strings.Contains(string(f.Payload), want) {
		t.Fatalf("refusal %+v %q, want op refused, id 0, status %v, a message with %q", f.Header, f.Payload, st, want)
	}
	expectClosed(t, c)
}

func (d *daemon) bump(min uint32, reason string) (uint32, error) { return d.Bump("", min, reason) }

func (d *daemon) status(t *testing.T) genid.Status {
	t.Helper()
	st, err := d.Status("")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// dialAdmin connects to the admin socket.
func (d *daemon) dialAdmin(t *testing.T) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.AdminSocketPath(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// named prefixes an admin request's payload with a scope's name.
func named(name string, payload []byte) []byte { return append(wire.AppendName(nil, name), payload...) }

// alive checks that the daemon still answers.
func (d *daemon) alive(t *testing.T) {
	t.Helper()
	c := d.dial(t)
	send(t, c, wire.OpGet, 1, nil)
	if f := recv(t, c); f.Status != wire.StatusOK || f.ID != 1 {
		t.Fatalf("daemon not answering: %+v", f.Header)
	}
}

func TestPageFile(t *testing.T) {
	d := start(t, "", server.Config{})
	st, err := os.Stat(filepath.Join(d.dir, genid.PageFile))
	if err != nil || st.Size() != 4096 || st.Mode().Perm() != 0o644 {
		t.Fatalf("page: %v size %d mode %v", err, st.Size(), st.Mode())
	}
	if _, err := d.bump(42, "test"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(d.dir, genid.PageFile))
	if g := binary.NativeEndian.Uint32(b); g != 42 {
		t.Fatalf("page holds %d", g)
	}
	d.stop()
	if _, err := os.Stat(filepath.Join(d.dir, genid.SocketFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after shutdown: %v", err)
	}
	d2 := start(t, d.dir, server.Config{})
	if g := d2.status(t).Generation; g != 42 {
		t.Fatalf("restart resumed at %d, want 42", g)
	}
	if _, err := server.New(server.Config{RunDir: d.dir}); err == nil {
		t.Fatal("a second daemon on the same run dir was allowed")
	}
}

func TestBadInput(t *testing.T) {
	d := start(t, "", server.Config{FrameTimeout: 100 * time.Millisecond, MaxPayload: 64})

	t.Run("garbage", func(t *testing.T) {
		c := d.dial(t)
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		f := recv(t, c)
		if f.Status != wire.StatusVersion {
			t.Fatalf("garbage answered with %v", f.Status)
		}
		expectClosed(t, c)
	})
	t.Run("oversized", func(t *testing.T) {
		c := d.dial(t)
		var h [wire.HeaderSize]byte
		wire.PutHeader(h[:], wire.Header{Op: wire.OpBump, ID: 3, Len: 1 << 30})
		c.Write(h[:])
		if f := recv(t, c); f.Status != wire.StatusBadRequest || f.ID != 3 {
			t.Fatalf("oversized frame: %+v", f.Header)
		}
		expectClosed(t, c)
	})
	t.Run("truncated", func(t *testing.T) {
		c := d.dial(t)
		full := wire.Append(nil, wire.Header{Op: wire.OpAck, ID: 1}, wire.U32(1))
		c.Write(full[:7])
		expectClosed(t, c) // the partial-frame deadline ends it
		c2 := d.dial(t)
		c2.Write(full[:18])
		expectClosed(t, c2)
	})
	t.Run("unknown op", func(t *testing.T) {
		c := d.dial(t)
		send(t, c, wire.Op(99), 5, []byte("xyz"))
		if f := recv(t, c); f.Status != wire.StatusUnknownOp || f.ID != 5 {
			t.Fatalf("unknown op: %+v", f.Header)
		}
		send(t, c, wire.OpGet, 6, nil)
		if f := recv(t, c); f.Status != wire.StatusOK {
			t.Fatalf("connection unusable after an unknown op: %+v", f.Header)
		}
	})
	t.Run("bad payloads", func(t *testing.T) {
		c := d.dial(t)
		for i, req := range []struct {
			op wire.Op
			p  []byte
		}{
			{wire.OpGet, []byte{1}},
			{wire.OpAck, []byte{1, 2}},
			{wire.OpAttach, wire.U32s(1<<7, 0)},
			{wire.OpWaitWatchers, nil},
			{wire.OpWatch, []byte{1}},
			{wire.OpOutdated, []byte{1}},
			{wire.OpStatus, []byte{1}},
		} {
			send(t, c, req.op, uint32(i+1), req.p)
			if f := recv(t, c); f.Status != wire.StatusBadRequest || len(f.Payload) == 0 {
				t.Errorf("%v with %x: %+v %q", req.op, req.p, f.Header, f.Payload)
			}
		}
		send(t, c, wire.OpAck, 50, wire.U32(0))
		if f := recv(t, c); f.Status != wire.StatusNotWatcher {
			t.Errorf("ack without watch: %v", f.Status)
		}
		// What only an administrator may do is refused on a scope's socket.
		for i, op := range []wire.Op{wire.OpBump, wire.OpQueryPeer} {
			send(t, c, op, uint32(60+i), wire.U32s(0, 0))
			if f := recv(t, c); f.Status != wire.StatusPermission || !bytes.Contains(f.Payload, []byte("admin.sock")) {
				t.Errorf("%v on a scope's socket: %+v %q", op, f.Header, f.Payload)
			}
		}
		send(t, c, wire.OpScopeCreate, 70, nil)
		if f := recv(t, c); f.Status != wire.StatusUnknownOp {
			t.Errorf("scope-create on a scope's socket: %+v %q", f.Header, f.Payload)
		}
	})
	t.Run("bad admin payloads", func(t *testing.T) {
		c := d.dialAdmin(t)
		for i, req := range []struct {
			op wire.Op
			p  []byte
		}{
			{wire.OpGet, nil},                  // no name
			{wire.OpGet, []byte{5, 'a'}},       // name cut short
			{wire.OpGet, named("../x", nil)},   // not a name
			{wire.OpGet, named("", []byte{1})}, // payload after it
			{wire.OpOutdated, named("", []byte{1})},
			{wire.OpStatus, named("", []byte{1})},
			{wire.OpScopeRemove, named("", []byte{1})},
			{wire.OpWaitWatchers, named("", []byte{1})},
			{wire.OpMetrics, named("a", nil)},
			{wire.OpHistory, named("", []byte{1})},
			{wire.OpBump, named("", []byte{1})}, // short bump
			{wire.OpBump, named("", append(wire.U32s(0, 0), "a\x00b"...))},
			{wire.OpBump, named("x", wire.U32s(0, wire.FlagAllScopes))},
			{wire.OpQueryPeer, named("", []byte{1})},
			{wire.OpScopeCreate, named("a", wire.U32s(0, 0))}, // short
			{wire.OpScopeCreate, named("a", wire.U32s(1<<9, 0, 0))},
			{wire.OpScopes, named("a", nil)},
			{wire.OpRestore, named("", wire.U32s(0, 0))},
			{wire.OpRestore, named("x", wire.U32s(0, 0, 0))}, // a scope name with no pid
		} {
			send(t, c, req.op, uint32(i+1), req.p)
			if f := recv(t, c); f.Status != wire.StatusBadRequest || len(f.Payload) == 0 {
				t.Errorf("%v with %x: %+v %q", req.op, req.p, f.Header, f.Payload)
			}
		}
		send(t, c, wire.OpWatch, 50, named("", nil))
		if f := recv(t, c); f.Status != wire.StatusUnknownOp {
			t.Errorf("watch on the admin socket: %+v %q", f.Header, f.Payload)
		}
		send(t, c, wire.OpGet, 51, named("nosuch", nil))
		if f := recv(t, c); f.Status != wire.StatusNotFound {
			t.Errorf("get of a scope that does not exist: %+v %q", f.Header, f.Payload)
		}
	})
	t.Run("random bytes", func(t *testing.T) {
		buf := make([]byte, 4096)
		for i := range 50 {
			c := d.dial(t)
			for j := range buf {
				buf[j] = byte(i*7 + j*13)
			}
			buf[0] = 1 // get past the version check now and then
			c.Write(buf[:(i*97)%len(buf)+1])
			c.Close()
		}
	})
	d.alive(t)
}

func TestLimits(t *testing.T) {
	d := start(t, "", server.Config{MaxConns: 8, MaxWatchers: 2})
	var conns []*net.UnixConn
	for range 30 {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.SocketPath(), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The first 8 are served, the rest told why and hung up on.
	served, refused := 0, 0
	for _, c := range conns {
		c.Write(wire.Append(nil, wire.Header{Op: wire.OpGet, ID: 1}, nil)) // fails on those hung up on
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		f, err := wire.ReadFrame(c, 64)
		switch {
		case err == nil && f.Op == wire.OpGet && f.Status == wire.StatusOK:
			served++
		case err == nil && f.Op == wire.OpRefused && f.Status == wire.StatusLimit:
			refused++
		default:
			t.Errorf("a connection got %+v, %v", f.Header, err)
		}
	}
	if served != 8 || refused != 22 {
		t.Fatalf("%d connections served, %d refused, want 8 and 22", served, refused)
	}
	for _, c := range conns {
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := d.dial(t)
		c.Write(wire.Append(nil, wire.Header{Op: wire.OpGet, ID: 1}, nil))
		c.SetReadDeadline(time.Now().Add(time.Second))
		if f, err := wire.ReadFrame(c, 64); err == nil && f.Status == wire.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("connections not accepted again after the flood")
		}
		time.Sleep(20 * time.Millisecond)
	}

	w1, w2, w3 := d.dial(t), d.dial(t), d.dial(t)
	for i, c := range []net.Conn{w1, w2, w3} {
		send(t, c, wire.OpWatch, 1, nil)
		f := recv(t, c)
		if want := wire.StatusOK; i == 2 {
			if f.Status != wire.StatusLimit {
				t.Fatalf("third watcher: %v", f.Status)
			}
		} else if f.Status != want {
			t.Fatalf("watcher %d: %v", i, f.Status)
		}
	}
}

// A watcher that never reads must not slow a bump down or grow the daemon:
// its events coalesce, and it gets the latest when it reads at last.
func TestSlowReader(t *testing.T) {
	d := start(t, "", server.Config{})
	c := d.dial(t)
	c.SetReadBuffer(4096)
	send(t, c, wire.OpWatch, 1, nil)
	recv(t, c)
	startT := time.Now()
	var last uint32
	for range 50000 {
		last, _ = d.bump(0, "storm")
	}
	if el := time.Since(startT); el > 10*time.Second {
		t.Fatalf("bumps blocked on a slow reader: %v", el)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		f := recv(t, c)
		p, _ := wire.ParsePair(f.Payload)
		if f.Op == wire.OpEvent && p.A == last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("latest generation %d never arrived", last)
		}
	}
}

// TestRestoredAttach plays the CRIU plugin: it learns a watcher's state
// through query-peer, then, in a restore it began on the admin socket,
// attaches a new connection in its place.
func TestRestoredAttach(t *testing.T) {
	d := start(t, "", server.Config{})
	client := d.dial(t)
	send(t, client, wire.OpWatch, 1, nil)
	recv(t, client)
	d.bump(0, "t")
	recv(t, client) // event 1
	send(t, client, wire.OpAck, 2, wire.U32(1))
	recv(t, client)

	// The plugin knows the client's socket inode from CRIU.
	var st unix.Stat_t
	raw, _ := client.SyscallConn()
	raw.Control(func(fd uintptr) { unix.Fstat(int(fd), &st) })
	q := d.dialAdmin(t)
	ino := binary.LittleEndian.AppendUint64(nil, st.Ino)
	send(t, q, wire.OpQueryPeer, 1, named("", ino))
	f := recv(t, q)
	if f.Status != wire.StatusOK || !bytes.Equal(f.Payload, append(wire.U32s(wire.FlagWatcher, 1), 0)) {
		t.Fatalf("query-peer: %+v %x", f.Header, f.Payload)
	}
	send(t, q, wire.OpQueryPeer, 2, named("", binary.LittleEndian.AppendUint64(nil, 1)))
	if f := recv(t, q); f.Status != wire.StatusNotFound {
		t.Fatalf("query-peer of an unknown inode: %v", f.Status)
	}

	// Outside a restore, no one may attach a restored connection.
	early := d.dial(t)
	send(t, early, wire.OpAttach, 8, wire.U32s(wire.FlagWatcher|wire.FlagRestored, 1))
	if f := recv(t, early); f.Status != wire.StatusPermission {
		t.Fatalf("a restored attach with no restore under way: %+v %q", f.Header, f.Payload)
	}

	// Restore on a host that moved past the snapshot: bumped past the
	// recorded generation (4).
	d.bump(3, "t")
	send(t, q, wire.OpRestore, 3, named("", wire.Restore{Flags: wire.FlagAvoid, Avoid: 4}.Encode()))
	if f := recv(t, q); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, append(wire.U32(5), 0)) {
		t.Fatalf("restore: %+v %q", f.Header, f.Payload)
	}
	restored := d.dial(t)
	send(t, restored, wire.OpAttach, 9, wire.U32s(wire.FlagWatcher|wire.FlagRestored, 1))
	f = recv(t, restored)
	if f.Op != wire.OpAttach || f.ID != 9 || f.Status != wire.StatusOK {
		t.Fatalf("first frame after attach must be its reply: %+v %q", f.Header, f.Payload)
	}
	ev := recv(t, restored)
	p, _ := wire.ParsePair(ev.Payload)
	if ev.Op != wire.OpEvent || p.A != 5 || p.B&wire.FlagRestored == 0 {
		t.Fatalf("restored event: %+v %+v", ev.Header, p)
	}
	if n := d.status(t).Outdated; n != 2 {
		t.Fatalf("outdated %d, want the restored watcher and the original", n)
	}
	send(t, restored, wire.OpAck, 10, wire.U32(5))
	if f := recv(t, restored); f.Status != wire.StatusOK {
		t.Fatalf("ack on restored connection: %v", f.Status)
	}
	// The restore ends with its connection.
	q.Close()
	waitFor(t, func() bool {
		c := d.dial(t)
		send(t, c, wire.OpAttach, 11, wire.U32s(wire.FlagWatcher|wire.FlagRestored, 5))
		return recv(t, c).Status == wire.StatusPermission
	})
}

// An attach without FlagWatcher is a connection that watched nothing when
// it was checkpointed: it is told the generation, and, if restored, sent
// the event that says so, but it is no watcher. A watcher cannot attach
// again.
func TestAttachNotAWatcher(t *testing.T) {
	d := start(t, "", server.Config{})
	d.bump(3, "t")
	c := d.dial(t)
	reply := func(c net.Conn, id uint32, flags, acked uint32) wire.Frame {
		t.Helper()
		send(t, c, wire.OpAttach, id, wire.U32s(flags, acked))
		f := recv(t, c)
		if f.Op != wire.OpAttach || f.ID != id {
			t.Fatalf("attach %#x: the next frame is %+v, not its reply", flags, f.Header)
		}
		return f
	}
	if f := reply(c, 1, 0, 0); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, wire.U32(3)) {
		t.Fatalf("attach of no watcher: %+v %x", f.Header, f.Payload)
	}
	if n := d.status(t).Watchers; n != 0 {
		t.Fatalf("%d watchers after an attach of no watcher", n)
	}
	if f := reply(c, 2, wire.FlagWatcher, 3); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, wire.U32(3)) {
		t.Fatalf("attach of a watcher: %+v %x", f.Header, f.Payload)
	}
	if f := reply(c, 3, wire.FlagWatcher, 3); f.Status != wire.StatusBadRequest {
		t.Fatalf("a watcher attaching again: %+v %q", f.Header, f.Payload)
	}
	d.WaitRegistered("", 1)

	q := d.dialAdmin(t)
	send(t, q, wire.OpRestore, 1, named("", wire.Restore{}.Encode()))
	if f := recv(t, q); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, append(wire.U32(4), 0)) {
		t.Fatalf("restore: %+v %q", f.Header, f.Payload)
	}
	r := d.dial(t)
	if f := reply(r, 4, wire.FlagRestored, 0); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, wire.U32(4)) {
		t.Fatalf("restored attach of no watcher: %+v %x", f.Header, f.Payload)
	}
	if ev := recv(t, r); ev.Op != wire.OpEvent || !bytes.Equal(ev.Payload, wire.U32s(4, wire.FlagRestored)) {
		t.Fatalf("after a restored attach: %+v %x, want the restored event", ev.Header, ev.Payload)
	}
	if n := d.status(t).Watchers; n != 1 {
		t.Fatalf("%d watchers after a restored attach of no watcher, want the one before", n)
	}
	// A restored watcher that had acked the generation is up to date, but
	// is told it was restored all the same: it resends what it had in
	// flight.
	w := d.dial(t)
	if f := reply(w, 5, wire.FlagWatcher|wire.FlagRestored, 4); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, wire.U32(4)) {
		t.Fatalf("restored attach of an up-to-date watcher: %+v %x", f.Header, f.Payload)
	}
	if ev := recv(t, w); ev.Op != wire.OpEvent || !bytes.Equal(ev.Payload, wire.U32s(4, wire.FlagRestored)) {
		t.Fatalf("after a restored attach of an up-to-date watcher: %+v %x, want the restored event", ev.Header, ev.Payload)
	}
}

func TestClient(t *testing.T) {
	d := start(t, "", server.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := genid.Open(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.TryWait(); !errors.Is(err, genid.ErrWouldBlock) {
		t.Fatalf("TryWait when up to date: %v", err)
	}
	got := make(chan uint32, 1)
	go func() {
		g, _ := w.Wait(ctx)
		got <- g
	}()
	time.Sleep(20 * time.Millisecond)
	d.bump(7, "t")
	if g := <-got; g != 7 || c.Generation() != 7 {
		t.Fatalf("Wait = %d, page %d", g, c.Generation())
	}
	if g, err := w.TryWait(); g != 7 || err != nil {
		t.Fatalf("read keeps returning until acked: %d %v", g, err)
	}
	if n, _ := c.Outdated(ctx); n != 1 {
		t.Fatalf("outdated %d", n)
	}
	if err := c.WaitWatchers(ctx, 50*time.Millisecond); !errors.Is(err, genid.ErrTimeout) {
		t.Fatalf("wait-watchers timeout: %v", err)
	}
	// A timeout passed already times out at once (not 49 days later).
	passed, cancelPassed := context.WithTimeout(ctx, 5*time.Second)
	err = c.WaitWatchers(passed, -time.Second)
	cancelPassed()
	if !errors.Is(err, genid.ErrTimeout) {
		t.Fatalf("wait-watchers with a negative timeout: %v", err)
	}
	if err := w.WaitWatchers(ctx, 0); !errors.Is(err, genid.ErrInterrupted) {
		t.Fatalf("an outdated watcher waiting on watchers: %v", err)
	}
	if err := w.Ack(ctx, 6); !errors.Is(err, genid.ErrStale) {
		t.Fatalf("stale ack: %v", err)
	}
	if err := w.Ack(ctx, 7); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitWatchers(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	// A wait abandoned by its caller does not wedge the connection.
	d.bump(0, "t")
	short, cancelShort := context.WithTimeout(ctx, 30*time.Millisecond)
	c.WaitWatchers(short, 0)
	cancelShort()
	w.Ack(ctx, 8)
	if err := c.WaitWatchers(ctx, time.Second); err != nil {
		t.Fatalf("after an abandoned wait: %v", err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.Generation != 8 || st.Watchers != 1 || st.LastBump == nil || st.WatcherList != nil {
		t.Fatalf("a member's status %+v %v", st, err)
	}
	if st := d.status(t); len(st.WatcherList) != 1 || st.WatcherList[0].PID != os.Getpid() || st.WatcherList[0].UID != uint32(os.Getuid()) {
		t.Fatalf("an administrator's status %+v", st)
	}
}

// The client follows the daemon across a restart and reports a change made
// while it was away.
func TestClientReconnect(t *testing.T) {
	d := start(t, "", server.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := genid.Open(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d.stop()
	d2 := start(t, d.dir, server.Config{})
	d2.bump(0, "while away")
	g, err := w.Wait(ctx)
	if err != nil || g != 1 {
		t.Fatalf("change while disconnected: %d %v", g, err)
	}
	if err := w.Ack(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if n := d2.status(t).Outdated; n != 0 {
		t.Fatalf("outdated %d after ack on the new daemon", n)
	}
	if w := d2.status(t).Watchers; w != 1 {
		t.Fatalf("watcher not registered again: %+v", w)
	}
	// And a bump after the restart reaches it as usual.
	d2.bump(0, "after")
	if g, err := w.Wait(ctx); err != nil || g != 2 {
		t.Fatalf("bump after restart: %d %v", g, err)
	}
}

// TestQuietAck: a quiet ack is answered only when refused, and its bytes
// are held in the socket until the next write (input.go), whichever
// goroutine writes.
func TestQuietAck(t *testing.T) {
	d := start(t, "", server.Config{})
	c := d.dial(t)
	send(t, c, wire.OpWatch, 1, nil)
	recv(t, c)
	gen, _ := d.bump(0, "t")
	if f := recv(t, c); f.Op != wire.OpEvent {
		t.Fatalf("want the event, got %+v", f.Header)
	}
	quiet := func(id, gen uint32) {
		send(t, c, wire.OpAck, id, wire.Ack{Gen: gen, Flags: wire.FlagQuiet}.Encode())
	}
	quiet(2, gen)
	send(t, c, wire.OpGet, 3, nil)
	if f := recv(t, c); f.ID != 3 || f.Status != wire.StatusOK {
		t.Fatalf("a quiet ack got a reply: %+v", f.Header)
	}
	if n := d.status(t).Outdated; n != 0 {
		t.Fatalf("outdated %d after the quiet ack", n)
	}
	quiet(4, gen-1)
	if f := recv(t, c); f.ID != 4 || f.Status != wire.StatusStale {
		t.Fatalf("a stale quiet ack must be refused: %+v", f.Header)
	}
	send(t, c, wire.OpAck, 5, wire.U32s(gen, 1<<7))
	if f := recv(t, c); f.ID != 5 || f.Status != wire.StatusBadRequest {
		t.Fatalf("unknown ack flags: %+v", f.Header)
	}

	// More quiet acks than may be held, then a bump from another goroutine
	// than the loop's, then requests: every byte is read exactly once.
	for i := range uint32(40) {
		quiet(10+i, gen)
	}
	send(t, c, wire.OpGet, 50, nil)
	if f := recv(t, c); f.ID != 50 {
		t.Fatalf("after 40 quiet acks: %+v", f.Header)
	}
	gen, _ = d.bump(0, "t")
	quiet(60, gen)
	if f := recv(t, c); f.Op != wire.OpEvent {
		t.Fatalf("want the event, got %+v", f.Header)
	}
	d.WaitAcked("")
	d.bump(0, "t")
	recv(t, c)
	send(t, c, wire.OpGet, 61, nil)
	if f := recv(t, c); f.ID != 61 {
		t.Fatalf("after held acks: %+v", f.Header)
	}
	d.alive(t)
}

// TestQuietAckNoWakeUp: a quiet ack does not wake its sender, blocked in
// read() meanwhile: the daemon holds its bytes until the next event, as
// consuming them would wake a blocked reader (unix_write_space).
func TestQuietAckNoWakeUp(t *testing.T) {
	d := start(t, "", server.Config{})
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: d.SocketPath()}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	unix.Write(fd, wire.Append(nil, wire.Header{Op: wire.OpWatch, ID: 1}, nil))
	if n, err := unix.Read(fd, buf); err != nil || n != wire.HeaderSize+4 {
		t.Fatalf("watch reply: %d %v", n, err)
	}
	gen, _ := d.bump(0, "t")
	if n, err := unix.Read(fd, buf); err != nil || n != wire.HeaderSize+8 {
		t.Fatalf("event: %d %v", n, err)
	}

	tid := make(chan int, 1)
	read := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		n, _ := unix.Read(fd, buf) // blocks until the next event
		read <- n
	}()
	reader := <-tid
	asleep := func() int64 { return asleepSwitches(t, reader) }
	before := asleep()
	// The ack goes out on the reader's socket while it sleeps in read().
	unix.Write(fd, wire.Append(nil, wire.Header{Op: wire.OpAck, ID: 2}, wire.Ack{Gen: gen, Flags: wire.FlagQuiet}.Encode()))
	d.WaitAcked("")
	time.Sleep(50 * time.Millisecond)
	if q, _ := unix.IoctlGetInt(fd, unix.SIOCOUTQ); q == 0 {
		t.Error("the quiet ack was consumed before the next write to its sender")
	}
	if after := asleep(); after != before {
		t.Errorf("the reader was woken %d times by its own quiet ack", after-before)
	}
	d.bump(0, "t")
	if n := <-read; n != wire.HeaderSize+8 {
		t.Fatalf("event after the quiet ack: %d bytes", n)
	}
	waitFor(t, func() bool {
		q, _ := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
		return q == 0 // consumed after the event was written
	})
}

// asleepSwitches waits until thread tid is asleep in read(), and returns
// its voluntary context switches: the times it went to sleep.
func asleepSwitches(t *testing.T, tid int) int64 {
	t.Helper()
	task := fmt.Sprintf("/proc/self/task/%d/", tid)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(task + "status")
		if err != nil {
			t.Fatal(err)
		}
		call, err := os.ReadFile(task + "syscall")
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("\nState:\tS")) && bytes.HasPrefix(call, []byte(strconv.Itoa(unix.SYS_READ)+" ")) {
			return switches(t, b)
		}
		if time.Now().After(deadline) {
			t.Fatal("the reader never blocked in read()")
		}
	}
}

// switches reads voluntary_ctxt_switches from a status file's text b.
func switches(t *testing.T, b []byte) int64 {
	t.Helper()
	_, v, _ := bytes.Cut(b, []byte("\nvoluntary_ctxt_switches:"))
	v, _, _ = bytes.Cut(v, []byte("\n"))
	n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
	if err != nil {
		t.Fatalf("voluntary_ctxt_switches: %v", err)
	}
	return n
}

// TestAdminReplyBeforeConsume: the daemon consumes an admin request only
// after it wrote the reply, so that a client blocked in read() (as the
// CRIU plugin is, for its restore's reply) is woken once. Consuming first
// wakes it for nothing (unix_write_space): on a CPU it shares with the
// daemon, it runs, finds nothing, and sleeps again. Here the reader is
// real-time, on the daemon's CPU: the reply's wake-up runs it before the
// daemon's next system call, and it sees its request not yet consumed.
// The test asks that of one request in ten at least: consumed first,
// none would be; a reader that ran late would see its request consumed.
func TestAdminReplyBeforeConsume(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the reader is a real-time thread")
	}
	// The reader's system calls are raw: between its read and its ioctl
	// the Go runtime never parks its thread (as it may for a free P, or a
	// collection stopping the world), which would let the daemon run. It
	// holds its P while it sleeps in read: Ps to spare, and no collection,
	// which would wait for that P while the daemon waits for the world.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(8))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	d := start(t, "", server.Config{})
	defer onOneCPU(t)()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		unix.Shutdown(fd, unix.SHUT_RDWR) // a reader still in read() returns
		unix.Close(fd)
	}()
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: d.AdminSocketPath()}); err != nil {
		t.Fatal(err)
	}
	type read struct {
		n          int
		unconsumed int // SIOCOUTQ
		err        error
	}
	const requests = 10
	early := 0 // replies that came before their request was consumed
	for i := range uint32(requests) {
		req := wire.Append(nil, wire.Header{Op: wire.OpGet, ID: i}, wire.AppendName(nil, ""))
		tid := make(chan int, 1)
		done := make(chan read, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 1}
			if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
				tid <- 0
				done <- read{err: fmt.Errorf("SCHED_FIFO: %w", err)}
				return
			}
			tid <- unix.Gettid()
			var r read
			buf := make([]byte, 256)
			n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
			if errno == 0 {
				var q int32
				_, _, errno = unix.RawSyscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCOUTQ, uintptr(unsafe.Pointer(&q)))
				r.n, r.unconsumed = int(n), int(q)
			}
			if errno != 0 {
				r.err = errno
			}
			done <- r
		}()
		if reader := <-tid; reader != 0 {
			asleepSwitches(t, reader)
		}
		if _, err := unix.Write(fd, req); err != nil {
			t.Fatal(err)
		}
		r := <-done
		if r.err != nil || r.n != wire.HeaderSize+4 {
			t.Fatalf("request %d: a reply of %d bytes, %v", i, r.n, r.err)
		}
		if r.unconsumed > 0 { // the send queue's memory, not its bytes
			early++
		}
		waitFor(t, func() bool {
			q, _ := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
			return q == 0 // consumed after the reply
		})
	}
	if early == 0 {
		t.Fatalf("each of %d requests was consumed before its reply came", requests)
	}
	t.Logf("%d of %d replies came before their request was consumed", early, requests)
}

// onOneCPU puts every thread of the process on the first CPU it may run
// on (threads started later inherit it), and returns what puts them back.
func onOneCPU(t *testing.T) (undo func()) {
	t.Helper()
	var all, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	for cpu := range 1024 {
		if all.IsSet(cpu) {
			one.Set(cpu)
			break
		}
	}
	// Until every thread has it: a thread that starts a new one while
	// the others are set passes on the mask it had.
	set := func(mask *unix.CPUSet) {
		for changed := true; changed; {
			changed = false
			tasks, err := os.ReadDir("/proc/self/task")
			if err != nil {
				t.Fatal(err)
			}
			for _, task := range tasks {
				tid, err := strconv.Atoi(task.Name())
				var has unix.CPUSet
				if err != nil || unix.SchedGetaffinity(tid, &has) != nil || has == *mask {
					continue // a thread gone meanwhile is no matter
				}
				if unix.SchedSetaffinity(tid, mask) == nil {
					changed = true
				}
			}
		}
	}
	set(&one)
	return func() { set(&all) }
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	servertest.WaitFor(t, "the condition", ok)
}

// TestPipelined: more requests in one write than the daemon reads at once
// (it is edge-triggered: it must read on until the socket is empty), quiet
// acks among them.
func TestPipelined(t *testing.T) {
	d := start(t, "", server.Config{})
	c := d.dial(t)
	send(t, c, wire.OpWatch, 1, nil)
	recv(t, c)
	const n = 10000
	var req []byte
	for i := range uint32(n) {
		req = wire.Append(req, wire.Header{Op: wire.OpGet, ID: 2 + 2*i}, nil)
		req = wire.Append(req, wire.Header{Op: wire.OpAck, ID: 3 + 2*i}, wire.Ack{Flags: wire.FlagQuiet}.Encode())
	}
	errc := make(chan error, 1)
	go func() { _, err := c.Write(req); errc <- err }()
	for i := range uint32(n) {
		if f := recv(t, c); f.ID != 2+2*i || f.Status != wire.StatusOK {
			t.Fatalf("reply %d: %+v", i, f.Header)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	send(t, c, wire.OpOutdated, 99, nil)
	if f := recv(t, c); f.ID != 99 {
		t.Fatalf("after the flood: %+v", f.Header)
	}
}

// Two bumps from two goroutines (the vmgenid and vmclock backends on one VM
// restore) while a watcher has a wait-watchers pending: the first bump's
// fan-out re-checks the wait, which needs the scope's lock, which the second
// bump must not hold while it waits for that fan-out.
func TestConcurrentBumpsPendingWait(t *testing.T) {
	d := start(t, "", server.Config{})
	for range 200 { // never ack: they keep the wait pending, and make a long fan-out
		c := d.dial(t)
		send(t, c, wire.OpWatch, 1, nil)
		recv(t, c)
	}
	w := d.dial(t)
	send(t, w, wire.OpWatch, 1, nil)
	recv(t, w)
	d.bump(0, "t")
	for round := range 30 {
		send(t, w, wire.OpAck, 2, wire.U32(d.status(t).Generation))
		for f := recv(t, w); f.Op != wire.OpAck; f = recv(t, w) {
		}
		send(t, w, wire.OpWaitWatchers, 3, wire.U32(0))
		send(t, w, wire.OpOutdated, 4, nil) // answered after the wait started
		for f := recv(t, w); f.Op != wire.OpOutdated; f = recv(t, w) {
		}
		done := make(chan struct{})
		go func() {
			var wg sync.WaitGroup
			for range 2 {
				wg.Go(func() { d.bump(0, "backend") })
			}
			wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			d.Abandon() // wedged: stopping it would hang
			t.Fatalf("round %d: two concurrent bumps with a wait pending never returned", round)
		}
		f := recv(t, w)
		for ; f.Op != wire.OpWaitWatchers; f = recv(t, w) {
		}
		if f.Status != wire.StatusInterrupted {
			t.Fatalf("round %d: the wait of a watcher made outdated: %v", round, f.Status)
		}
	}
}

// A watcher attached with an acked generation ahead of the current one is
// counted while outdated, and no longer once the generation reaches it: its
// ack and its close leave no phantom outdated watcher behind.
func TestAttachAckedAhead(t *testing.T) {
	d := start(t, "", server.Config{})
	c := d.dial(t)
	cur := d.status(t).Generation
	send(t, c, wire.OpAttach, 1, wire.U32s(wire.FlagWatcher, cur+1))
	if f := recv(t, c); f.Op != wire.OpAttach || f.Status != wire.StatusOK {
		t.Fatalf("attach: %+v", f.Header)
	}
	if f := recv(t, c); f.Op != wire.OpEvent {
		t.Fatalf("want the event of a watcher outdated from the start: %+v", f.Header)
	}
	if n := d.status(t).Outdated; n != 1 {
		t.Fatalf("outdated %d after attach", n)
	}
	d.bump(0, "t") // to cur+1, what it acked
	if n := d.status(t).Outdated; n != 0 {
		t.Fatalf("outdated %d once the generation reached the acked one", n)
	}
	send(t, c, wire.OpAck, 2, wire.U32(cur+1))
	for f := recv(t, c); f.Op != wire.OpAck; f = recv(t, c) {
	}
	c.Close()
	d.WaitRegistered("", 0)
	q := d.dial(t)
	send(t, q, wire.OpWaitWatchers, 3, wire.U32(1000))
	if f := recv(t, q); f.Status != wire.StatusOK {
		t.Fatalf("wait-watchers with no watcher: %v %q (outdated %d)", f.Status, f.Payload, d.status(t).Outdated)
	}
}

// PROTOCOL.md: wait-watchers is interrupted when the asking connection is or
// becomes an outdated watcher, also if it became a watcher after the wait
// started.
func TestWaitThenWatch(t *testing.T) {
	d := start(t, "", server.Config{})
	x := d.dial(t) // outdated, never acks: keeps the waits pending
	send(t, x, wire.OpWatch, 1, nil)
	recv(t, x)
	d.bump(0, "t")
	waitReply := func(c net.Conn) wire.Frame {
		t.Helper()
		f := recv(t, c)
		for ; f.Op != wire.OpWaitWatchers; f = recv(t, c) {
		}
		return f
	}

	t.Run("watch, then a bump", func(t *testing.T) {
		c := d.dial(t)
		send(t, c, wire.OpWaitWatchers, 1, wire.U32(2000))
		send(t, c, wire.OpWatch, 2, nil)
		if f := recv(t, c); f.Op != wire.OpWatch {
			t.Fatalf("want the watch reply first: %+v", f.Header)
		}
		d.bump(0, "t")
		if f := waitReply(c); f.Status != wire.StatusInterrupted {
			t.Fatalf("the wait of an outdated watcher: %v %q, want interrupted", f.Status, f.Payload)
		}
	})
	t.Run("attach outdated", func(t *testing.T) {
		c := d.dial(t)
		send(t, c, wire.OpWaitWatchers, 1, wire.U32(2000))
		send(t, c, wire.OpAttach, 2, wire.U32s(wire.FlagWatcher, 0))
		if f := waitReply(c); f.Status != wire.StatusInterrupted {
			t.Fatalf("the wait of a watcher outdated from the start: %v %q, want interrupted", f.Status, f.Payload)
		}
	})
}

// adminChildEnv makes TestAdminJudgedPerSender, in the test binary run
// again as a child, use the admin socket as an unprivileged sender.
const adminChildEnv = "GENID_TEST_ADMIN_SOCK"

// adminUnprivileged connects to the admin socket as root (the socket is
// root's), then gives up root (becomes nobody) and, holding the socket
// root opened, asks for a query-peer, a bump, the history and the
// metrics (who bumped: pids and uids). It prints each status.
func adminUnprivileged(sock string) int {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	if os.Geteuid() == 0 {
		for _, err := range []error{syscall.Setgroups(nil), syscall.Setgid(65534), syscall.Setuid(65534)} {
			if err != nil {
				fmt.Fprintln(os.Stderr, "dropping privileges:", err)
				return 1
			}
		}
	}
	for i, req := range []struct {
		op wire.Op
		p  []byte
	}{
		{wire.OpQueryPeer, named("", binary.LittleEndian.AppendUint64(nil, 1))},
		{wire.OpBump, named("", wire.Bump{Min: 4000000000}.Encode())},
		{wire.OpHistory, named("", wire.History{Flags: wire.FlagEveryScope}.Encode())},
		{wire.OpMetrics, named("", nil)},
	} {
		if _, err := c.Write(wire.Append(nil, wire.Header{Op: req.op, ID: uint32(i + 1)}, req.p)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		f, err := wire.ReadFrame(c, wire.MaxReplyPayload)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(int(f.Status))
	}
	return 0
}

// The admin socket judges each request on its sender, as the kernel
// attests it for each message: a process holding a socket that root
// opened is no administrator.
func TestAdminJudgedPerSender(t *testing.T) {
	if sock := os.Getenv(adminChildEnv); sock != "" {
		os.Exit(adminUnprivileged(sock))
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the child connects as root, then gives it up")
	}
	d := start(t, "", server.Config{})
	cmd := exec.Command(os.Args[0], "-test.run=^TestAdminJudgedPerSender$")
	cmd.Env = append(os.Environ(), adminChildEnv+"="+d.AdminSocketPath())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("unprivileged sender: %v", err)
	}
	want := strings.Repeat(fmt.Sprintf("%d\n", wire.StatusPermission), 4)
	if string(out) != want {
		t.Fatalf("query-peer, bump, history and metrics from nobody on root's socket: statuses %q, want permission (%d) for each", out, wire.StatusPermission)
	}
	if g := d.status(t).Generation; g != 0 {
		t.Fatalf("the refused bump moved the generation to %d", g)
	}
	d.alive(t)
}

// Client.Close leaves the watchers it made usable: they share its page
// mapping, which the last of them to close unmaps.
func TestWatcherOutlivesClient(t *testing.T) {
	d := start(t, "", server.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := genid.Open(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close()
	if _, err := w.TryWait(); !errors.Is(err, genid.ErrWouldBlock) {
		t.Fatalf("TryWait after Client.Close: %v", err)
	}
	if _, err := c.Watch(ctx); !errors.Is(err, genid.ErrClosed) {
		t.Fatalf("Watch on a closed client: %v", err)
	}
	d.bump(3, "t")
	if g, err := w.Wait(ctx); g != 3 || err != nil {
		t.Fatalf("Wait after Client.Close: %d %v", g, err)
	}
	if err := w.Ack(ctx, 3); err != nil {
		t.Fatal(err)
	}
	w.Close()
	w.Close()
	if _, err := w.TryWait(); !errors.Is(err, genid.ErrClosed) {
		t.Fatalf("TryWait on a closed watcher: %v", err)
	}
	if _, err := w.Wait(ctx); !errors.Is(err, genid.ErrClosed) {
		t.Fatalf("Wait on a closed watcher: %v", err)
	}
}

// Many calls at once on one Go client: the daemon stops reading a client
// whose replies pile up, and the client must go on reading them while its
// writes wait, or neither side moves again.
func TestClientManyCallsAtOnce(t *testing.T) {
	d := start(t, "", server.Config{})
	c, err := genid.Open(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	// Not deferred: if the client is stuck, so is its Close.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for range 3000 {
			wg.Go(func() {
				for range 20 {
					if _, err := c.Status(ctx); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}()
	select {
	case <-done:
		c.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("60 000 status calls on one client did not finish in 30 s: client and daemon wait on each other")
	}
}

// PROTOCOL.md, "restored": a wait-watchers sent again with the id of the
// one pending on the connection is a copy, answered once (a client that
// resends after a restore must not get a refusal for its own copy); one
// with another id is refused with limit.
func TestWaitWatchersCopy(t *testing.T) {
	d := start(t, "", server.Config{})
	x := d.dial(t) // outdated until it acks: holds the wait
	send(t, x, wire.OpWatch, 1, nil)
	recv(t, x)
	gen, _ := d.bump(0, "t")
	c := d.dial(t)
	send(t, c, wire.OpWaitWatchers, 7, wire.U32(10000))
	send(t, c, wire.OpWaitWatchers, 7, wire.U32(10000))
	send(t, c, wire.OpWaitWatchers, 8, wire.U32(10000))
	if f := recv(t, c); f.ID != 8 || f.Status != wire.StatusLimit {
		t.Fatalf("a second wait with another id: %+v, want limit", f.Header)
	}
	send(t, x, wire.OpAck, 2, wire.U32(gen))
	if f := recv(t, c); f.ID != 7 || f.Status != wire.StatusOK {
		t.Fatalf("the wait once x acked: %+v", f.Header)
	}
	send(t, c, wire.OpGet, 9, nil)
	if f := recv(t, c); f.ID != 9 {
		t.Fatalf("after the wait's one reply, want get's: %+v (a second reply to the copy?)", f.Header)
	}
}
