package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// openDir creates (if need be) and opens the directory name in dirfd
// without following a symbolic link, and checks that it is this process's
// user's and that nobody else may write to it: the daemon creates its files
// there and trusts what it finds.
func openDir(dirfd int, name string, mode uint32) (int, error) {
	if err := unix.Mkdirat(dirfd, name, mode); err != nil && !errors.Is(err, unix.EEXIST) {
		return noFD, err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return noFD, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return noFD, err
	}
	if int(st.Uid) != os.Geteuid() {
		unix.Close(fd)
		return noFD, fmt.Errorf("owned by uid %d, not by the daemon's %d", st.Uid, os.Geteuid())
	}
	// The mode of a directory made now ignores the umask; one found is
	// set as it should be (a crash may have left it otherwise).
	if err := unix.Fchmod(fd, mode); err != nil {
		unix.Close(fd)
		return noFD, err
	}
	return fd, nil
}

// noFD is a descriptor not (yet) open: the daemon's fds are noFD until
// they are opened, and a scope's pidfd stays noFD if it has no process.
// They are compared with it, never ordered against 0: a daemon started
// with its stdin closed has a real fd 0.
const noFD = -1

// closeFD closes fd unless it is noFD.
func closeFD(fd int) {
	if fd != noFD {
		unix.Close(fd)
	}
}

// listen binds a non-blocking unix stream socket at path with the given
// mode and group (noGroup: the daemon's), and listens. passcred makes the
// kernel attach each sender's credentials to what it sends (peer.go); an
// accepted connection inherits it.
//
// The path is bound a moment before it listens, and a client connecting
// in between is refused: clients retry for a while (PROTOCOL.md).
func listen(path string, mode uint32, gid int, passcred bool) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return noFD, err
	}
	fail := func(err error, bound bool) (int, error) {
		unix.Close(fd)
		if bound {
			os.Remove(path)
		}
		return noFD, err
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

// adopt takes a listening socket that a service manager made for the
// daemon (systemd's socket activation) at name in the run dir (dirfd),
// whose path is path. It is served only if it is what listen would have
// made: a listening unix stream socket bound to path, whose file there is
// that very socket (not one put in its place) and is the daemon's user's.
// Then the file gets the mode and group the daemon was told (noGroup: the
// daemon's), whatever the socket unit said. A socket to be read with its
// senders' credentials (passcred) must have been made with SO_PASSCRED.
func adopt(fd, dirfd int, name, path string, mode uint32, gid int, passcred bool) error {
	for _, o := range []struct {
		opt, want int
		what      string
	}{
		{unix.SO_DOMAIN, unix.AF_UNIX, "a unix socket"},
		{unix.SO_TYPE, unix.SOCK_STREAM, "a stream socket"},
		{unix.SO_ACCEPTCONN, 1, "listening"},
	} {
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, o.opt); err != nil || v != o.want {
			return fmt.Errorf("the socket passed for %s is not %s", path, o.what)
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return err
	}
	if u, ok := sa.(*unix.SockaddrUnix); !ok || u.Name != path {
		return fmt.Errorf("the socket passed for %s is bound to %v: the socket unit's ListenStream= and the daemon's run dir differ", path, sa)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("%s is not a socket owned by the daemon's uid %d", path, os.Geteuid())
	}
	bound, err := boundFile(fd)
	if err != nil {
		return fmt.Errorf("the socket passed for %s: its file: %w", path, err)
	}
	// The kernel reports the inode's low 32 bits only.
	if bound != (fileID{dev: st.Dev, ino: uint64(uint32(st.Ino))}) {
		return fmt.Errorf("%s is not the file of the socket passed for it (replaced since it was bound?)", path)
	}
	if gid == noGroup {
		gid = os.Getegid()
	}
	if st.Gid != uint32(gid) {
		if err := unix.Fchownat(dirfd, name, -1, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("%s: group %d: %w", path, gid, err)
		}
	}
	if st.Mode&0o7777 != mode {
		if err := unix.Fchmodat(dirfd, name, mode, 0); err != nil {
			return fmt.Errorf("%s: mode %#o: %w", path, mode, err)
		}
	}
	// A connection takes SO_PASSCRED from the listening socket when it
	// connects (Linux 6.16 on; before, when it was accepted), and one made
	// before the daemon started would carry no credentials: the socket
	// must have it from its start.
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED); err != nil {
		return err
	} else if passcred && v == 0 {
		return fmt.Errorf("the socket passed for %s does not pass credentials: its socket unit needs PassCredentials=yes", path)
	} else if !passcred && v != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 0); err != nil {
			return err
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	unix.CloseOnExec(fd)
	return nil
}

// sock_diag of AF_UNIX (linux/unix_diag.h): the file a socket is bound to.
const (
	udiagShowVFS = 0x2
	unixDiagVFS  = 1
)

// boundFile returns the file (device and inode, as stat reports them) to
// which the unix socket fd is bound, as the kernel knows it: the socket
// itself has no path to that file.
func boundFile(fd int) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, err
	}
	nl, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	if err != nil {
		return fileID{}, err
	}
	defer nl.Close()
	// struct unix_diag_req, for this one socket by its inode
	req := make([]byte, 24)
	req[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[8:], uint32(st.Ino))
	binary.NativeEndian.PutUint32(req[12:], udiagShowVFS)
	binary.NativeEndian.PutUint32(req[16:], ^uint32(0)) // no cookie
	binary.NativeEndian.PutUint32(req[20:], ^uint32(0))
	msgs, err := nl.Execute(netlink.Message{
		Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request},
		Data:   req,
	})
	if err != nil {
		return fileID{}, err
	}
	for _, m := range msgs {
		if len(m.Data) < 16 || binary.NativeEndian.Uint32(m.Data[4:]) != uint32(st.Ino) {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[16:])
		if err != nil {
			return fileID{}, err
		}
		for ad.Next() {
			// struct unix_diag_vfs: the inode, then the device as the
			// kernel encodes it (major << 20 | minor)
			if b := ad.Bytes(); ad.Type() == unixDiagVFS && len(b) >= 8 {
				dev := binary.NativeEndian.Uint32(b[4:])
				return fileID{dev: unix.Mkdev(dev>>20, dev&(1<<20-1)), ino: uint64(binary.NativeEndian.Uint32(b))}, nil
			}
		}
	}
	return fileID{}, errors.New("the kernel reports no file for it (not bound to a path)")
}
