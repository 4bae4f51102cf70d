// Package page holds the pages a scope's generation is published in, each a
// 4096-byte file that any process can mmap read-only and check without a
// system call:
//
//   - the generation page: the u32 generation in native byte order at
//     offset 0, updated in place with one aligned atomic store (the layout
//     of the sysgenid proposal; AWS-LC reads it as /dev/sysgenid), and a
//     futex word that each bump wakes, so that a thread can sleep on the
//     page itself (futex.go);
//   - the VMClock page (vmclock.go): the same generation as the
//     vm_generation_counter of a struct vmclock_abi, under its seqlock (the
//     layout of Linux's /dev/vmclock0).
package page

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Size is the size of the page file.
const Size = 4096

// Mode is the permission of the page file: everyone reads, the daemon writes.
const Mode = 0o644

// ErrLocked means another daemon holds the page.
var ErrLocked = errors.New("page is locked by another daemon")

// Writer is the daemon's read-write mapping of the page.
type Writer struct {
	f *os.File

	mu  sync.RWMutex // Close waits for stores in flight
	mem []byte       // nil once closed
}

// CreateAt opens or creates the page name in the directory dirfd, takes an
// exclusive lock on it (one daemon per page) and maps it. An existing page
// keeps its value. The file is opened without following a symbolic link,
// and must be a regular file owned by this process's user: a link or a
// file planted in the directory is refused, never written to. path names
// the page in errors.
func CreateAt(dirfd int, name, path string) (*Writer, error) {
	f, mem, err := createAt(dirfd, name, path)
	if err != nil {
		return nil, err
	}
	return &Writer{f: f, mem: mem}, nil
}

// createAt opens, checks, locks and maps a page file for CreateAt and
// CreateVMClockAt.
func createAt(dirfd int, name, path string) (*os.File, []byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, Mode)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	fail := func(err error) (*os.File, []byte, error) {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail(errors.New("not a regular file"))
	}
	if int(st.Uid) != os.Geteuid() {
		return fail(fmt.Errorf("owned by uid %d, not by the daemon's %d", st.Uid, os.Geteuid()))
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fail(ErrLocked)
		}
		return fail(err)
	}
	// The umask must not make the page unreadable to other users.
	if err := unix.Fchmod(fd, Mode); err != nil {
		return fail(err)
	}
	if st.Size != Size {
		// Growing keeps the value at offset 0; a longer file is cut to one page.
		if err := unix.Ftruncate(fd, Size); err != nil {
			return fail(err)
		}
	}
	mem, err := unix.Mmap(fd, 0, Size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("mmap: %w", err))
	}
	return f, mem, nil
}

// Load returns the generation stored in the page.
func (w *Writer) Load() uint32 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.mem == nil {
		return 0
	}
	return load(w.mem)
}

// Store publishes gen with one aligned 4-byte store; readers of the mapping
// see it at once, and it survives a crash of the daemon. Then it wakes the
// threads sleeping on the page (Reader.Wait, futex.go). A closed writer
// stores nothing.
func (w *Writer) Store(gen uint32) { w.store(gen, true) }

// Set stores gen as Store does, and wakes no one: for a page that no
// other process can map (the daemon's floor, in its private state
// directory), a wake-up is a system call for nothing.
func (w *Writer) Set(gen uint32) { w.store(gen, false) }

func (w *Writer) store(gen uint32, wakeUp bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.mem == nil {
		return
	}
	word := (*uint32)(unsafe.Pointer(&w.mem[0]))
	atomic.StoreUint32(word, gen)
	if wakeUp {
		wake(word)
	}
}

// Close unmaps the page and drops the lock. The file keeps its value.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mem == nil {
		return nil
	}
	err := unix.Munmap(w.mem)
	w.mem = nil
	return errors.Join(err, w.f.Close())
}

// Reader is a read-only mapping of the page.
type Reader struct{ mem []byte }

// Open maps the page at path read-only.
func Open(path string) (*Reader, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < 4 {
		return nil, fmt.Errorf("%s: %d bytes, too short for a generation page", path, st.Size())
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, Size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	return &Reader{mem: mem}, nil
}

// Load returns the current generation: one atomic load, no system call.
func (r *Reader) Load() uint32 { return load(r.mem) }

// Close unmaps the page.
func (r *Reader) Close() error { return unix.Munmap(r.mem) }

func load(mem []byte) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&mem[0])))
}
