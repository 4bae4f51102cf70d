package server

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/genid-project/genid/genid"
)

// peer is what the kernel tells about the process at the other end.
type peer struct {
	pid int
	uid uint32
}

func peerOf(fd int) (peer, error) {
	uc, err := peerCred(fd)
	if err != nil {
		return peer{}, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	return peer{pid: int(uc.Pid), uid: uc.Uid}, nil
}

// checkBump allows a bump only to a peer holding CAP_CHECKPOINT_RESTORE or
// CAP_SYS_ADMIN in the daemon's own user namespace. Root of a nested user
// namespace has those capabilities only there, and is refused.
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
	// would otherwise pay on every call.
	caps, err := cap.GetPID(p.pid)
	if err != nil {
		return fmt.Errorf("capabilities of peer %d: %v: %w", p.pid, err, genid.ErrPermission)
	}
	cr, _ := caps.GetFlag(cap.Effective, cap.CHECKPOINT_RESTORE)
	sa, _ := caps.GetFlag(cap.Effective, cap.SYS_ADMIN)
	if !cr && !sa {
		return fmt.Errorf("peer %d (uid %d): %w", p.pid, p.uid, genid.ErrPermission)
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
