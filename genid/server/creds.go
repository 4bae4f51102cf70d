package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/genid-project/genid/genid"
)

// peer is what the kernel tells about the process at the other end: its
// pid, and its effective uid and gid when it connected.
type peer struct {
	pid      int
	uid, gid uint32
}

func peerOf(fd int) (peer, error) {
	uc, err := peerCred(fd)
	if err != nil {
		return peer{}, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	return peer{pid: int(uc.Pid), uid: uc.Uid, gid: uc.Gid}, nil
}

// checkBump allows a bump only to a peer holding CAP_CHECKPOINT_RESTORE or
// CAP_SYS_ADMIN in the daemon's own user namespace, and still running with
// the effective uid and gid it connected with. Root of a nested user
// namespace has those capabilities only there, and is refused.
//
// The capabilities can only be read as they are now, but the connection is
// the connecting process's as it was then: one that connected unprivileged,
// forked, and exec'd a set-user-ID program would otherwise lend that
// program's capabilities to its child, which kept the socket. Such an exec
// changes the effective IDs, which the kernel recorded at connect.
func checkBump(fd int, p peer) error {
	if p.pid <= 0 {
		return fmt.Errorf("peer's pid is not visible from the daemon: %w", genid.ErrPermission)
	}
	// A pidfd pins the peer, so a pid reused after the peer exited cannot
	// lend its capabilities: the process is checked to be alive afterwards.
	pidfd, err := peerPidfd(fd)
	if err != nil {
		pidfd = -1
	}
	if pidfd >= 0 {
		defer rawClose(pidfd)
	}

	same, err := sameUserNS(p.pid)
	if err != nil {
		return fmt.Errorf("peer %d: %v: %w", p.pid, err, genid.ErrPermission)
	}
	if !same {
		return fmt.Errorf("peer %d is in another user namespace: %w", p.pid, genid.ErrPermission)
	}
	// One capget(2): cheaper than parsing /proc/PID/status, which a bump
	// would otherwise pay on every call (effectiveIDs reads it only on
	// kernels before 6.13).
	caps, err := cap.GetPID(p.pid)
	if err != nil {
		return fmt.Errorf("capabilities of peer %d: %v: %w", p.pid, err, genid.ErrPermission)
	}
	cr, _ := caps.GetFlag(cap.Effective, cap.CHECKPOINT_RESTORE)
	sa, _ := caps.GetFlag(cap.Effective, cap.SYS_ADMIN)
	if !cr && !sa {
		return fmt.Errorf("peer %d (uid %d): %w", p.pid, p.uid, genid.ErrPermission)
	}
	euid, egid, err := effectiveIDs(pidfd, p.pid)
	if err != nil {
		return fmt.Errorf("credentials of peer %d: %v: %w", p.pid, err, genid.ErrPermission)
	}
	if euid != p.uid || egid != p.gid {
		return fmt.Errorf("peer %d runs as uid %d gid %d, but connected as uid %d gid %d (reconnect): %w",
			p.pid, euid, egid, p.uid, p.gid, genid.ErrPermission)
	}
	if pidfd >= 0 {
		if !pidfdAlive(pidfd) {
			return fmt.Errorf("peer %d exited during the check: %w", p.pid, genid.ErrPermission)
		}
	}
	return nil
}

// The daemon's own namespaces, which do not change.
var (
	ownUserNS = sync.OnceValues(func() (string, error) { return readlink("/proc/self/ns/user") })
	ownNetNS  = sync.OnceValues(func() (fileID, error) { return pathID("/proc/self/ns/net") })
)

func sameUserNS(pid int) (bool, error) {
	self, err := ownUserNS()
	if err != nil {
		return false, err
	}
	// "user:[INODE]": the inode number tells live namespaces apart.
	other, err := readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, errors.New("process is gone")
		}
		return false, err
	}
	return self == other, nil
}

// effectiveIDs returns the effective uid and gid of the peer: from its pidfd
// where the kernel tells them (PIDFD_GET_INFO, Linux 6.13), else from
// /proc/PID/status.
func effectiveIDs(pidfd, pid int) (uid, gid uint32, err error) {
	if pidfd >= 0 {
		if info, err := pidfdInfo(pidfd, unix.PIDFD_INFO_CREDS); err == nil && info.Mask&unix.PIDFD_INFO_CREDS != 0 {
			return info.Euid, info.Egid, nil
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	return statusIDs(b)
}

// statusIDs reads the effective uid and gid from a /proc/PID/status:
// "Uid:\tREAL\tEFFECTIVE\tSAVED\tFS", the same for "Gid:".
func statusIDs(status []byte) (uid, gid uint32, err error) {
	var found int
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		key, rest, _ := bytes.Cut(sc.Bytes(), []byte{':'})
		var dst *uint32
		switch string(key) {
		case "Uid":
			dst = &uid
		case "Gid":
			dst = &gid
		default:
			continue
		}
		f := bytes.Fields(rest)
		if len(f) < 2 {
			return 0, 0, fmt.Errorf("status: %s: %q", key, rest)
		}
		v, err := strconv.ParseUint(string(f[1]), 10, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("status: %s: %w", key, err)
		}
		*dst = uint32(v)
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("status: no Uid or Gid line")
	}
	return uid, gid, nil
}
