package server_test

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/servertest"
	"github.com/genid-project/genid/internal/wire"
)

// dialAs connects to path n times from a thread whose effective uid is
// uid: the daemon reads that uid as the connections' (SO_PEERCRED).
func dialAs(t *testing.T, uid int, path string, n int) []*net.UnixConn {
	t.Helper()
	type result struct {
		conns []*net.UnixConn
		err   error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		var r result
		// The thread's own credentials, not the process's (syscall.Setresuid).
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			r.err = e
		}
		for i := 0; i < n && r.err == nil; i++ {
			var c *net.UnixConn
			if c, r.err = net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"}); r.err == nil {
				r.conns = append(r.conns, c)
			}
		}
		done <- r
	}()
	r := <-done
	for _, c := range r.conns {
		t.Cleanup(func() { c.Close() })
	}
	if r.err != nil {
		t.Fatalf("connect as uid %d: %v", uid, r.err)
	}
	return r.conns
}

// othersRunDir is a run dir whose sockets other users than root can reach
// (their own modes still decide): the test must run as root, to be them.
func othersRunDir(t *testing.T) string {
	t.Helper()
	if syscall.Geteuid() != 0 {
		t.Fatal("needs root: the test connects as other users")
	}
	dir := filepath.Join(t.TempDir(), "run")
	for _, p := range []string{filepath.Dir(filepath.Dir(dir)), filepath.Dir(dir)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A user other than root has so many connections and watchers, and no
// more; root has no such limit; a connection closed is one more allowed.
func TestLimitsPerUser(t *testing.T) {
	dir := othersRunDir(t)
	d := start(t, dir, server.Config{MaxConnsPerUser: 3, MaxWatchersPerUser: 2})
	nobody := dialAs(t, 65534, d.SocketPath(), 4)
	for i, c := range nobody[:3] {
		send(t, c, wire.OpGet, uint32(i), nil)
		if f := recv(t, c); f.Status != wire.StatusOK {
			t.Fatalf("connection %d of nobody's 3: %+v", i, f.Header)
		}
	}
	expectRefused(t, nobody[3], wire.StatusLimit, "uid 65534 has 3 connections")
	for range 4 {
		d.alive(t) // root's: as many as it likes
	}
	for i, c := range nobody[:3] {
		send(t, c, wire.OpWatch, 10, nil)
		want := wire.StatusOK
		if i == 2 {
			want = wire.StatusLimit
		}
		if f := recv(t, c); f.Status != want {
			t.Fatalf("watcher %d of nobody's 2: %+v %q, want %v", i, f.Header, f.Payload, want)
		}
	}
	nobody[0].Close()
	d.WaitRegistered("", 1)
	again := dialAs(t, 65534, d.SocketPath(), 1)[0]
	send(t, again, wire.OpWatch, 11, nil)
	if f := recv(t, again); f.Status != wire.StatusOK {
		t.Fatalf("nobody's watcher once one of its connections closed: %+v %q", f.Header, f.Payload)
	}
	// Nothing is kept of a user with no connection left: root is.
	for _, c := range append(nobody[1:3], again) {
		c.Close()
	}
	counted(t, d, "nobody forgotten", func(c server.Counts) bool { return c.Users == 1 })
}

// counted waits until what the daemon counts is what ok wants.
func counted(t *testing.T, d *daemon, what string, ok func(server.Counts) bool) {
	t.Helper()
	servertest.WaitFor(t, what, func() bool {
		c, err := d.Counts()
		return err == nil && ok(c)
	})
}

// What a connection or a watcher counted is uncounted when it goes: on
// the admin socket and on a container scope's, a limit of one lets one
// after the other in.
func TestLimitsReleased(t *testing.T) {
	d := start(t, "", server.Config{MaxAdminConns: 1, MaxConnsPerScope: 1, MaxWatchersPerScope: 1})
	a := d.admin(t)
	if _, err := a.CreateScope(ctx(t), "c", genid.ScopeOptions{}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	counted(t, d, "the admin connection uncounted", func(c server.Counts) bool { return c.AdminConns == 0 })
	for i := range 3 {
		q := d.dialAdmin(t)
		send(t, q, wire.OpGet, uint32(i), named("c", nil))
		if f := recv(t, q); f.Status != wire.StatusOK {
			t.Fatalf("admin connection %d: %+v %q", i, f.Header, f.Payload)
		}
		q.Close()
		counted(t, d, "the admin connection uncounted", func(c server.Counts) bool { return c.AdminConns == 0 })

		c := d.dialScope(t, "c")
		send(t, c, wire.OpWatch, uint32(i), nil)
		if f := recv(t, c); f.Status != wire.StatusOK {
			t.Fatalf("watcher %d of scope c: %+v %q", i, f.Header, f.Payload)
		}
		c.Close()
		counted(t, d, "the watcher uncounted", func(c server.Counts) bool { return c.Conns == 0 && c.Watchers == 0 })
	}
}

// Left at zero, the reserves are an eighth of the limits (as small as
// these): a user other than root gets the rest, root the reserve too. And
// a frame sent in parts has the default time to complete, not none.
func TestConfigDefaults(t *testing.T) {
	dir := othersRunDir(t)
	d := start(t, dir, server.Config{MaxConns: 16, MaxWatchers: 8})
	nobody := dialAs(t, 65534, d.SocketPath(), 16)
	for i, c := range nobody {
		if i >= 14 {
			expectRefused(t, c, wire.StatusLimit, "14 connections (the rest is reserved)")
			continue
		}
		send(t, c, wire.OpWatch, uint32(i), nil)
		want := wire.StatusOK
		if i >= 7 {
			want = wire.StatusLimit
		}
		if f := recv(t, c); f.Status != want {
			t.Fatalf("nobody's connection %d, watching: %+v %q, want %v", i, f.Header, f.Payload, want)
		}
	}
	for i, want := range []wire.Status{wire.StatusOK, wire.StatusLimit} { // the reserve, then none
		c := d.dial(t)
		send(t, c, wire.OpWatch, 1, nil)
		if f := recv(t, c); f.Status != want {
			t.Fatalf("root's connection %d, watching: %+v %q, want %v", i, f.Header, f.Payload, want)
		}
	}

	c := d.dialAdmin(t)
	req := wire.Append(nil, wire.Header{Op: wire.OpGet, ID: 7}, named("", nil))
	if _, err := c.Write(req[:3]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := c.Write(req[3:]); err != nil {
		t.Fatal(err)
	}
	if f := recv(t, c); f.Status != wire.StatusOK || f.ID != 7 {
		t.Fatalf("a frame in two parts 200 ms apart: %+v", f.Header)
	}
}

// A daemon that cannot start closes only what it opened (and what it was
// passed): here its run dir is a file, it is passed a socket it has no use
// for, or its admin socket cannot be bound; the test's stdout stays open.
func TestNewFailsCleanly(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var before, after syscall.Stat_t
	if err := syscall.Fstat(1, &before); err != nil {
		t.Fatal(err)
	}
	sock, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	blocked := t.TempDir() // its admin socket's place taken by a directory, after the host's page
	if err := os.MkdirAll(filepath.Join(blocked, "admin.sock", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for what, cfg := range map[string]server.Config{
		"a file as its run dir":                   {RunDir: file},
		"a socket for a file it does not serve":   {RunDir: filepath.Join(t.TempDir(), "run"), Listeners: map[string]int{"other.sock": sock}},
		"a directory where its admin socket goes": {RunDir: blocked},
	} {
		if _, err := server.New(cfg); err == nil {
			t.Fatalf("a daemon started with %s", what)
		}
		if err := syscall.Fstat(1, &after); err != nil || after.Dev != before.Dev || after.Ino != before.Ino {
			t.Fatalf("fd 1 after a start with %s: %v", what, err)
		}
	}
}
