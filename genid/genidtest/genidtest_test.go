package genidtest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/genidtest"
	"github.com/genid-project/genid/internal/servertest"
)

// The helpers that wait are servertest's, with its patience.
func TestPatience(t *testing.T) {
	if genidtest.Patience != servertest.Patience {
		t.Fatalf("genidtest.Patience %v, servertest's %v", genidtest.Patience, servertest.Patience)
	}
}

// What an application's test does: start the daemon, let the application
// watch, bump, and see it rebuild and ack.
func TestServer(t *testing.T) {
	srv := genidtest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), genidtest.Patience)
	defer cancel()
	c := srv.Client()
	if g := c.Generation(); g != 0 || srv.Generation() != 0 {
		t.Fatalf("a new server at %d (page %d), want 0", srv.Generation(), g)
	}
	w, err := c.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srv.WaitRegistered(1)

	gen, err := srv.Bump(0, "test")
	if err != nil || gen != 1 {
		t.Fatalf("bump: %d %v", gen, err)
	}
	if st := srv.Status(); st.Outdated != 1 || st.LastBump == nil || st.LastBump.Reason != "test" ||
		len(st.WatcherList) != 1 || st.WatcherList[0].PID != os.Getpid() {
		t.Fatalf("status after the bump: %+v", st)
	}
	if g, err := w.Wait(ctx); g != 1 || err != nil {
		t.Fatalf("wait: %d %v", g, err)
	}
	go w.Ack(ctx, 1)
	srv.WaitAcked()
	if gen, err := srv.Bump(9, "test"); gen != 9 || err != nil || c.Generation() != 9 {
		t.Fatalf("bump to a min: %d %v, page %d", gen, err, c.Generation())
	}

	// A restart keeps the generation; the watcher registers again.
	srv.Restart()
	if srv.Generation() != 9 {
		t.Fatalf("after a restart: %d", srv.Generation())
	}
	if g, err := w.Wait(ctx); g != 9 || err != nil {
		t.Fatalf("wait across the restart: %d %v", g, err)
	}
	if err := w.Ack(ctx, 9); err != nil { // on a new connection, registered again
		t.Fatal(err)
	}
	srv.WaitRegistered(1)
	srv.WaitAcked()
	w.Close()
	srv.WaitRegistered(0)

	a := srv.Admin()
	if err := a.WaitWatchers(ctx, "", 10*time.Millisecond); err != nil {
		t.Fatalf("admin: %v", err)
	}
	if srv.SocketPath() != filepath.Join(srv.RunDir, genid.SocketFile) ||
		srv.AdminSocketPath() != filepath.Join(srv.RunDir, genid.AdminSocketFile) {
		t.Fatalf("sockets %s %s", srv.SocketPath(), srv.AdminSocketPath())
	}
	srv.Close()
	srv.Close()
	if _, err := os.Stat(srv.SocketPath()); !os.IsNotExist(err) {
		t.Fatalf("socket after Close: %v", err)
	}
}

// Start, for a program with no testing.TB: Close stops the daemon and
// removes its directory.
func TestStart(t *testing.T) {
	srv, err := genidtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	c, err := genid.Open(srv.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := srv.Bump(0, "t"); err != nil || c.Generation() != 1 {
		t.Fatalf("bump: %v, page %d", err, c.Generation())
	}
	srv.WaitRegistered(0)
	srv.Close()
	if _, err := os.Stat(srv.RunDir); !os.IsNotExist(err) {
		t.Fatalf("run dir after Close: %v", err)
	}
}

// genidtest is for applications' tests, which do not run as root: the
// tests above pass as nobody too. (Run as root, as `make test` does, this
// runs them again as nobody; run as someone else, they have just passed.)
func TestWithoutRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		return // this very run is the proof
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A copy nobody may run, and a TMPDIR of nobody's own.
	dir, err := os.MkdirTemp("", "genidtest-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "genidtest.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	os.Mkdir(tmp, 0o700)
	os.Chown(tmp, 65534, 65534)

	ctx, cancel := context.WithTimeout(context.Background(), 2*genidtest.Patience)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^(TestServer|TestStart)$", "-test.v", "-test.count=1")
	cmd.Env = []string{"TMPDIR=" + tmp, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Count(string(out), "--- PASS") != 2 {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
}
