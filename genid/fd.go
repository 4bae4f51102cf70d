package genid

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Fd returns a file descriptor that is readable (EPOLLIN, level-triggered)
// while the watcher is outdated: from the daemon's event of a new generation
// until the watcher acks it. An event loop puts it beside its other
// descriptors in epoll (or poll, select) and, when it is readable, takes
// the generation with TryWait, rebuilds, and acks with AckQuiet: none of
// them blocks. Reading the descriptor is not needed, nor meant: it is
// an eventfd that the watcher sets and clears. It stays valid until Close,
// which closes it (take it out of epoll first).
//
// The watcher keeps its registration up by itself: after a daemon restart
// it registers with the new daemon, and the descriptor turns readable if
// the generation changed meanwhile. Calling Fd again returns the same
// descriptor.
func (w *Watcher) Fd() (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return -1, fmt.Errorf("fd: %w", ErrClosed)
	}
	if w.fd != nil {
		return w.fd.efd, nil
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("fd: eventfd: %w", err)
	}
	w.fd = &readyFd{efd: efd}
	w.fd.set(w.outdatedLocked())
	return efd, nil
}

// readyFd is a Watcher's Fd: an eventfd whose counter is non-zero exactly
// while the watcher is outdated. Its methods are called under the
// Watcher's lock, and do nothing on a nil readyFd (no Fd asked for, or
// closed).
type readyFd struct {
	efd   int
	ready bool
}

// set makes the descriptor readable, or not.
func (r *readyFd) set(ready bool) {
	if r == nil || ready == r.ready {
		return
	}
	var b [8]byte
	if ready {
		b[0] = 1 // a counter of 1, in any byte order
		unix.Write(r.efd, b[:])
	} else {
		unix.Read(r.efd, b[:]) // zeroes the counter
	}
	r.ready = ready
}

func (r *readyFd) close() error {
	if r == nil {
		return nil
	}
	if err := unix.Close(r.efd); err != nil {
		return fmt.Errorf("close fd: %w", err)
	}
	return nil
}
