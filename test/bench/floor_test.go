package main

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fdsResult is what a goroutine of a test passed or received.
type fdsResult struct {
	fds []int
	err error
}

// TestPassPairs checks the AF_UNIX floor's set-up: every pair's far end
// arrives, in order, across several SCM_RIGHTS batches.
func TestPassPairs(t *testing.T) {
	ctl, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(ctl[:])
	const n = 2*fdBatch + 17
	sent := make(chan fdsResult, 1)
	go func() {
		fds, err := passPairs(ctl[0], n)
		sent <- fdsResult{fds, err}
	}()
	theirs, err := recvFds(ctl[1], n)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(theirs)
	r := <-sent
	if r.err != nil {
		t.Fatal(r.err)
	}
	ours := r.fds
	defer closeAll(ours)
	if len(ours) != n || len(theirs) != n {
		t.Fatalf("kept %d, received %d, want %d each", len(ours), len(theirs), n)
	}
	for _, i := range []int{0, fdBatch - 1, fdBatch, n - 1} {
		if _, err := unix.Write(ours[i], []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		var b [2]byte
		if k, err := unix.Read(theirs[i], b[:]); err != nil || k != 1 || b[0] != byte(i) {
			t.Fatalf("pair %d: read %d bytes %v, %v", i, k, b[:k], err)
		}
	}
}

// TestRecvFdsShort checks that a sender that stops early is an error, not a
// hang or a short list.
func TestRecvFdsShort(t *testing.T) {
	ctl, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ctl[1])
	ours, err := passPairs(ctl[0], 3)
	if err != nil {
		t.Fatal(err)
	}
	closeAll(ours)
	unix.Close(ctl[0])
	if fds, err := recvFds(ctl[1], 4); err == nil {
		closeAll(fds)
		t.Fatal("4 descriptors from a sender of 3: no error")
	}
}

// TestRecvFdsSignalled: a receive bounded by a timeout (as the bench's
// control socket is) returns EINTR when a signal comes, where a plain
// one restarts; recvFds receives on through them.
func TestRecvFdsSignalled(t *testing.T) {
	ctl, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(ctl[:])
	if err := bound(ctl[1], time.Minute); err != nil {
		t.Fatal(err)
	}
	got, tid := make(chan fdsResult, 1), make(chan int, 1)
	go func() {
		runtime.LockOSThread() // the thread the signals go to; it dies with the goroutine
		tid <- unix.Gettid()
		fds, err := recvFds(ctl[1], 1)
		got <- fdsResult{fds, err}
	}()
	victim := <-tid
	for range 20 { // SIGURG: the runtime's own, which it ignores
		time.Sleep(5 * time.Millisecond)
		if err := unix.Tgkill(unix.Getpid(), victim, unix.SIGURG); err != nil {
			t.Fatal(err)
		}
	}
	ours, err := passPairs(ctl[0], 1)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(ours)
	r := <-got
	if r.err != nil {
		t.Fatalf("recvFds after signals: %v", r.err)
	}
	defer closeAll(r.fds)
	if len(r.fds) != 1 {
		t.Fatalf("received %d descriptors, want 1", len(r.fds))
	}
}
