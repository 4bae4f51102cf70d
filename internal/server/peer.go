package server

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peer is what the kernel recorded about the process that connected, when
// it connected (SO_PEERCRED): its pid, effective uid and gid; and, on the
// admin socket, its supplementary groups (SO_PEERGROUPS). A member's limits
// are counted against its uid.
type peer struct {
	pid      int
	uid, gid uint32
	groups   []uint32
}

func peerOf(fd int) (peer, error) {
	uc, err := peerCred(fd)
	if err != nil {
		return peer{}, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	return peer{pid: int(uc.Pid), uid: uc.Uid, gid: uc.Gid}, nil
}

// peerGroups is SO_PEERGROUPS: the supplementary groups of the process that
// connected, as they were then.
func peerGroups(fd int) ([]uint32, error) {
	b, err := peerGroupsBytes(fd, make([]byte, 256))
	if err == unix.ERANGE {
		// More groups than most users have: room for as many as any may.
		b, err = peerGroupsBytes(fd, make([]byte, ngroupsMaxBytes))
	}
	if err != nil {
		return nil, err
	}
	groups := make([]uint32, len(b)/4)
	for i := range groups {
		groups[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return groups, nil
}

// ngroupsMaxBytes holds the most supplementary groups a process may have
// (NGROUPS_MAX, 65536), as SO_PEERGROUPS gives them: 4 bytes each.
const ngroupsMaxBytes = 65536 * 4

// peerGroupsBytes reads SO_PEERGROUPS into buf (ERANGE: it is too short).
func peerGroupsBytes(fd int, buf []byte) ([]byte, error) {
	size := uint32(len(buf))
	_, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return nil, errno
	}
	return buf[:size], nil
}

// sender is who sent the bytes of one read on the admin socket, as the
// kernel attests it for each message (SO_PASSCRED, set on the listening
// socket and so on every connection it accepts): the sending process's
// pid, and its real uid and gid at the time it sent. A process that merely
// holds a socket someone else opened sends with its own identity, so
// neither a set-user-ID program nor one with file capabilities can lend
// its privilege through an inherited socket; and the kernel never returns
// the bytes of two senders in one read.
type sender struct {
	ok       bool
	pid      int32
	uid, gid uint32
}

func parseSender(oob []byte) sender {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return sender{}
	}
	var s sender
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case unix.SCM_CREDENTIALS:
			if uc, err := unix.ParseUnixCredentials(&m); err == nil {
				s = sender{ok: true, pid: uc.Pid, uid: uc.Uid, gid: uc.Gid}
			}
		case unix.SCM_RIGHTS:
			// Nobody has reason to send the daemon fds: close them.
			if fds, err := unix.ParseUnixRights(&m); err == nil {
				for _, fd := range fds {
					rawClose(fd)
				}
			}
		}
	}
	return s
}

// isAdmin tells whether a request on the admin socket came from an
// administrator: root, the user the daemon runs as, or, with an admin group
// configured, a sender whose real gid is that group or who is the user
// that connected while a member of it.
func (s *Server) isAdmin(c *conn, from sender) bool {
	switch {
	case !from.ok:
		return false
	case from.uid == 0 || from.uid == s.euid:
		return true
	case s.cfg.AdminGroup == noGroup:
		return false
	case from.gid == uint32(s.cfg.AdminGroup):
		return true
	default:
		return from.uid == c.peer.uid && slices.Contains(c.peer.groups, uint32(s.cfg.AdminGroup))
	}
}

// adminGroupText completes "the sender is not an administrator (root...".
func (s *Server) adminGroupText() string {
	var b strings.Builder
	if s.euid != 0 {
		fmt.Fprintf(&b, ", uid %d", s.euid)
	}
	if s.cfg.AdminGroup != noGroup {
		fmt.Fprintf(&b, ", or group %d", s.cfg.AdminGroup)
	}
	return b.String()
}
