package server

import (
	"testing"

	"golang.org/x/sys/unix"
)

// A connection pauses with more than pauseBacklog unsent, not at exactly
// pauseBacklog: its client's socket is full, so the flush that backlogged
// tries first sends nothing, and what waits is what decides.
func TestBacklogged(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	for _, size := range []int{pauseBacklog, 1} { // until not even a byte fits
		for {
			if _, err := rawSend(fds[0], make([]byte, size)); err == unix.EAGAIN {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		unsent int
		want   bool
	}{{0, false}, {pauseBacklog, false}, {pauseBacklog + 1, true}} {
		c := &conn{fd: fds[0], out: make([]byte, tc.unsent)}
		if got := c.backlogged(); got != tc.want || len(c.out) != tc.unsent {
			t.Errorf("%d bytes unsent to a full socket: backlogged %v with %d left, want %v with all of them", tc.unsent, got, len(c.out), tc.want)
		}
	}
}
