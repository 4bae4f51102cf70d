package genid_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/genidtest"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), genidtest.Patience)
	t.Cleanup(cancel)
	return ctx
}

func watch(t *testing.T, c *genid.Client) *genid.Watcher {
	t.Helper()
	w, err := c.Watch(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// readable tells whether fd is readable now.
func readable(t *testing.T, fd int) bool {
	t.Helper()
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	return n == 1 && p[0].Revents&unix.POLLIN != 0
}

// becomesReadable waits up to Patience for fd to turn readable.
func becomesReadable(t *testing.T, fd int) bool {
	t.Helper()
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(p, int(genidtest.Patience/time.Millisecond))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("poll: %v", err)
		}
		return n == 1
	}
}

// A watcher's Fd is readable exactly while it is outdated: from the event
// of a new generation to the ack of it, quiet or not.
func TestFd(t *testing.T) {
	srv := genidtest.NewServer(t)
	ctx := testCtx(t)
	w := watch(t, srv.Client())
	fd, err := w.Fd()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := w.Fd(); again != fd || err != nil {
		t.Fatalf("Fd again: %d %v, want %d", again, err, fd)
	}
	if readable(t, fd) {
		t.Fatal("readable while up to date")
	}

	gen, _ := srv.Bump(0, "t")
	if !becomesReadable(t, fd) {
		t.Fatal("not readable after a bump")
	}
	if !readable(t, fd) {
		t.Fatal("level-triggered: readable until acked")
	}
	if g, err := w.TryWait(); g != gen || err != nil {
		t.Fatalf("TryWait: %d %v", g, err)
	}
	if err := w.Ack(ctx, gen); err != nil {
		t.Fatal(err)
	}
	if readable(t, fd) {
		t.Fatal("readable after the ack")
	}

	gen, _ = srv.Bump(0, "t")
	if !becomesReadable(t, fd) {
		t.Fatal("not readable after a second bump")
	}
	if err := w.AckQuiet(ctx, gen); err != nil {
		t.Fatal(err)
	}
	if readable(t, fd) {
		t.Fatal("readable after the quiet ack")
	}
	srv.WaitAcked() // the daemon took the quiet ack

	// A quiet ack that the daemon refuses (a newer generation came) leaves
	// the watcher outdated, here and there.
	srv.Bump(0, "t")
	newer, _ := srv.Bump(0, "t")
	if err := w.AckQuiet(ctx, newer-1); err != nil {
		t.Fatal(err)
	}
	if !becomesReadable(t, fd) {
		t.Fatal("not readable after a stale quiet ack")
	}
	if g, err := w.TryWait(); g != newer || err != nil {
		t.Fatalf("TryWait after a stale quiet ack: %d %v, want %d", g, err, newer)
	}
	if st := srv.Status(); st.Outdated != 1 {
		t.Fatalf("the daemon counts %d outdated after a stale quiet ack", st.Outdated)
	}
	if err := w.AckQuiet(ctx, newer); err != nil {
		t.Fatal(err)
	}
	srv.WaitAcked()

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
		t.Fatalf("the fd after Close: %v, want EBADF", err)
	}
	if fd, err := w.Fd(); fd != -1 || !errors.Is(err, genid.ErrClosed) {
		t.Fatalf("Fd after Close: %d %v, want -1 and ErrClosed", fd, err)
	}

	// An Fd asked for while outdated is readable at once.
	w2 := watch(t, srv.Client())
	gen, _ = srv.Bump(0, "t")
	if g, err := w2.Wait(ctx); g != gen || err != nil {
		t.Fatalf("wait: %d %v", g, err)
	}
	fd2, err := w2.Fd()
	if err != nil || !readable(t, fd2) {
		t.Fatalf("the Fd of an outdated watcher (%v): not readable", err)
	}
}

