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
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/scope"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/servertest"
	"github.com/genid-project/genid/internal/slots"
	"github.com/genid-project/genid/internal/wire"
)

func (d *daemon) admin(t *testing.T) *genid.Admin {
	t.Helper()
	a, err := genid.OpenAdmin(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// dialScope connects to a scope's own socket, as a member of it does
// through its mount.
func (d *daemon) dialScope(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(d.dir, "scopes", name, "genid.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// A scope is a counter of its own: its page, its socket, its watchers, its
// barrier. Bumping it moves nothing else; a VM restore (bump all) moves
// every scope.
func TestScopeIsolation(t *testing.T) {
	d := start(t, "", server.Config{})
	a := d.admin(t)
	for _, n := range []string{"c1", "c2"} {
		if g, err := a.CreateScope(ctx(t), n, genid.ScopeOptions{}); err != nil || g != 0 {
			t.Fatalf("create %s: %d %v", n, g, err)
		}
	}
	if _, err := a.CreateScope(ctx(t), "c1", genid.ScopeOptions{}); !errors.Is(err, genid.ErrExists) {
		t.Fatalf("create c1 twice: %v", err)
	}
	if g, err := a.CreateScope(ctx(t), "c1", genid.ScopeOptions{ExistOK: true}); err != nil || g != 0 {
		t.Fatalf("create c1 again, exist-ok: %d %v", g, err)
	}
	if g, err := a.CreateScope(ctx(t), "c3", genid.ScopeOptions{Start: 40}); err != nil || g != 40 {
		t.Fatalf("create c3 at 40: %d %v", g, err)
	}
	st, err := os.Stat(filepath.Join(d.dir, "scopes"))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("scopes dir %v %v: want 0700, reachable by root only", st.Mode(), err)
	}

	// A watcher on each scope and on the host.
	watch := func(c net.Conn) {
		send(t, c, wire.OpWatch, 1, nil)
		if f := recv(t, c); f.Status != wire.StatusOK {
			t.Fatalf("watch: %+v", f.Header)
		}
	}
	w1, w2, wh := d.dialScope(t, "c1"), d.dialScope(t, "c2"), d.dial(t)
	for _, c := range []net.Conn{w1, w2, wh} {
		watch(c)
	}
	if g, err := a.Bump(ctx(t), "c1", 7, "restore of c1"); err != nil || g != 7 {
		t.Fatalf("bump c1: %d %v", g, err)
	}
	if f := recv(t, w1); f.Op != wire.OpEvent || binary.LittleEndian.Uint32(f.Payload) != 7 {
		t.Fatalf("c1's watcher: %+v %x", f.Header, f.Payload)
	}
	for name, c := range map[string]net.Conn{"c2": w2, "host": wh} {
		send(t, c, wire.OpGet, 2, nil)
		if f := recv(t, c); f.Op != wire.OpGet || binary.LittleEndian.Uint32(f.Payload) != 0 {
			t.Fatalf("%s after c1's bump: %+v %x (an event, or not 0)", name, f.Header, f.Payload)
		}
	}
	page := func(name string) uint32 {
		b, err := os.ReadFile(filepath.Join(d.dir, "scopes", name, "generation"))
		if err != nil {
			t.Fatal(err)
		}
		return binary.NativeEndian.Uint32(b)
	}
	if page("c1") != 7 || page("c2") != 0 || d.status(t).Generation != 0 {
		t.Fatalf("pages c1 %d c2 %d host %d", page("c1"), page("c2"), d.status(t).Generation)
	}
	// c1's barrier is c1's: c2's and the host's watchers are not in it.
	if err := a.WaitWatchers(ctx(t), "c1", time.Second); !errors.Is(err, genid.ErrTimeout) {
		t.Fatalf("c1's barrier with its watcher outdated: %v", err)
	}
	send(t, w1, wire.OpAck, 3, wire.U32(7))
	recv(t, w1)
	if err := a.WaitWatchers(ctx(t), "c1", 5*time.Second); err != nil {
		t.Fatalf("c1's barrier, its watcher acked: %v", err)
	}
	// A member sees its own scope, without the processes behind it.
	send(t, w2, wire.OpStatus, 4, nil)
	f := recv(t, w2)
	if f.Status != wire.StatusOK || !bytes.Contains(f.Payload, []byte(`"scope":"c2"`)) || bytes.Contains(f.Payload, []byte("pid")) || bytes.Contains(f.Payload, []byte("backends")) {
		t.Fatalf("c2's member status: %s", f.Payload)
	}

	// A VM restore bumps every scope.
	if _, err := a.BumpAll(ctx(t), "vmgenid"); err != nil {
		t.Fatal(err)
	}
	if page("c1") != 8 || page("c2") != 1 || page("c3") != 41 || d.status(t).Generation != 1 {
		t.Fatalf("after bump all: c1 %d c2 %d c3 %d host %d", page("c1"), page("c2"), page("c3"), d.status(t).Generation)
	}
	list, err := a.Scopes(ctx(t))
	if err != nil || len(list) != 4 || list[0].Scope != "" || list[1].Scope != "c1" || list[1].Dir != filepath.Join(d.dir, "scopes", "c1") {
		t.Fatalf("scopes %+v %v", list, err)
	}

	// Removing a scope disconnects its members and removes its files.
	if err := a.RemoveScope(ctx(t), "c2"); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, w2)
	if _, err := os.Stat(filepath.Join(d.dir, "scopes", "c2")); !os.IsNotExist(err) {
		t.Fatalf("c2's directory after removal: %v", err)
	}
	if err := a.RemoveScope(ctx(t), "c2"); !errors.Is(err, genid.ErrNotFound) {
		t.Fatalf("removing c2 again: %v", err)
	}
	if err := a.RemoveScope(ctx(t), ""); err == nil {
		t.Fatal("the host scope was removed")
	}
}

// Scopes outlive a daemon restart, with their generations; one whose
// process ended meanwhile does not, and one goes when its process ends.
func TestScopesAcrossRestart(t *testing.T) {
	d := start(t, "", server.Config{})
	a := d.admin(t)
	owner, gone := proctest.Sleeper(t), proctest.Sleeper(t)
	a.CreateScope(ctx(t), "kept", genid.ScopeOptions{Start: 3})
	a.CreateScope(ctx(t), "owned", genid.ScopeOptions{PID: owner.Process.Pid})
	a.CreateScope(ctx(t), "orphan", genid.ScopeOptions{PID: gone.Process.Pid})
	a.Bump(ctx(t), "kept", 0, "t")
	d.stop()
	a.Close()
	gone.Process.Kill() // while no daemon runs
	gone.Wait()
	// A daemon killed leaves its scopes' sockets, which the next replaces.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(d.dir, "scopes", "kept", "genid.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	for _, name := range []string{"genid.sock", "admin.sock"} { // the host's and the admin socket
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(d.dir, name), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close()
	}

	d2 := start(t, d.dir, server.Config{})
	a2 := d2.admin(t)
	if g, err := a2.Generation(ctx(t), "kept"); err != nil || g != 4 {
		t.Fatalf("kept after restart: %d %v", g, err)
	}
	kept := d2.dialScope(t, "kept")
	send(t, kept, wire.OpGet, 1, nil)
	if f := recv(t, kept); f.Status != wire.StatusOK || !bytes.Equal(f.Payload, wire.U32(4)) {
		t.Fatalf("kept's socket after restart: %+v %x", f.Header, f.Payload)
	}
	if _, err := a2.Generation(ctx(t), "owned"); err != nil {
		t.Fatalf("owned after restart: %v", err)
	}
	if _, err := a2.Generation(ctx(t), "orphan"); !errors.Is(err, genid.ErrNotFound) {
		t.Fatalf("orphan, whose process ended while no daemon ran: %v", err)
	}
	owner.Process.Kill()
	owner.Wait()
	waitFor(t, func() bool {
		_, err := a2.Generation(ctx(t), "owned")
		return errors.Is(err, genid.ErrNotFound)
	})
	if _, err := os.Stat(filepath.Join(d.dir, "scopes", "owned")); !os.IsNotExist(err) {
		t.Fatalf("owned's directory: %v", err)
	}
	// A scope of no process, served again, has no process's fd to close
	// when it goes: the daemon's own fds are left alone.
	var before, after unix.Stat_t
	if err := unix.Fstat(1, &before); err != nil {
		t.Fatal(err)
	}
	if err := a2.RemoveScope(ctx(t), "kept"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(1, &after); err != nil || after.Dev != before.Dev || after.Ino != before.Ino {
		t.Fatalf("fd 1 after the removal of a scope of no process: %v", err)
	}
}

// The scopes' owners an earlier version kept in RUN_DIR/state/NAME.json,
// a file each, are still theirs after an upgrade: moved into the run dir's
// owners, the files removed; a scope whose process ended while no daemon
// ran goes, as before.
func TestScopesOwnersUpgrade(t *testing.T) {
	d := start(t, "", server.Config{})
	a := d.admin(t)
	owner, gone := proctest.Sleeper(t), proctest.Sleeper(t)
	a.CreateScope(ctx(t), "owned", genid.ScopeOptions{PID: owner.Process.Pid, Start: 5})
	a.CreateScope(ctx(t), "orphan", genid.ScopeOptions{PID: gone.Process.Pid})
	d.stop()
	a.Close()
	gone.Process.Kill()
	gone.Wait()
	// The run dir as the earlier version left it: a JSON file per scope.
	state := filepath.Join(d.dir, "state")
	dirfd, err := unix.Open(state, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirfd)
	owners, err := slots.Open(dirfd, "owners", "owners")
	if err != nil {
		t.Fatal(err)
	}
	for name, i := range owners.Names() {
		if err := os.WriteFile(filepath.Join(state, name+".json"), append(owners.Data(i), '\n'), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if owners.Len() != 2 {
		t.Fatalf("%d owners, want 2", owners.Len())
	}
	owners.Close()
	os.Remove(filepath.Join(state, "owners"))

	d2 := start(t, d.dir, server.Config{})
	a2 := d2.admin(t)
	if g, err := a2.Generation(ctx(t), "owned"); err != nil || g != 5 {
		t.Fatalf("owned after the upgrade: %d %v", g, err)
	}
	if _, err := a2.Generation(ctx(t), "orphan"); !errors.Is(err, genid.ErrNotFound) {
		t.Fatalf("orphan, whose process ended while no daemon ran: %v", err)
	}
	for _, n := range []string{"owned.json", "orphan.json"} {
		if _, err := os.Stat(filepath.Join(state, n)); !os.IsNotExist(err) {
			t.Fatalf("%s left: %v", n, err)
		}
	}
	// Moved, not lost: the next daemon has the owner too.
	d2.stop()
	a2.Close()
	d3 := start(t, d.dir, server.Config{})
	a3 := d3.admin(t)
	owner.Process.Kill()
	owner.Wait()
	waitFor(t, func() bool {
		_, err := a3.Generation(ctx(t), "owned")
		return errors.Is(err, genid.ErrNotFound)
	})
}

// A restore gives the restored tasks their own scope: the one their root
// belongs to (a runtime's hook made it), else a new one named after the
// recorded scope (or, taken, a free variant), bumped past the recorded
// generation; the host scope without a pid. It never moves a scope the
// record merely names.
func TestRestoreScopes(t *testing.T) {
	d := start(t, "", server.Config{})
	a := d.admin(t)
	root1 := exec.Command("sleep", "1000")
	root2 := exec.Command("sleep", "1000")
	for _, c := range []*exec.Cmd{root1, root2} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer c.Process.Kill()
	}
	a.CreateScope(ctx(t), "victim", genid.ScopeOptions{Start: 100})
	avoid := uint32(20)

	// No scope for root1 yet: a new one, named after the record.
	g, name, err := a.Restore(ctx(t), "c1", &avoid, root1.Process.Pid)
	if err != nil || g != 21 || name != "c1" {
		t.Fatalf("restore of c1 for a new root: %d %q %v", g, name, err)
	}
	// A second restore of the same checkpoint (a clone): its own scope.
	g, name, err = a.Restore(ctx(t), "c1", &avoid, root2.Process.Pid)
	if err != nil || g != 21 || name != "c1-2" {
		t.Fatalf("a clone's restore: %d %q %v", g, name, err)
	}
	// A crafted record naming another scope gets a scope of its own.
	g, name, err = a.Restore(ctx(t), "victim", &avoid, root2.Process.Pid)
	if err != nil || name != "c1-2" || g != 22 {
		t.Fatalf("a restore naming victim for root2: %d %q %v", g, name, err)
	}
	if v, _ := a.Generation(ctx(t), "victim"); v != 100 {
		t.Fatalf("victim moved to %d", v)
	}
	// The host scope: no pid, no name.
	g, name, err = a.Restore(ctx(t), "", &avoid, 0)
	if err != nil || g != 21 || name != "" {
		t.Fatalf("restore of the host scope: %d %q %v", g, name, err)
	}
	// The maximum cannot be avoided.
	max := ^uint32(0)
	if _, _, err := a.Restore(ctx(t), "", &max, 0); !errors.Is(err, genid.ErrOverflow) {
		t.Fatalf("avoid the maximum: %v", err)
	}
	// A scope a hook made for the restored root is the one restored.
	root3 := exec.Command("sleep", "1000")
	root3.Start()
	defer root3.Process.Kill()
	a.CreateScope(ctx(t), "hooked", genid.ScopeOptions{PID: root3.Process.Pid})
	g, name, err = a.Restore(ctx(t), "old-name", &avoid, root3.Process.Pid)
	if err != nil || name != "hooked" || g != 21 {
		t.Fatalf("restore into the hook's scope: %d %q %v", g, name, err)
	}
	// Restored under its recorded name: the same scope.
	g, name, err = a.Restore(ctx(t), "hooked", &avoid, root3.Process.Pid)
	if err != nil || name != "hooked" || g != 22 {
		t.Fatalf("restore into the hook's scope, named in the record: %d %q %v", g, name, err)
	}
	// A third clone's (freeName's other cases: restore_test.go).
	root4 := proctest.Sleeper(t)
	if _, name, err = a.Restore(ctx(t), "c1", &avoid, root4.Process.Pid); err != nil || name != "c1-3" {
		t.Fatalf("a third clone's restore: %q %v", name, err)
	}
	// A restore's scope whose process ends while the restore lasts goes
	// when the restore ends.
	root4.Process.Kill()
	root4.Wait()
	servertest.WaitFor(t, "the daemon to see c1-3's process end", func() bool {
		watched, err := d.OwnerWatched("c1-3")
		return err == nil && !watched
	})
	if _, err := a.Generation(ctx(t), "c1-3"); err != nil {
		t.Fatalf("c1-3 while its restore lasts: %v", err)
	}
	// A restore's scope goes with its process, once the restore ended.
	a.Close()
	root1.Process.Kill()
	root1.Wait()
	a2 := d.admin(t)
	for _, name := range []string{"c1", "c1-3"} {
		waitFor(t, func() bool {
			_, err := a2.Generation(ctx(t), name)
			return errors.Is(err, genid.ErrNotFound)
		})
	}
}

// A scope restored again on another connection is that restore's: the
// first connection's end does not end it.
func TestRestoreTakenOver(t *testing.T) {
	d := start(t, "", server.Config{})
	root := proctest.Sleeper(t)
	restore := func(q net.Conn) {
		t.Helper()
		send(t, q, wire.OpRestore, 1, named("x", wire.Restore{PID: uint32(root.Process.Pid)}.Encode()))
		if f := recv(t, q); f.Status != wire.StatusOK {
			t.Fatalf("restore of x: %+v %q", f.Header, f.Payload)
		}
	}
	first, second := d.dialAdmin(t), d.dialAdmin(t)
	restore(first)
	restore(second)
	first.Close()
	counted(t, d, "the first restore's connection closed", func(c server.Counts) bool { return c.AdminConns == 1 })
	attach := func() wire.Status {
		c := d.dialScope(t, "x")
		send(t, c, wire.OpAttach, 1, wire.U32s(wire.FlagWatcher|wire.FlagRestored, 0))
		return recv(t, c).Status
	}
	if st := attach(); st != wire.StatusOK {
		t.Fatalf("a restored attach while the second restore lasts: %v", st)
	}
	second.Close()
	waitFor(t, func() bool { return attach() == wire.StatusPermission })
}

// Restored watchers may attach only to a scope a restore is restoring, and
// only while it lasts.
func TestRestoredAttachNeedsRestore(t *testing.T) {
	d := start(t, "", server.Config{})
	a := d.admin(t)
	root := exec.Command("sleep", "1000")
	root.Start()
	defer root.Process.Kill()
	attach := func(name string) wire.Status {
		c := d.dialScope(t, name)
		send(t, c, wire.OpAttach, 1, wire.U32s(wire.FlagWatcher|wire.FlagRestored, 3))
		return recv(t, c).Status
	}
	a.CreateScope(ctx(t), "idle", genid.ScopeOptions{})
	if st := attach("idle"); st != wire.StatusPermission {
		t.Fatalf("restored attach with no restore: %v", st)
	}
	_, name, err := a.Restore(ctx(t), "r", nil, root.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if st := attach(name); st != wire.StatusOK {
		t.Fatalf("restored attach during the restore: %v", st)
	}
	if st := attach("idle"); st != wire.StatusPermission {
		t.Fatalf("restored attach to another scope during the restore: %v", st)
	}
	a.Close() // the restore ends with its connection
	waitFor(t, func() bool { return attach(name) == wire.StatusPermission })
}

// The admin socket's restore steps after the first need no administrator:
// the restored tasks' root may be in a user namespace by then. The first
// does; the session is its connection's.
func TestRestoreBegin(t *testing.T) {
	d := start(t, "", server.Config{})
	c := d.dialAdmin(t)
	send(t, c, wire.OpRestore, 1, named("", wire.Restore{Flags: wire.FlagBegin}.Encode()))
	if f := recv(t, c); f.Status != wire.StatusOK {
		t.Fatalf("begin: %+v %q", f.Header, f.Payload)
	}
	send(t, c, wire.OpRestore, 2, named("x", wire.Restore{Flags: wire.FlagBegin}.Encode()))
	if f := recv(t, c); f.Status != wire.StatusBadRequest {
		t.Fatalf("begin with a name: %+v %q", f.Header, f.Payload)
	}
}

// Limits: a user cannot take more than its share, nor a scope, and the
// reserve keeps root on the host's socket and restores served when
// everyone else has taken all they may.
func TestScopeLimits(t *testing.T) {
	d := start(t, "", server.Config{MaxConns: 40, MaxWatchers: 20, ReserveConns: 5, ReserveWatchers: 5,
		MaxConnsPerScope: 10, MaxWatchersPerScope: 4})
	a := d.admin(t)
	a.CreateScope(ctx(t), "busy", genid.ScopeOptions{})
	a.CreateScope(ctx(t), "calm", genid.ScopeOptions{})
	watch := func(c net.Conn) wire.Status {
		send(t, c, wire.OpWatch, 1, nil)
		return recv(t, c).Status
	}
	// A scope's members take at most its share of watchers...
	for i := range 5 {
		st := watch(d.dialScope(t, "busy"))
		if want := wire.StatusOK; i >= 4 {
			if st != wire.StatusLimit {
				t.Fatalf("watcher %d of busy: %v, want limit", i, st)
			}
		} else if st != want {
			t.Fatalf("watcher %d of busy: %v", i, st)
		}
	}
	// ...and of connections: the others are told why.
	served, refused := 0, 0
	for range 12 {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(d.dir, "scopes", "busy", "genid.sock"), Net: "unix"})
		if err != nil {
			continue
		}
		defer c.Close()
		c.Write(wire.Append(nil, wire.Header{Op: wire.OpGet, ID: 1}, nil)) // fails on those hung up on
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		f, err := wire.ReadFrame(c, 256)
		switch {
		case err == nil && f.Status == wire.StatusOK:
			served++
		case err == nil && f.Op == wire.OpRefused && strings.Contains(string(f.Payload), "scope busy has 10 connections"):
			refused++
		}
	}
	if served != 5 || refused != 7 { // 10 per scope, 5 taken by the watchers
		t.Fatalf("%d more connections of busy served, %d refused, want 5 and 7", served, refused)
	}
	// Another scope is not held back by it.
	if st := watch(d.dialScope(t, "calm")); st != wire.StatusOK {
		t.Fatalf("a watcher of calm: %v", st)
	}
	if err := a.RemoveScope(ctx(t), "busy"); err != nil {
		t.Fatal(err)
	}
	// Everyone else but root takes everything it may: watchers up to the
	// reserve...
	a.CreateScope(ctx(t), "f1", genid.ScopeOptions{})
	a.CreateScope(ctx(t), "f2", genid.ScopeOptions{})
	a.CreateScope(ctx(t), "f3", genid.ScopeOptions{})
	a.CreateScope(ctx(t), "f4", genid.ScopeOptions{})
	taken := 1 // calm's
	for _, s := range []string{"f1", "f2", "f3", "f4"} {
		for range 4 {
			if watch(d.dialScope(t, s)) == wire.StatusOK {
				taken++
			}
		}
	}
	if taken != 15 {
		t.Fatalf("%d watchers taken outside the reserve, want 15 (20 - 5)", taken)
	}
	// ...yet root on the host's socket is served, from the reserve (this
	// test's process: root in CI; as another user, it is that user's
	// daemon, and the reserve is its).
	if os.Geteuid() == 0 {
		if st := watch(d.dial(t)); st != wire.StatusOK {
			t.Fatalf("root's watcher on the host socket: %v", st)
		}
	}
	// A restored watcher too.
	root := exec.Command("sleep", "1000")
	root.Start()
	defer root.Process.Kill()
	_, name, err := a.Restore(ctx(t), "r", nil, root.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	c := d.dialScope(t, name)
	send(t, c, wire.OpAttach, 1, wire.U32s(wire.FlagWatcher|wire.FlagRestored, 0))
	if f := recv(t, c); f.Status != wire.StatusOK {
		t.Fatalf("a restored watcher with only the reserve left: %+v %q", f.Header, f.Payload)
	}
	// And the admin socket has its own pool.
	if _, err := a.Bump(ctx(t), "", 0, "still served"); err != nil {
		t.Fatal(err)
	}
}

// An existing scope is no error with ExistOK, unless it is another
// process's: a scope of no process is bound to the one given, and goes
// when it ends.
func TestCreateScopeExistOK(t *testing.T) {
	d := start(t, "", server.Config{})
	a := d.admin(t)
	p1, p2 := proctest.Sleeper(t), proctest.Sleeper(t)
	if _, err := a.CreateScope(ctx(t), "web", genid.ScopeOptions{PID: p1.Process.Pid, Start: 4}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateScope(ctx(t), "web", genid.ScopeOptions{PID: p1.Process.Pid}); !errors.Is(err, genid.ErrExists) {
		t.Fatalf("web again, without ExistOK: %v", err)
	}
	for _, c := range []struct {
		what string
		pid  int
		ok   bool
	}{{"its own process", p1.Process.Pid, true}, {"no process", 0, true}, {"another process", p2.Process.Pid, false}} {
		g, err := a.CreateScope(ctx(t), "web", genid.ScopeOptions{PID: c.pid, ExistOK: true})
		if c.ok && (err != nil || g != 4) {
			t.Errorf("web again with ExistOK, for %s: %d %v, want 4", c.what, g, err)
		}
		if !c.ok && (!errors.Is(err, genid.ErrExists) || !strings.Contains(err.Error(), "belongs to process")) {
			t.Errorf("web again with ExistOK, for %s: %d %v, want it refused", c.what, g, err)
		}
	}
	if _, err := a.CreateScope(ctx(t), "free", genid.ScopeOptions{Start: 3}); err != nil {
		t.Fatal(err)
	}
	if g, err := a.CreateScope(ctx(t), "free", genid.ScopeOptions{PID: p2.Process.Pid, ExistOK: true}); err != nil || g != 3 {
		t.Fatalf("free again with ExistOK and a process: %d %v, want 3", g, err)
	}
	p2.Process.Kill()
	p2.Wait()
	waitFor(t, func() bool { // bound to p2 now
		_, err := a.Generation(ctx(t), "free")
		return errors.Is(err, genid.ErrNotFound)
	})
	if _, err := a.Generation(ctx(t), "web"); err != nil {
		t.Fatalf("web, p1's, after p2 ended: %v", err)
	}
}

// A daemon has so many container scopes, and no more (the host's aside);
// one removed is one more allowed. A scope may start at the highest
// generation a restore can still bump past, and no higher.
func TestScopesLimited(t *testing.T) {
	d := start(t, "", server.Config{MaxScopes: 2})
	a := d.admin(t)
	for _, name := range []string{"a", "b"} {
		if _, err := a.CreateScope(ctx(t), name, genid.ScopeOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.CreateScope(ctx(t), "c", genid.ScopeOptions{}); !errors.Is(err, genid.ErrLimit) {
		t.Fatalf("a third scope of 2: %v", err)
	}
	if err := a.RemoveScope(ctx(t), "a"); err != nil {
		t.Fatal(err)
	}
	if g, err := a.CreateScope(ctx(t), "c", genid.ScopeOptions{Start: scope.Max}); err != nil || g != scope.Max {
		t.Fatalf("a scope starting at %d, once one was removed: %d %v", uint32(scope.Max), g, err)
	}
	a.RemoveScope(ctx(t), "c")
	if _, err := a.CreateScope(ctx(t), "c", genid.ScopeOptions{Start: scope.Max + 1}); !errors.Is(err, genid.ErrOverflow) {
		t.Fatalf("a scope starting past %d: %v", uint32(scope.Max), err)
	}
}

// A removed scope leaves no fd open in the daemon (its loop's table of
// them: floors_test.go).
func TestScopeRemovalLeavesNothing(t *testing.T) {
	d, log := startLog(t, "", server.Config{})
	a := d.admin(t)
	fds := func() int {
		names, err := filepath.Glob("/proc/self/fd/*")
		if err != nil {
			t.Fatal(err)
		}
		return len(names)
	}
	owner := proctest.Sleeper(t)                        // os.Process holds a pidfd of its own
	if _, err := a.Generation(ctx(t), ""); err != nil { // the admin client connects at its first request
		t.Fatal(err)
	}
	before := fds()
	for _, opts := range []genid.ScopeOptions{{}, {PID: owner.Process.Pid}} {
		if _, err := a.CreateScope(ctx(t), "web", opts); err != nil {
			t.Fatal(err)
		}
		if err := a.RemoveScope(ctx(t), "web"); err != nil {
			t.Fatal(err)
		}
	}
	servertest.WaitFor(t, fmt.Sprintf("the fds of before the scopes (%d)", before), func() bool { return fds() == before })
	logged(t, log, "scope directory left", false)
	owners, err := os.ReadFile(filepath.Join(d.dir, "state", "owners"))
	if err != nil || bytes.Contains(owners, []byte("web")) {
		t.Fatalf("the owners' file after the scope's removal: %v, %q", err, owners)
	}
	// A file of someone else's in the scope's directory: the directory
	// stays, and the log says so.
	if _, err := a.CreateScope(ctx(t), "web", genid.ScopeOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, "scopes", "web", "stray"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.RemoveScope(ctx(t), "web"); err != nil {
		t.Fatal(err)
	}
	logged(t, log, "scope directory left", true)
}

// A daemon that stopped leaves no fd open in its process, of its scopes
// (owned or not) or its own, and logs no trouble closing them.
func TestStopLeavesNothing(t *testing.T) {
	fds := func() int {
		names, err := filepath.Glob("/proc/self/fd/*")
		if err != nil {
			t.Fatal(err)
		}
		return len(names)
	}
	owner := proctest.Sleeper(t) // os.Process holds a pidfd of its own
	before := fds()
	d, log := startLog(t, "", server.Config{})
	a := d.admin(t)
	for _, sc := range []struct {
		name string
		pid  int
	}{{"owned", owner.Process.Pid}, {"free", 0}} {
		if _, err := a.CreateScope(ctx(t), sc.name, genid.ScopeOptions{PID: sc.pid}); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	d.stop()
	if n := fds(); n != before {
		t.Errorf("%d fds open after the daemon stopped, %d before it started", n, before)
	}
	logged(t, log, "level=WARN", false)
	logged(t, log, " scopes=0 ", true) // the serving line: none left by a previous daemon
}

// A daemon whose stdin is closed has a real fd 0, the next it opens: it
// must use it and close it like any other, not take it for "no fd". Fd 0
// is first the run dir's (closed at New), then a scope owner's pidfd
// (closed after New): the scope is served, its owner watched, and once the
// daemon stops, fd 0 is free again.
func TestStdinClosed(t *testing.T) {
	saved, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Dup2(saved, 0)
		unix.Close(saved)
	})
	fd0 := func() string {
		l, err := os.Readlink("/proc/self/fd/0")
		if err != nil {
			return ""
		}
		return l
	}
	stopped := func(d *daemon) {
		t.Helper()
		d.stop()
		if l := fd0(); l != "" {
			t.Errorf("fd 0 after the daemon stopped: %s, left open", l)
		}
	}

	unix.Close(0)
	d := start(t, "", server.Config{})
	if l := fd0(); l == "" {
		t.Fatal("the daemon opened no fd 0")
	}
	w := d.dial(t)
	send(t, w, wire.OpWatch, 1, nil)
	recv(t, w)
	d.bump(0, "t")
	if f := recv(t, w); f.Op != wire.OpEvent {
		t.Fatalf("a watcher got %v, not an event", f.Op)
	}
	w.Close()
	stopped(d)

	unix.Dup2(saved, 0)
	owner := proctest.Sleeper(t)
	d, log := startLog(t, "", server.Config{})
	a := d.admin(t)
	if _, err := a.Generation(ctx(t), ""); err != nil { // the connection accepted
		t.Fatal(err)
	}
	unix.Close(0)
	if _, err := a.CreateScope(ctx(t), "owned", genid.ScopeOptions{PID: owner.Process.Pid}); err != nil {
		t.Fatal(err)
	}
	if l := fd0(); l != "anon_inode:[pidfd]" {
		t.Fatalf("fd 0 is %q, not the owner's pidfd", l)
	}
	owner.Process.Kill()
	owner.Wait()
	waitFor(t, func() bool { return strings.Contains(log.String(), `msg="scope removed" scope=owned`) })
	a.Close()
	stopped(d)
}

// The host scope's status tells the daemon's version and backends (none
// is an empty list); a container scope's, neither. An administrator sees
// which watchers are outdated.
func TestStatusOfHostOnly(t *testing.T) {
	d := start(t, "", server.Config{})
	if st := d.status(t); st.Backends == nil || len(st.Backends) != 0 {
		t.Fatalf("the host's backends, with none: %#v", st.Backends)
	}
	w1, w2 := d.dial(t), d.dial(t)
	for _, w := range []net.Conn{w1, w2} {
		send(t, w, wire.OpWatch, 1, nil)
		recv(t, w)
	}
	d.bump(0, "t")
	send(t, w1, wire.OpAck, 2, wire.U32(1))
	if f := recv(t, w1); f.Op == wire.OpEvent {
		recv(t, w1) // the ack's reply, after the event
	}
	d.WaitRegistered("", 2)
	st := d.status(t)
	if len(st.WatcherList) != 2 || st.Outdated != 1 {
		t.Fatalf("one watcher acked, one outdated: %+v", st)
	}
	for _, w := range st.WatcherList {
		if w.Outdated != (w.Acked != 1) {
			t.Fatalf("one watcher acked, one outdated: %+v", st.WatcherList)
		}
	}
	d.SetBackends([]string{"vmgenid"})
	a := d.admin(t)
	if _, err := a.CreateScope(ctx(t), "c", genid.ScopeOptions{}); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, "the backends in the host's status", func() bool {
		st, err := d.Status("")
		return err == nil && st.Version != "" && len(st.Backends) == 1 && st.Backends[0] == "vmgenid"
	})
	if st, err := d.Status("c"); err != nil || st.Version != "" || st.Backends != nil {
		t.Fatalf("a container scope's status: %+v %v", st, err)
	}
}

// Names must be names; a socket path must fit.
func TestScopeNames(t *testing.T) {
	d := start(t, "", server.Config{})
	c := d.dialAdmin(t)
	for i, name := range []string{".hidden", "-x", "a/b", "a b", strings.Repeat("x", 65)} {
		send(t, c, wire.OpScopeCreate, uint32(i+1), append(append([]byte{byte(len(name))}, name...), wire.ScopeCreate{}.Encode()...))
		if f := recv(t, c); f.Status != wire.StatusBadRequest {
			t.Errorf("create %q: %+v %q", name, f.Header, f.Payload)
		}
	}
	// A run dir deep enough leaves no room for a long name's socket.
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 40))
	d2 := start(t, long, server.Config{})
	a := d2.admin(t)
	if _, err := a.CreateScope(ctx(t), strings.Repeat("n", 64), genid.ScopeOptions{}); err == nil || !strings.Contains(err.Error(), "longer than a unix socket") {
		t.Fatalf("a socket path too long: %v", err)
	}
	if _, err := os.Stat(filepath.Join(long, "scopes", strings.Repeat("n", 64))); !os.IsNotExist(err) {
		t.Fatalf("the refused scope left its directory: %v", err)
	}
	// A path fits in 107 bytes, which leave sun_path's last for its end.
	n := 108 - len(filepath.Join(long, "scopes", "", "genid.sock")) - 1
	if n < 2 || n > wire.MaxName {
		t.Fatalf("the test's run dir %s leaves a name of %d bytes to make a socket path of 108", long, n)
	}
	if _, err := a.CreateScope(ctx(t), strings.Repeat("m", n), genid.ScopeOptions{}); err == nil || !strings.Contains(err.Error(), "108 bytes, longer than a unix socket's 107") {
		t.Fatalf("a socket path of 108 bytes: %v", err)
	}
	if _, err := a.CreateScope(ctx(t), strings.Repeat("m", n-1), genid.ScopeOptions{}); err != nil {
		t.Fatalf("a socket path of 107 bytes: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(long, "scopes", strings.Repeat("m", n-1), "genid.sock"), &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid() || st.Mode&0o7777 != 0o666 {
		t.Fatalf("the scope's socket: owner %d:%d mode %#o, want the daemon's and 0666", st.Uid, st.Gid, st.Mode&0o7777)
	}
}
