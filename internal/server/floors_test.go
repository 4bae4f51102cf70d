package server

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/wire"
)

// A scope's floor is held while the scope is served, and let go when it is
// not: after a failed attempt to make the scope (its socket could not be
// bound), and when it is removed. A floor still held would refuse the
// scope made again, and the daemon would keep one for every scope a
// container host ever had.
func TestFloorsLetGo(t *testing.T) {
	dir := t.TempDir()
	boot := filepath.Join(dir, "boot_id")
	if err := os.WriteFile(boot, []byte("boot-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := serve(t, Config{StateDir: filepath.Join(dir, "state"), BootIDPath: boot}, nil)
	onLoop := func(f func()) {
		t.Helper()
		if err := s.do(f); err != nil {
			t.Fatal(err)
		}
	}
	create := func(name string) (err error) {
		onLoop(func() { _, err = s.createScope(name, wire.ScopeCreate{}) })
		return err
	}

	// A directory where the scope's socket goes: it cannot be bound.
	sock := filepath.Join(s.cfg.RunDir, scopesDir, "a", genid.SocketFile)
	if err := os.MkdirAll(filepath.Join(sock, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := create("a"); err == nil {
		t.Fatal("a scope whose socket is a directory was made")
	}
	if err := os.RemoveAll(sock); err != nil {
		t.Fatal(err)
	}
	if err := create("a"); err != nil {
		t.Fatalf("the scope made again once its socket can be bound: %v", err)
	}

	for _, name := range []string{"b", "c", "d"} {
		if err := create(name); err != nil {
			t.Fatal(err)
		}
		var err error
		onLoop(func() { err = s.removeScope(s.scopes[name], "test") })
		if err != nil {
			t.Fatal(err)
		}
	}
	var held []string
	onLoop(func() {
		for name := range s.floors {
			held = append(held, name)
		}
	})
	if len(held) != 2 {
		t.Fatalf("floors held: %q, want the host's and a's", held)
	}
}

// The loop forgets a removed scope's fds: its socket and its process's
// pidfd. An fd number it kept would be taken for the scope's when a
// connection reuses it.
func TestRemovalUnwatches(t *testing.T) {
	s := serve(t, Config{}, nil)
	owner := proctest.Sleeper(t)
	var before, after int
	var err error
	if err2 := s.do(func() {
		before = len(s.loop.special)
		if _, err = s.createScope("web", wire.ScopeCreate{PID: uint32(owner.Process.Pid)}); err == nil {
			err = s.removeScope(s.scopes["web"], "test")
		}
		after = len(s.loop.special)
	}); err2 != nil || err != nil {
		t.Fatal(err2, err)
	}
	if after != before {
		t.Fatalf("the loop watches %d fds of its own after a scope came and went, %d before", after, before)
	}
}
