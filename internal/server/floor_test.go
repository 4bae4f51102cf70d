package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/server"
)

// stateCfg is a daemon's config with a state dir and a boot id of the
// test's own, which bootID rewrites (a reboot).
func stateCfg(t *testing.T) (server.Config, string) {
	t.Helper()
	dir := t.TempDir()
	boot := filepath.Join(dir, "boot_id")
	bootID(t, boot, "boot-1")
	return server.Config{StateDir: filepath.Join(dir, "state"), BootIDPath: boot}, boot
}

// startLog starts a daemon as start does, its log kept in the buffer it
// returns, for a test to read.
func startLog(t *testing.T, dir string, cfg server.Config) (*daemon, *proctest.Buffer) {
	t.Helper()
	log := &proctest.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log (%s):\n%s", dir, log)
		}
	})
	return start(t, dir, cfg), log
}

// logged fails the test unless the log has msg exactly when want.
func logged(t *testing.T, log *proctest.Buffer, msg string, want bool) {
	t.Helper()
	if got := strings.Contains(log.String(), msg); got != want {
		t.Errorf("the daemon's log has %q: %v, want %v", msg, got, want)
	}
}

func bootID(t *testing.T, path, id string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(id+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// below is what the daemon logs when a page is below its floor.
const below = "the page is below the scope's floor"

// Removing the run dir loses no generation: the host scope, and a
// container scope whose process still runs, resume at their floors, the
// latter served again with its owner; a scope whose process ended is
// forgotten, and one made later of its name starts afresh. A new boot
// starts from 0.
func TestFloorSurvivesRunDirRemoval(t *testing.T) {
	cfg, boot := stateCfg(t)
	run := filepath.Join(t.TempDir(), "run")
	d, log := startLog(t, run, cfg)
	if _, first := d.Lookback(); !first {
		t.Fatal("the boot's first daemon is not told it is")
	}
	a := d.admin(t)
	owner, gone := proctest.Sleeper(t), proctest.Sleeper(t)
	a.CreateScope(ctx(t), "owned", genid.ScopeOptions{PID: owner.Process.Pid, Start: 10})
	a.CreateScope(ctx(t), "orphan", genid.ScopeOptions{PID: gone.Process.Pid, Start: 20})
	a.CreateScope(ctx(t), "free", genid.ScopeOptions{Start: 30}) // no owner: until removed
	for range 3 {
		a.Bump(ctx(t), "", 0, "t")
	}
	a.Bump(ctx(t), "owned", 0, "t")
	d.stop()
	a.Close()
	logged(t, log, below, false) // its pages and floors agreed
	logged(t, log, "state close", false)
	gone.Process.Kill()
	gone.Wait()
	if err := os.RemoveAll(run); err != nil {
		t.Fatal(err)
	}

	d2, log2 := startLog(t, run, cfg)
	if _, first := d2.Lookback(); first {
		t.Fatal("a daemon after another of the same boot is told it is the first")
	}
	logged(t, log2, below, true)
	a2 := d2.admin(t)
	if g, err := a2.Generation(ctx(t), ""); err != nil || g != 3 {
		t.Fatalf("host after the run dir's removal: %d %v, want 3", g, err)
	}
	if g := readPage(t, filepath.Join(run, "generation")); g != 3 {
		t.Fatalf("host page %d, want 3", g)
	}
	if g, err := a2.Generation(ctx(t), "owned"); err != nil || g != 11 {
		t.Fatalf("owned after the run dir's removal: %d %v, want 11", g, err)
	}
	if g := readPage(t, filepath.Join(run, "scopes", "owned", "generation")); g != 11 {
		t.Fatalf("owned's page %d, want 11", g)
	}
	if _, err := a2.Generation(ctx(t), "orphan"); !errors.Is(err, genid.ErrNotFound) {
		t.Fatalf("orphan, whose process ended while no daemon ran: %v", err)
	}
	if g, err := a2.CreateScope(ctx(t), "orphan", genid.ScopeOptions{}); err != nil || g != 0 {
		t.Fatalf("a new scope of an ended one's name: %d %v, want 0", g, err)
	}
	if g, err := a2.Generation(ctx(t), "free"); err != nil || g != 30 {
		t.Fatalf("free after the run dir's removal: %d %v, want 30", g, err)
	}
	if err := a2.RemoveScope(ctx(t), "free"); err != nil {
		t.Fatal(err)
	}
	// Still its owner's: it goes when its process ends.
	owner.Process.Kill()
	owner.Wait()
	waitFor(t, func() bool {
		_, err := a2.Generation(ctx(t), "owned")
		return errors.Is(err, genid.ErrNotFound)
	})
	d2.stop()
	a2.Close()

	// Removed with its scope, the floor does not bring it back.
	os.RemoveAll(run)
	d3 := start(t, run, cfg)
	a3 := d3.admin(t)
	for _, n := range []string{"owned", "free"} {
		if _, err := a3.Generation(ctx(t), n); !errors.Is(err, genid.ErrNotFound) {
			t.Fatalf("%s, removed before: %v", n, err)
		}
	}
	d3.stop()
	a3.Close()

	// A reboot: the run dir (tmpfs) is gone, and the floors mean nothing.
	os.RemoveAll(run)
	bootID(t, boot, "boot-2")
	d4 := start(t, run, cfg)
	if _, first := d4.Lookback(); !first {
		t.Fatal("the first daemon of a new boot is not told it is")
	}
	if g := readPage(t, filepath.Join(run, "generation")); g != 0 {
		t.Fatalf("host after a reboot: %d, want 0", g)
	}
}

// Losing the state dir, the run dir kept, loses nothing either: the page
// holds the generation, and the floor is raised to it; each container
// scope's owner is recorded again.
func TestFloorRaisedToPage(t *testing.T) {
	cfg, _ := stateCfg(t)
	run := filepath.Join(t.TempDir(), "run")
	owner, other := proctest.Sleeper(t), proctest.Sleeper(t)
	d := start(t, run, cfg)
	a := d.admin(t)
	a.Bump(ctx(t), "", 5, "t")
	a.CreateScope(ctx(t), "owned", genid.ScopeOptions{PID: owner.Process.Pid, Start: 7})
	a.CreateScope(ctx(t), "owned2", genid.ScopeOptions{PID: other.Process.Pid, Start: 8})
	d.stop()
	a.Close()
	os.RemoveAll(cfg.StateDir)

	d2 := start(t, run, cfg)
	if _, first := d2.Lookback(); first {
		t.Fatal("a daemon that finds a page is told it is the boot's first")
	}
	d2.stop()
	os.RemoveAll(run)
	d3 := start(t, run, cfg)
	if g := readPage(t, filepath.Join(run, "generation")); g != 5 {
		t.Fatalf("host after losing the state dir, then the run dir: %d, want 5", g)
	}
	a3 := d3.admin(t)
	for _, sc := range []struct {
		name  string
		gen   uint32
		owner *exec.Cmd
	}{{"owned", 7, owner}, {"owned2", 8, other}} {
		if g, err := a3.Generation(ctx(t), sc.name); err != nil || g != sc.gen {
			t.Fatalf("%s after losing the state dir, then the run dir: %d %v, want %d", sc.name, g, err, sc.gen)
		}
		sc.owner.Process.Kill()
		sc.owner.Wait()
		waitFor(t, func() bool { // still bound to its process
			_, err := a3.Generation(ctx(t), sc.name)
			return errors.Is(err, genid.ErrNotFound)
		})
	}
	d3.stop()
}

// Two daemons never share a run dir's state: the second is refused, even
// on a run dir the first lost.
func TestFloorLocked(t *testing.T) {
	cfg, _ := stateCfg(t)
	run := filepath.Join(t.TempDir(), "run")
	start(t, run, cfg)
	os.RemoveAll(run)
	cfg.RunDir = run
	if _, err := server.New(cfg); err == nil {
		t.Fatal("a second daemon took the state of the first's run dir")
	}
}

// The backends' marks are kept for the next daemon of the boot, and those
// saved while stopping only once the posted bumps have run.
func TestMarksKept(t *testing.T) {
	cfg, _ := stateCfg(t)
	run := filepath.Join(t.TempDir(), "run")
	d, log := startLog(t, run, cfg)
	d.SaveMark("vmgenid", json.RawMessage(`{"kmsg_seq":12}`))
	d.SaveMark("vmclock", json.RawMessage(`{"vm_generation_counter":3}`))
	d.SaveMark("vmclock", nil) // nothing accounted: the last mark stays
	// A backend that ends with the daemon saves its last mark then.
	d.Go(func(ctx context.Context) {
		<-ctx.Done()
		d.SaveMark("vmgenid", json.RawMessage(`{"kmsg_seq":13}`))
	})
	d.stop()
	logged(t, log, "mark not kept", false)
	d2 := start(t, run, cfg)
	marks, _ := d2.Lookback()
	if string(marks["vmgenid"]) != `{"kmsg_seq":13}` || string(marks["vmclock"]) != `{"vm_generation_counter":3}` {
		t.Fatalf("marks %s", marks)
	}
}

func readPage(t *testing.T, path string) uint32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 4 {
		t.Fatalf("page %s: %v", path, err)
	}
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
