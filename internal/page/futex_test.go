package page

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pagePair is a page the daemon's way (a Writer) and a reader's way (a
// separate read-only mapping of the same file, as another process has).
func pagePair(t *testing.T) (*Writer, *Reader) {
	t.Helper()
	dir := t.TempDir()
	dirfd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirfd)
	w, err := CreateAt(dirfd, "generation", filepath.Join(dir, "generation"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	r, err := Open(filepath.Join(dir, "generation"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return w, r
}

// bothWaits runs f with futex_waitv, and again with the FUTEX_WAIT of
// kernels before 5.16.
func bothWaits(t *testing.T, f func(t *testing.T)) {
	t.Run("futex_waitv", f)
	t.Run("FUTEX_WAIT", func(t *testing.T) {
		waitv.Store(false)
		defer waitv.Store(true)
		f(t)
	})
}

type waited struct {
	gen uint32
	err error
}

func waitAsync(r *Reader, ctx context.Context, seen uint32) chan waited {
	ch := make(chan waited, 1)
	go func() {
		g, err := r.Wait(ctx, seen)
		ch <- waited{g, err}
	}()
	return ch
}

// A thread asleep on the page is woken by the daemon's store, through
// another mapping of the file, and gets the new generation; until then it
// sleeps.
func TestWaitWokenByStore(t *testing.T) {
	bothWaits(t, func(t *testing.T) {
		w, r := pagePair(t)
		w.Store(3)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ch := waitAsync(r, ctx, 3)
		select {
		case got := <-ch:
			t.Fatalf("Wait returned %+v before any store", got)
		case <-time.After(100 * time.Millisecond):
		}
		w.Store(4)
		if got := <-ch; got.err != nil || got.gen != 4 {
			t.Fatalf("Wait after the store: %+v, want generation 4", got)
		}
	})
}

// Set stores without waking: a thread asleep on the page sleeps on
// through it, and the next Store wakes it with that store's generation.
func TestSetWakesNoOne(t *testing.T) {
	w, r := pagePair(t)
	w.Store(3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch := waitAsync(r, ctx, 3)
	asleepOnPage(t)
	w.Set(5)
	if w.Load() != 5 || r.Load() != 5 {
		t.Fatalf("after Set(5): the writer reads %d, a reader %d", w.Load(), r.Load())
	}
	select {
	case got := <-ch:
		t.Fatalf("Set woke a thread asleep on the page: %+v", got)
	case <-time.After(100 * time.Millisecond):
	}
	w.Store(6)
	if got := <-ch; got.err != nil || got.gen != 6 {
		t.Fatalf("Wait after the store: %+v, want generation 6", got)
	}
	w.Close()
	w.Set(7) // a closed writer stores nothing, and does not fault
}

// asleepOnPage waits until a thread of the process sleeps in futex_waitv,
// as Wait does (this test's kernels have it).
func asleepOnPage(t *testing.T) {
	t.Helper()
	prefix := []byte(strconv.Itoa(unix.SYS_FUTEX_WAITV) + " ")
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			if b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/syscall"); err == nil && bytes.HasPrefix(b, prefix) {
				return
			}
		}
	}
	t.Fatal("no thread asleep on the page after 10 s")
}

// A generation other than seen is returned at once, with no wait.
func TestWaitMovedAlready(t *testing.T) {
	bothWaits(t, func(t *testing.T) {
		w, r := pagePair(t)
		w.Store(7)
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // a wait would fail
		if g, err := r.Wait(ctx, 6); err != nil || g != 7 {
			t.Fatalf("Wait(6) on 7: %d, %v", g, err)
		}
	})
}

// The context's end ends the wait with its error: an end that comes while
// the thread sleeps, and one that came before the call.
func TestWaitContext(t *testing.T) {
	bothWaits(t, func(t *testing.T) {
		w, r := pagePair(t)
		w.Store(1)
		ctx, cancel := context.WithCancel(context.Background())
		ch := waitAsync(r, ctx, 1)
		time.Sleep(50 * time.Millisecond)
		cancel()
		select {
		case got := <-ch:
			if !errors.Is(got.err, context.Canceled) || got.gen != 1 {
				t.Fatalf("a cancelled Wait: %+v", got)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a cancelled Wait did not return")
		}
		if g, err := r.Wait(ctx, 1); !errors.Is(err, context.Canceled) || g != 1 {
			t.Fatalf("Wait with an ended context: %d, %v", g, err)
		}
		dl, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		if _, err := r.Wait(dl, 1); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait past its deadline: %v", err)
		}
	})
}

// Many threads asleep on one page are all woken by one store.
func TestWaitManyWoken(t *testing.T) {
	w, r := pagePair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var chs []chan waited
	for range 50 {
		chs = append(chs, waitAsync(r, ctx, 0))
	}
	time.Sleep(50 * time.Millisecond)
	w.Store(1)
	for i, ch := range chs {
		if got := <-ch; got.err != nil || got.gen != 1 {
			t.Fatalf("waiter %d: %+v", i, got)
		}
	}
}

// A store to a closed writer stores nothing and wakes no one: the waiter
// sleeps on until its context ends.
func TestWaitClosedWriter(t *testing.T) {
	w, r := pagePair(t)
	w.Close()
	w.Store(9)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if g, err := r.Wait(ctx, 0); !errors.Is(err, context.DeadlineExceeded) || g != 0 {
		t.Fatalf("Wait after a closed writer's store: %d, %v", g, err)
	}
}

// A wake with no new generation (any process that maps the page can make
// one) is spurious: the waiter reads the same value and sleeps on.
func TestWaitSpuriousWake(t *testing.T) {
	bothWaits(t, func(t *testing.T) {
		w, r := pagePair(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ch := waitAsync(r, ctx, 0)
		for range 5 {
			time.Sleep(20 * time.Millisecond)
			wake((*uint32)(unsafe.Pointer(&r.mem[0])))
		}
		select {
		case got := <-ch:
			t.Fatalf("Wait returned %+v on a wake with no new generation", got)
		case <-time.After(100 * time.Millisecond):
		}
		w.Store(1)
		if got := <-ch; got.err != nil || got.gen != 1 {
			t.Fatalf("Wait after the store: %+v", got)
		}
	})
}

// futex_waitv stays in use where the kernel has it (Linux 5.16 and later):
// only ENOSYS turns it off.
func TestWaitvKept(t *testing.T) {
	_, _, errno := unix.Syscall6(unix.SYS_FUTEX_WAITV, 0, 0, 0, 0, 0, 0)
	has := errno != unix.ENOSYS
	w, r := pagePair(t)
	w.Store(1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch := waitAsync(r, ctx, 1)
	time.Sleep(20 * time.Millisecond)
	w.Store(2)
	if got := <-ch; got.err != nil || got.gen != 2 {
		t.Fatalf("Wait: %+v", got)
	}
	if waitv.Load() != has {
		t.Fatalf("futex_waitv in use: %v; the kernel has it: %v", waitv.Load(), has)
	}
}

// A reader maps a file of at least the 4 bytes of the generation; a
// shorter one is refused.
func TestOpenShortFile(t *testing.T) {
	dir := t.TempDir()
	for size, ok := range map[int]bool{3: false, 4: true, Size: true} {
		path := filepath.Join(dir, strconv.Itoa(size))
		if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := Open(path)
		if (err == nil) != ok {
			t.Fatalf("Open of a %d-byte file: %v", size, err)
		}
		if r != nil {
			r.Close()
		}
	}
}
