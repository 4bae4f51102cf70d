package server

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The system calls the loop makes for a connection or a request, all of
// which return at once, go through the raw wrappers in this file.
//
// Go's own wrappers enter the scheduler (entersyscall), and the first such
// call after the daemon has been idle wakes the runtime's sysmon thread on
// the other CPU, which then polls every 20 µs while the daemon is busy. On
// the 2-core test machine, taking the calls of a connect and a bump (a CRIU
// restore's request) off those wrappers halved the daemon's CPU time per
// request (105 to 46 µs) and its round trip (128 to 50 µs, median). Calls on
// rare paths (listening, diagnostics, shutting down) keep the usual wrappers.

func errnoErr(e unix.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

// rawSend writes without blocking and without SIGPIPE.
func rawSend(fd int, b []byte) (int, error) {
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(r), nil
	}
}

// rawRecv reads without blocking (the fd is non-blocking anyway).
func rawRecv(fd int, b []byte, flags int) (int, error) {
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			uintptr(flags|unix.MSG_DONTWAIT), 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(r), nil
	}
}

// rawRead is read(2) on a non-blocking fd, the result ignored (the wake-up
// eventfd is only drained).
func rawRead(fd int, b []byte) {
	unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
}

// epollPoll is epoll_wait without waiting.
func epollPoll(ep int, events []unix.EpollEvent) (int, error) {
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])),
			uintptr(len(events)), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(r), nil
	}
}

func epollCtl(ep, op, fd int, ev *unix.EpollEvent) error {
	_, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return errnoErr(errno)
}

// rawClose closes an fd the loop owns; close(2) of a socket does not block
// (no SO_LINGER is set), and an fd is closed even when it reports an error.
func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func rawShutdown(fd, how int) {
	unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
}

func getsockopt(fd, level, opt int, val unsafe.Pointer, size uintptr) error {
	n := uint32(size)
	_, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(val), uintptr(unsafe.Pointer(&n)), 0)
	return errnoErr(errno)
}

// peerCred is SO_PEERCRED: the peer's pid, uid and gid at connect.
func peerCred(fd int) (unix.Ucred, error) {
	var uc unix.Ucred
	err := getsockopt(fd, unix.SOL_SOCKET, unix.SO_PEERCRED, unsafe.Pointer(&uc), unsafe.Sizeof(uc))
	return uc, err
}

// fileID is what tells files apart, and namespaces by their /proc files.
type fileID struct{ dev, ino uint64 }

// pathID identifies the file at path; fdID, the file of fd.
func pathID(path string) (fileID, error) { return statx(unix.AT_FDCWD, path, 0) }

func fdID(fd int) (fileID, error) { return statx(fd, "", unix.AT_EMPTY_PATH) }

func statx(dirfd int, path string, flags int) (fileID, error) {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return fileID{}, err
	}
	var st unix.Statx_t
	_, _, errno := unix.RawSyscall6(unix.SYS_STATX, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(flags),
		unix.STATX_INO, uintptr(unsafe.Pointer(&st)), 0)
	if errno != 0 {
		return fileID{}, errno
	}
	return fileID{dev: unix.Mkdev(st.Dev_major, st.Dev_minor), ino: st.Ino}, nil
}

// rawRecvmsg reads without blocking, with control messages (the admin
// socket's senders' credentials), and flags (MSG_PEEK).
func rawRecvmsg(fd int, b, oob []byte, flags int) (n, oobn int, err error) {
	var iov unix.Iovec
	iov.Base = &b[0]
	iov.SetLen(len(b))
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.Iovlen = 1
	msg.Control = &oob[0]
	msg.SetControllen(len(oob))
	for {
		r, _, errno := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)),
			uintptr(flags|unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, 0, errno
		}
		return int(r), int(msg.Controllen), nil
	}
}

// ownNetNS is the daemon's own network namespace, which does not change.
var ownNetNS = sync.OnceValues(func() (fileID, error) { return pathID("/proc/self/ns/net") })