// With an Fd, a watcher that nobody calls follows the daemon across a
// restart by itself, and its Fd turns readable when the generation changed
// while the daemon was away.
func TestFdAcrossRestart(t *testing.T) {
	srv := genidtest.NewServer(t)
	w := watch(t, srv.Client())
	fd, err := w.Fd()
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	// A change while no daemon runs: the next daemon resumes from the page.
	a, err := genid.OpenAdmin(srv.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	srv.Restart()
	srv.WaitRegistered(1) // registered again, with no call made
	if readable(t, fd) {
		t.Fatal("readable after a restart with no change")
	}
	gen, err := a.Bump(testCtx(t), "", 0, "while away")
	if err != nil {
		t.Fatal(err)
	}
	if !becomesReadable(t, fd) {
		t.Fatal("not readable after a bump by the new daemon")
	}
	if g, err := w.TryWait(); g != gen || err != nil {
		t.Fatalf("TryWait: %d %v, want %d", g, err, gen)
	}

	// A bump while the daemon is down: the re-registration reports it.
	if err := w.AckQuiet(testCtx(t), gen); err != nil {
		t.Fatal(err)
	}
	srv.WaitAcked()
	srv.Close()
	writePage(t, srv.RunDir, gen+5)
	srv.Restart()
	if !becomesReadable(t, fd) {
		t.Fatal("not readable after a restart past the acked generation")
	}
	if g, err := w.TryWait(); g != gen+5 || err != nil {
		t.Fatalf("TryWait: %d %v, want %d", g, err, gen+5)
	}
}

// An ack that cannot reach the daemon (it is restarting) is carried by the
// registration with the next one; a watcher nobody calls registers again
// by itself.
func TestAckWhileAway(t *testing.T) {
	srv := genidtest.NewServer(t)
	w := watch(t, srv.Client())
	gen, _ := srv.Bump(0, "t")
	srv.Close()
	err := w.Ack(testCtx(t), gen)
	if !errors.Is(err, genid.ErrUnreachable) {
		t.Fatalf("ack with no daemon: %v, want ErrUnreachable", err)
	}
	if _, err := w.TryWait(); w.Acked() != gen || !errors.Is(err, genid.ErrWouldBlock) {
		t.Fatalf("acked %d (%v) after an ack that did not reach the daemon, want %d", w.Acked(), err, gen)
	}
	srv.Restart()
	srv.WaitRegistered(1)
	srv.WaitAcked()

	// A refusal is not counted as an ack.
	srv.Bump(0, "t")
	if err := w.Ack(testCtx(t), gen); !errors.Is(err, genid.ErrStale) || w.Acked() != gen {
		t.Fatalf("stale ack: %v, acked %d", err, w.Acked())
	}
}

// writePage sets the generation on the page of a stopped daemon, as a
// change it did not see.
func writePage(t *testing.T, runDir string, gen uint32) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(runDir, genid.PageFile))
	if err != nil {
		t.Fatal(err)
	}
	b[0], b[1], b[2], b[3] = byte(gen), byte(gen>>8), byte(gen>>16), byte(gen>>24)
	if err := os.WriteFile(filepath.Join(runDir, genid.PageFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Every error keeps its cause for errors.Is: the daemon's refusals, and
// the system's and the context's errors behind a failure to reach it.
func TestErrorsIs(t *testing.T) {
	if _, err := genid.Open(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of a missing run dir: %v, want fs.ErrNotExist", err)
	}
	open := t.TempDir()
	os.Chmod(open, 0o777)
	if _, err := genid.Open(open); !errors.Is(err, genid.ErrUntrusted) {
		t.Errorf("Open of a run dir writable by all: %v, want ErrUntrusted", err)
	}
	if _, err := genid.OpenAdmin(open); !errors.Is(err, genid.ErrUntrusted) {
		t.Errorf("OpenAdmin of a run dir writable by all: %v, want ErrUntrusted", err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o644)
	if _, err := genid.Open(notDir); !errors.Is(err, genid.ErrUntrusted) {
		t.Errorf("Open of a file: %v, want ErrUntrusted", err)
	}

	srv := genidtest.NewServer(t)
	c := srv.Client()
	srv.Close()
	_, err := c.Outdated(testCtx(t))
	if !errors.Is(err, genid.ErrUnreachable) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("a call with no daemon: %v, want ErrUnreachable and ENOENT", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Watch(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch with a cancelled context: %v, want context.Canceled", err)
	}

	srv.Restart()
	a := srv.Admin()
	if _, err := a.Bump(testCtx(t), "", ^uint32(0), "t"); !errors.Is(err, genid.ErrOverflow) {
		t.Errorf("bump to the maximum: %v, want ErrOverflow", err)
	}
	if err := a.WaitWatchers(testCtx(t), "nosuch", time.Second); !errors.Is(err, genid.ErrNotFound) {
		t.Errorf("wait on a missing scope: %v, want ErrNotFound", err)
	}
	if _, err := a.CreateScope(testCtx(t), "../x", genid.ScopeOptions{}); !errors.Is(err, genid.ErrBadRequest) {
		t.Errorf("a bad scope name: %v, want ErrBadRequest", err)
	}
	var gerr *genid.Error
	if _, err := a.Bump(testCtx(t), "", ^uint32(0), "t"); !errors.As(err, &gerr) || gerr.Code != genid.CodeOverflow {
		t.Errorf("errors.As: %v, want an *Error with CodeOverflow", err)
	}
}

// WaitChange sleeps on the page: a bump wakes it with the new generation,
// also one made while the daemon is down and restarted (no connection is
// involved); a generation other than seen returns at once; the context's
// end and the client's Close end it with their errors.
func TestWaitChange(t *testing.T) {
	srv := genidtest.NewServer(t)
	c := srv.Client()
	ctx := testCtx(t)
	wait := func(ctx context.Context, seen uint32) chan error {
		ch := make(chan error, 1)
		go func() {
			g, err := c.WaitChange(ctx, seen)
			if err == nil && g != seen+1 {
				err = errors.New("woken at generation " + strconv.Itoa(int(g)))
			}
			ch <- err
		}()
		return ch
	}
	asleep := func(ch chan error) {
		t.Helper()
		select {
		case err := <-ch:
			t.Fatalf("WaitChange returned before a bump: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}

	ch := wait(ctx, 0)
	asleep(ch)
	srv.Bump(0, "test")
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	if g, err := c.WaitChange(ctx, 0); err != nil || g != 1 {
		t.Fatalf("WaitChange(0) at 1: %d, %v", g, err)
	}

	ch = wait(ctx, 1)
	srv.Restart()
	asleep(ch)
	srv.Bump(0, "test")
	if err := <-ch; err != nil {
		t.Fatalf("across a restart: %v", err)
	}

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := c.WaitChange(short, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitChange past its deadline: %v", err)
	}

	ch = wait(ctx, 2)
	asleep(ch)
	c.Close()
	if err := <-ch; !errors.Is(err, genid.ErrClosed) {
		t.Fatalf("WaitChange during Close: %v", err)
	}
	if _, err := c.WaitChange(ctx, 2); !errors.Is(err, genid.ErrClosed) {
		t.Fatalf("WaitChange after Close: %v", err)
	}
}
