package server_test

import (
	"bufio"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	ringhistory "github.com/genid-project/genid/internal/history"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/wire"
)

// flood pipelines n requests op with ids 1..n on c from a goroutine, never
// reading. It returns the count of requests written so far and the
// writer's result, sent once every request is written.
func flood(c *net.UnixConn, op wire.Op, n uint32) (*atomic.Uint32, <-chan error) {
	const batch = 4096
	var sent atomic.Uint32
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, batch*wire.HeaderSize)
		for id := uint32(1); id <= n; {
			b := buf[:0]
			for ; id <= n && len(b) < len(buf); id++ {
				b = wire.Append(b, wire.Header{Op: op, ID: id}, nil)
			}
			if _, err := c.Write(b); err != nil {
				done <- err
				return
			}
			sent.Store(id - 1)
		}
		done <- nil
	}()
	return &sent, done
}

// stalled waits until the flood's writer is blocked, with requests left in
// its socket: the daemon has stopped taking them. It fails if the writer
// gets through instead.
func stalled(t *testing.T, c *net.UnixConn, sent *atomic.Uint32, done <-chan error, n uint32) uint32 {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	unread := func() (q int) {
		raw.Control(func(fd uintptr) { q, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
		return q
	}
	last, since := uint32(0), time.Now()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		select {
		case err := <-done:
			t.Fatalf("all %d requests taken from a client that does not read (err %v): no back-pressure", n, err)
		case <-time.After(20 * time.Millisecond):
		}
		if s := sent.Load(); s != last {
			last, since = s, time.Now()
		} else if time.Since(since) > 300*time.Millisecond && unread() > 0 {
			return s
		}
	}
	t.Fatal("the flood neither stalled nor finished")
	return 0
}

func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestBacklogBounded: a client that pipelines megabytes of requests and
// never reads is paused (its requests stay in its socket), so the daemon's
// memory does not grow with what it sends, and other clients are answered
// meanwhile. When it reads at last, it gets every reply, in order, and the
// latest event.
func TestBacklogBounded(t *testing.T) {
	// The log is discarded: the test's own copy of it (a line a bump)
	// would count as the daemon's growth, by as much as the bound.
	d := start(t, "", server.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	// The history of bumps is bounded, not empty: fill it first, so that
	// what grows below is what the client costs.
	for range ringhistory.DefaultSize {
		d.bump(0, "fill")
	}
	c := d.dial(t)
	send(t, c, wire.OpWatch, 0, nil)
	recv(t, c)

	const n = 1 << 19 // 8 MiB of requests, 10 MiB of replies
	before := heapAlloc()
	sent, done := flood(c, wire.OpGet, n)
	got := stalled(t, c, sent, done, n)
	var last uint32
	for range 1000 { // coalesced: the events of a client that does not read cost nothing either
		last, _ = d.bump(0, "t")
	}
	// The history's file takes the bumps a tenth of a second later at most:
	// until then they are held for it. What stays after is the client's.
	grown := int64(heapAlloc()) - int64(before)
	for deadline := time.Now().Add(2 * time.Second); grown > 256<<10 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		grown = int64(heapAlloc()) - int64(before)
	}
	if grown > 256<<10 {
		t.Errorf("heap grew by %d bytes for a client that does not read (%d requests written)", grown, got)
	}

	other := d.dial(t)
	t0 := time.Now()
	for id := uint32(1); id <= 100; id++ {
		send(t, other, wire.OpGet, id, nil)
		if f := recv(t, other); f.ID != id || f.Status != wire.StatusOK {
			t.Fatalf("other client: %+v", f.Header)
		}
	}
	if el := time.Since(t0); el > 2*time.Second {
		t.Errorf("100 requests of another client took %v", el)
	}

	// Now read everything: no reply lost, none out of order.
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReaderSize(c, 64<<10)
	var buf [wire.HeaderSize + 8]byte
	next, gen := uint32(1), uint32(0)
	for next <= n || gen != last {
		if _, err := io.ReadFull(r, buf[:wire.HeaderSize]); err != nil {
			t.Fatalf("waiting for reply %d (event %d, want %d): %v", next, gen, last, err)
		}
		h, err := wire.ParseHeader(buf[:], 8)
		if err != nil {
			t.Fatalf("after reply %d: %v", next-1, err)
		}
		if _, err := io.ReadFull(r, buf[wire.HeaderSize:wire.HeaderSize+h.Len]); err != nil {
			t.Fatal(err)
		}
		if h.Op == wire.OpEvent {
			gen = binary.LittleEndian.Uint32(buf[wire.HeaderSize:])
			continue
		}
		if h.Op != wire.OpGet || h.ID != next || h.Status != wire.StatusOK || h.Len != 4 {
			t.Fatalf("want the reply to get %d, got %+v", next, h)
		}
		next++
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	send(t, c, wire.OpOutdated, n+1, nil)
	if f := recv(t, c); f.ID != n+1 || f.Status != wire.StatusOK {
		t.Fatalf("after the flood: %+v", f.Header)
	}
}

// TestBacklogBigReplies: the daemon stops answering a client that does not
// read between two requests, not between two reads, as a read takes many
// requests (64 KiB) and a reply (status) can be much larger than its
// request.
func TestBacklogBigReplies(t *testing.T) {
	d := start(t, "", server.Config{})
	for range 20 { // each status lists them: about 1 KiB
		w := d.dial(t)
		send(t, w, wire.OpWatch, 1, nil)
		recv(t, w)
	}
	c := d.dial(t)
	const n = 1 << 16
	before := heapAlloc()
	sent, done := flood(c, wire.OpStatus, n)
	got := stalled(t, c, sent, done, n)
	if grown := int64(heapAlloc()) - int64(before); grown > 256<<10 {
		t.Errorf("heap grew by %d bytes for a client that does not read (%d status requests written)", grown, got)
	}
}

// TestBacklogHangUp: a paused client that hangs up, or shuts its reading
// side, is closed and stops counting as a watcher, although the daemon no
// longer reads it nor writes to it.
func TestBacklogHangUp(t *testing.T) {
	d := start(t, "", server.Config{})
	for _, how := range []string{"close", "shut read"} {
		t.Run(how, func(t *testing.T) {
			c := d.dial(t)
			send(t, c, wire.OpWatch, 0, nil)
			recv(t, c)
			const n = 1 << 19
			sent, done := flood(c, wire.OpGet, n)
			stalled(t, c, sent, done, n)
			if how == "close" {
				c.Close()
				<-done
			} else {
				c.CloseRead()
			}
			d.WaitRegistered("", 0)
		})
	}
	d.alive(t)
}
