package genid

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// trustRunDir refuses a run directory that another user could have made:
// a client would read that user's page and talk to that user's daemon. It
// must be a directory (not a link to one), owned by root or by this
// process's user, and writable by nobody else. Inside a user namespace,
// files of users it does not map (the host's root among them) show as the
// overflow uid: a run dir bind-mounted from the host into a container is
// one of those.
func trustRunDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("run dir: %w", &os.PathError{Op: "lstat", Path: dir, Err: err})
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("run dir %s is not a directory: %w", dir, ErrUntrusted)
	}
	euid := uint32(os.Geteuid())
	owner := st.Uid == 0 || st.Uid == euid || st.Uid == overflowUID() && inUserNS()
	if !owner {
		return fmt.Errorf("run dir %s belongs to uid %d, neither root nor this user (%d): %w", dir, st.Uid, euid, ErrUntrusted)
	}
	if st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
		return fmt.Errorf("run dir %s is writable by others (mode %o): %w", dir, st.Mode&0o7777, ErrUntrusted)
	}
	return nil
}

func overflowUID() uint32 {
	b, err := os.ReadFile("/proc/sys/kernel/overflowuid")
	if err != nil {
		return 65534
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 32)
	if err != nil {
		return 65534
	}
	return uint32(n)
}

// inUserNS tells whether this process is in a user namespace other than
// the initial one, whose uid map is the identity of every uid.
func inUserNS() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := bytes.Fields(b)
	return !(len(f) == 3 && string(f[0]) == "0" && string(f[1]) == "0" && string(f[2]) == "4294967295")
}
