package server

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// isAdmin's rule, for a daemon run by a user other than root (the real
// kernel's side of it, with the daemon as root: TestAdminSender).
func TestIsAdmin(t *testing.T) {
	const daemonUID, group = 1000, 4242
	member := &conn{peer: peer{uid: 1001, gid: 1001, groups: []uint32{7, group}}}
	other := &conn{peer: peer{uid: 1002, gid: 1002}}
	for _, tc := range []struct {
		name       string
		adminGroup int
		c          *conn
		from       sender
		want       bool
	}{
		{"no credentials, even root's connection", group, &conn{}, sender{uid: 0}, false},
		{"root", -1, other, sender{ok: true, uid: 0, gid: 1002}, true},
		{"the daemon's user", -1, other, sender{ok: true, uid: daemonUID, gid: 1002}, true},
		{"another user", -1, other, sender{ok: true, uid: 1002, gid: 1002}, false},
		{"the group's gid, no group configured", -1, other, sender{ok: true, uid: 1002, gid: group}, false},
		{"a member, no group configured", -1, member, sender{ok: true, uid: 1001, gid: 1001}, false},
		{"the group's gid", group, other, sender{ok: true, uid: 1002, gid: group}, true},
		{"the member that connected", group, member, sender{ok: true, uid: 1001, gid: 1001}, true},
		{"another user on a member's connection", group, member, sender{ok: true, uid: 1002, gid: 1002}, false},
		{"a user who connected as no member", group, other, sender{ok: true, uid: 1002, gid: 1002}, false},
	} {
		s := &Server{euid: daemonUID, cfg: Config{AdminGroup: tc.adminGroup}}
		if got := s.isAdmin(tc.c, tc.from); got != tc.want {
			t.Errorf("%s: admin %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The refusal names who may: root, the daemon's user unless it is root,
// and the admin group if there is one.
func TestAdminGroupText(t *testing.T) {
	for _, tc := range []struct {
		euid       uint32
		adminGroup int
		want       string
	}{
		{0, -1, ""},
		{0, 4242, ", or group 4242"},
		{1000, -1, ", uid 1000"},
		{1000, 4242, ", uid 1000, or group 4242"},
	} {
		s := &Server{euid: tc.euid, cfg: Config{AdminGroup: tc.adminGroup}}
		if got := s.adminGroupText(); got != tc.want {
			t.Errorf("euid %d, group %d: %q, want %q", tc.euid, tc.adminGroup, got, tc.want)
		}
	}
}

// parseSender takes the kernel's SCM_CREDENTIALS; without them, or with
// control data it cannot parse, the sender is nobody it can vouch for.
func TestParseSender(t *testing.T) {
	creds := unix.UnixCredentials(&unix.Ucred{Pid: 42, Uid: 1001, Gid: 1002})
	if s := parseSender(creds); s != (sender{ok: true, pid: 42, uid: 1001, gid: 1002}) {
		t.Errorf("credentials: %+v", s)
	}
	for name, oob := range map[string][]byte{
		"nothing":   nil,
		"truncated": creds[:len(creds)-8], // its header claims more than there is
	} {
		if s := parseSender(oob); s.ok {
			t.Errorf("%s: %+v", name, s)
		}
	}
	// Credentials at another level than SOL_SOCKET are not the kernel's.
	other := append([]byte(nil), creds...)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&other[0]))
	h.Level = unix.SOL_IP
	if s := parseSender(other); s.ok {
		t.Errorf("credentials at level SOL_IP taken: %+v", s)
	}
}

// No admin group is one value once the defaults are set: the zero value and
// any negative one (the rule above and the admin socket's mode test it).
func TestAdminGroupDefault(t *testing.T) {
	for _, tc := range []struct{ group, want int }{{0, noGroup}, {-1, noGroup}, {-7, noGroup}, {1, 1}, {4242, 4242}} {
		c := Config{AdminGroup: tc.group}
		c.setDefaults()
		if c.AdminGroup != tc.want {
			t.Errorf("AdminGroup %d: %d once defaults are set, want %d", tc.group, c.AdminGroup, tc.want)
		}
	}
}
