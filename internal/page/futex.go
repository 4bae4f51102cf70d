package page

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The generation at offset 0 is also a futex word. A futex of a shared file
// mapping is named by the file's page, not by an address, so the daemon's
// mapping and every reader's, in any process or container that maps the same
// file, name one futex: a bump's wake reaches a thread sleeping on the page
// with no socket, no registration and nothing for the daemon to keep.

// Operations and flags of futex(2) and futex_waitv(2) (linux/futex.h).
const (
	futexWait    = 0
	futexWake    = 1
	futexPrivate = 128 // FUTEX_PRIVATE_FLAG, FUTEX2_PRIVATE
	futex2Size32 = 2   // FUTEX2_SIZE_U32
)

// legacySlice bounds each FUTEX_WAIT on a kernel without futex_waitv (before
// Linux 5.16), where a cancelled context can only be noticed between waits.
const legacySlice = 50e6 // ns

// wake wakes every thread sleeping on the word at addr, in any process. It
// never blocks, so it takes the raw wrapper: the daemon's request path
// stays off the scheduler's system-call hooks, which wake Go's sysmon
// (internal/server/sys.go).
func wake(addr *uint32) {
	unix.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWake, math.MaxInt32, 0, 0, 0)
}

// futexWaitv is struct futex_waitv.
type futexWaitv struct {
	val      uint64
	uaddr    uint64
	flags    uint32
	reserved uint32
}

// waitv is set to false the first time futex_waitv turns out missing.
var waitv atomic.Bool

func init() { waitv.Store(true) }

// Wait blocks until the page's generation differs from seen and returns it.
// It sleeps on the page itself: the daemon wakes the page with every bump.
// It gives up with ctx's error when ctx ends. Each waiting call holds an OS
// thread while it sleeps.
func (r *Reader) Wait(ctx context.Context, seen uint32) (uint32, error) {
	word := (*uint32)(unsafe.Pointer(&r.mem[0]))
	// The context's end is a second, private futex, waited on beside the
	// page's: setting it before the wake leaves no moment where an end
	// that comes just before the wait is missed.
	cancel := new(uint32)
	stop := context.AfterFunc(ctx, func() {
		atomic.StoreUint32(cancel, 1)
		unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(cancel)), futexWake|futexPrivate, math.MaxInt32, 0, 0, 0)
	})
	defer stop()
	for {
		if g := atomic.LoadUint32(word); g != seen {
			return g, nil
		}
		if err := ctx.Err(); err != nil {
			return seen, err
		}
		var errno unix.Errno
		if waitv.Load() {
			w := [2]futexWaitv{
				{val: uint64(seen), uaddr: uint64(uintptr(unsafe.Pointer(word))), flags: futex2Size32},
				{val: 0, uaddr: uint64(uintptr(unsafe.Pointer(cancel))), flags: futex2Size32 | futexPrivate},
			}
			_, _, errno = unix.Syscall6(unix.SYS_FUTEX_WAITV, uintptr(unsafe.Pointer(&w[0])), 2, 0, 0, 0, 0)
			runtime.KeepAlive(&w)
			runtime.KeepAlive(cancel)
			if errno == unix.ENOSYS {
				waitv.Store(false)
				continue
			}
		} else {
			ts := unix.NsecToTimespec(legacySlice)
			_, _, errno = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(word)), futexWait, uintptr(seen), uintptr(unsafe.Pointer(&ts)), 0, 0)
			if errno == unix.ETIMEDOUT {
				errno = 0
			}
		}
		switch errno {
		case 0, unix.EAGAIN, unix.EINTR:
			// Woken, the word had moved already, or a signal (a CRIU
			// restore among them): look again.
		default:
			return seen, fmt.Errorf("wait on the page: futex: %w", errno)
		}
	}
}
