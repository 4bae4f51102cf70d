package server

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openDir creates (if need be) and opens the directory name in dirfd
// without following a symbolic link, and checks that it is this process's
// user's and that nobody else may write to it: the daemon creates its files
// there and trusts what it finds.
func openDir(dirfd int, name string, mode uint32) (int, error) {
	if err := unix.Mkdirat(dirfd, name, mode); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if int(st.Uid) != os.Geteuid() {
		unix.Close(fd)
		return -1, fmt.Errorf("owned by uid %d, not by the daemon's %d", st.Uid, os.Geteuid())
	}
	// The mode of a directory made now ignores the umask; one found is
	// set as it should be (a crash may have left it otherwise).
	if err := unix.Fchmod(fd, mode); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// listen binds a non-blocking unix stream socket at path with the given
// mode and group (-1: the daemon's), and listens. passcred makes the
// kernel attach each sender's credentials to what it sends (peer.go); an
// accepted connection inherits it.
//
// The path is bound a moment before it listens, and a client connecting
// in between is refused: clients retry for a while (PROTOCOL.md).
func listen(path string, mode uint32, gid int, passcred bool) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	fail := func(err error, bound bool) (int, error) {
		unix.Close(fd)
		if bound {
			os.Remove(path)
		}
		return -1, err
	}
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return fail(fmt.Errorf("socket path %s is %d bytes, longer than a unix socket's %d", path, len(path), len(unix.RawSockaddrUnix{}.Path)-1), false)
	}
	if passcred {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
			return fail(err, false)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fail(err, false)
	}
	if err := unix.Fchownat(unix.AT_FDCWD, path, -1, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail(err, true)
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, path, mode, 0); err != nil {
		return fail(err, true)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil { // the kernel caps it at net.core.somaxconn
		return fail(err, true)
	}
	return fd, nil
}
