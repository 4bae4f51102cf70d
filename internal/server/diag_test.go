package server_test

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/wire"
)

// The CRIU plugin asks, at dump, which of the daemon's clients a dumped
// socket is (diag.go). These tests ask as it does, for clients the daemon
// cannot know by their inode alone: one that came after the daemon's last
// look at its clients, and ones in a network namespace of their own (a
// container's), whose sockets only that namespace's sock_diag lists.

// inode is the inode of c's socket: what CRIU reports for a dumped socket.
func inode(t *testing.T, c *net.UnixConn) uint64 {
	t.Helper()
	var st unix.Stat_t
	raw, err := c.SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
	}
	if err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// queryPeer asks the admin socket q about the client whose socket is ino.
func queryPeer(t *testing.T, q *net.UnixConn, id uint32, ino uint64) wire.Frame {
	t.Helper()
	send(t, q, wire.OpQueryPeer, id, named("", binary.LittleEndian.AppendUint64(nil, ino)))
	return recv(t, q)
}

// dialInNetNS connects to path from a new network namespace, as a
// container's process does through a bind mount of the daemon's socket.
func dialInNetNS(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	return dialFrom(t, path, func() error {
		return os.NewSyscallError("unshare(CLONE_NEWNET)", unix.Unshare(unix.CLONE_NEWNET))
	})
}

// dialUnixIn connects to path from the network namespace of c's socket.
func dialUnixIn(t *testing.T, c *net.UnixConn, path string) *net.UnixConn {
	t.Helper()
	var nsfd int
	raw, err := c.SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { nsfd, err = unix.IoctlRetInt(int(fd), unix.SIOCGSKNS) })
	}
	if err != nil {
		t.Fatal(os.NewSyscallError("SIOCGSKNS", err))
	}
	defer unix.Close(nsfd)
	return dialFrom(t, path, func() error {
		return os.NewSyscallError("setns", unix.Setns(nsfd, unix.CLONE_NEWNET))
	})
}

// dialFrom connects to path from a thread that enter moved to another
// network namespace; the thread ends with the call.
func dialFrom(t *testing.T, path string, enter func() error) *net.UnixConn {
	t.Helper()
	type result struct {
		c   *net.UnixConn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := enter(); err != nil {
			done <- result{nil, err}
			return
		}
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		done <- result{c, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	return r.c
}

// netnsFDs counts this process's fds that hold a network namespace.
func netnsFDs(t *testing.T) int {
	t.Helper()
	names, err := filepath.Glob("/proc/self/fd/*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, name := range names {
		if target, err := os.Readlink(name); err == nil && strings.HasPrefix(target, "net:[") {
			n++
		}
	}
	return n
}

func TestQueryPeer(t *testing.T) {
	log := &proctest.Buffer{}
	d := start(t, "", server.Config{Logger: slog.New(slog.NewTextHandler(log, nil))})
	t.Cleanup(func() {
		d.stop()
		if text := log.String(); strings.Contains(text, "level=WARN") || strings.Contains(text, "level=ERROR") {
			t.Errorf("the daemon logged a warning or an error:\n%s", text)
		}
	})
	q := d.dialAdmin(t)
	watcher := func(c *net.UnixConn) []byte {
		send(t, c, wire.OpWatch, 1, nil)
		recv(t, c)
		return append(wire.U32s(wire.FlagWatcher, 0), 0) // flags, acked, the host scope's name
	}

	first := d.dial(t)
	if f := queryPeer(t, q, 1, inode(t, first)); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, append(wire.U32s(0, 0), 0)) {
		t.Fatalf("query-peer of a client: %+v %x", f.Header, f.Payload)
	}

	// A client that connected after the daemon's last look is found: the
	// query is newer than what the daemon knows, so it looks again.
	later := d.dial(t)
	want := watcher(later)
	if f := queryPeer(t, q, 2, inode(t, later)); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, want) {
		t.Fatalf("query-peer of a client that came after the last query: %+v %x, want %x", f.Header, f.Payload, want)
	}

	// Two clients in a container's network namespace, one in another's:
	// each is found, and the daemon holds no namespace once it answered.
	before := netnsFDs(t)
	inNS := []*net.UnixConn{dialInNetNS(t, d.SocketPath())}
	inNS = append(inNS, dialUnixIn(t, inNS[0], d.SocketPath()), dialInNetNS(t, d.SocketPath()))
	for i, c := range inNS {
		want := watcher(c)
		if f := queryPeer(t, q, uint32(3+i), inode(t, c)); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, want) {
			t.Fatalf("query-peer of client %d in a network namespace of its own: %+v %x, want %x", i, f.Header, f.Payload, want)
		}
	}
	if n := netnsFDs(t); n != before {
		t.Errorf("after the queries the process holds %d fds of network namespaces, %d before", n, before)
	}
	if f := queryPeer(t, q, 9, 1); f.Status != wire.StatusNotFound {
		t.Fatalf("query-peer of an unknown inode: %+v %q", f.Header, f.Payload)
	}
}
