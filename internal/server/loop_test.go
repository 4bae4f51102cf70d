package server

import (
	"io"
	"log/slog"
	"testing"

	"golang.org/x/sys/unix"
)

// stop may run after close (the context's AfterFunc of Serve, on its own
// goroutine): it must not write to the eventfd's number, which another file
// may have by then.
func TestStopAfterClose(t *testing.T) {
	s, err := New(Config{RunDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	wake := s.loop.wake
	s.release()
	reused := -1
	for range 64 {
		fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if fd == wake {
			reused = fd
			break
		}
	}
	if reused < 0 {
		t.Fatalf("fd %d not reused", wake)
	}
	s.loop.stop()
	if s.loop.post(func() {}) {
		t.Error("post after close took work it will never run")
	}
	var v [8]byte
	if n, err := unix.Read(reused, v[:]); err == nil {
		t.Fatalf("stop wrote %d bytes to fd %d after close: another file's now", n, reused)
	}
}
