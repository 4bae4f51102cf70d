package server

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// effectiveIDs tells this process's effective IDs both ways: from a pidfd
// (PIDFD_GET_INFO) and from /proc/PID/status, the fallback of older kernels.
func TestEffectiveIDs(t *testing.T) {
	pid := os.Getpid()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	want := [2]uint32{uint32(os.Geteuid()), uint32(os.Getegid())}
	for name, fd := range map[string]int{"pidfd": pidfd, "status": -1} {
		uid, gid, err := effectiveIDs(fd, pid)
		if err != nil || [2]uint32{uid, gid} != want {
			t.Errorf("%s: effectiveIDs = %d, %d, %v; want %d, %d", name, uid, gid, err, want[0], want[1])
		}
	}
	if _, err := pidfdInfo(pidfd, unix.PIDFD_INFO_CREDS); err != nil {
		t.Logf("PIDFD_GET_INFO: %v: the status file answered", err)
	}
}

func TestStatusIDs(t *testing.T) {
	// A set-user-ID root program run by uid 1000: real 1000, effective 0.
	status := "Name:\tpasswd\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\nGroups:\t1000\n"
	uid, gid, err := statusIDs([]byte(status))
	if err != nil || uid != 0 || gid != 1000 {
		t.Fatalf("statusIDs = %d, %d, %v; want 0, 1000", uid, gid, err)
	}
	for _, bad := range []string{"Name:\tx\n", "Uid:\t1000\nGid:\t1 1\n", "Uid:\t1 x\nGid:\t1 1\n", "Uid:\t1 4294967296\nGid:\t1 1\n"} {
		if _, _, err := statusIDs([]byte(bad)); err == nil {
			t.Errorf("statusIDs(%q): no error", bad)
		}
	}
}
