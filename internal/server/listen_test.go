package server_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/wire"
)

// managerSocket binds and listens on path as a service manager does for
// socket activation (systemd: blocking; SO_PASSCRED with PassCredentials=
// yes), and returns the manager's own fd; the test closes it at its end.
func managerSocket(t *testing.T, path string, mode uint32, passcred bool) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if passcred {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	return fd
}

// pass is what a manager passes the daemon: a copy of its fd, which the
// daemon owns.
func pass(t *testing.T, fd int) int {
	t.Helper()
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func closed(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == unix.EBADF
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

// tmpfsDir is a new directory on a tmpfs, as a service manager's run dir
// (/run) is: the daemon checks that a passed socket is bound to the file
// it finds by the file's device, and a tmpfs's has a minor number (the
// disk of the test's own temporary directory may have none).
func tmpfsDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "genid-test-")
	if err != nil {
		t.Fatalf("a directory on a tmpfs: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// A daemon started by socket activation serves the sockets it is passed:
// requests sent before it started are answered by it (on the admin
// socket, judged on the credentials they were sent with), the admin
// socket gets the daemon's mode, and the sockets' files stay when it
// stops, for the next daemon, which resumes the generation.
func TestPassedSockets(t *testing.T) {
	dir := tmpfsDir(t)
	sock, admin := filepath.Join(dir, genid.SocketFile), filepath.Join(dir, genid.AdminSocketFile)
	hostfd := managerSocket(t, sock, 0o666, false)
	adminfd := managerSocket(t, admin, 0o644, true)

	// A bump and a get, queued while no daemon runs.
	ac, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: admin, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	send(t, ac, wire.OpBump, 1, named("", wire.Bump{Min: 7, Reason: "queued"}.Encode()))
	hc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	send(t, hc, wire.OpGet, 1, nil)

	d := start(t, dir, server.Config{Listeners: map[string]int{genid.SocketFile: pass(t, hostfd), genid.AdminSocketFile: pass(t, adminfd)}})
	if f := recv(t, ac); f.Status != wire.StatusOK || string(f.Payload) != string(wire.U32(7)) {
		t.Fatalf("bump queued on the passed admin socket: %v %q, want 7", f.Status, f.Payload)
	}
	if f := recv(t, hc); f.Status != wire.StatusOK {
		t.Fatalf("get queued on the passed socket: %v %q", f.Status, f.Payload)
	}
	if m := mode(t, admin); m.Perm() != 0o600 {
		t.Fatalf("passed admin socket's mode %v, want the daemon's 0600", m)
	}
	if v, err := unix.GetsockoptInt(adminfd, unix.SOL_SOCKET, unix.SO_PASSCRED); err != nil || v != 1 {
		t.Fatalf("SO_PASSCRED on the passed admin socket: %d %v", v, err)
	}
	d.alive(t)
	d.stop()
	for _, p := range []string{sock, admin} {
		if m := mode(t, p); m.Type() != os.ModeSocket {
			t.Fatalf("%s after the daemon stopped: %v, want the manager's socket left", p, m)
		}
	}
	// Between two daemons, a client's connection waits in the manager's
	// socket, and the next daemon answers it from the same generation.
	hc2, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer hc2.Close()
	send(t, hc2, wire.OpGet, 1, nil)
	start(t, dir, server.Config{Listeners: map[string]int{genid.SocketFile: pass(t, hostfd), genid.AdminSocketFile: pass(t, adminfd)}})
	if f := recv(t, hc2); f.Status != wire.StatusOK || string(f.Payload) != string(wire.U32(7)) {
		t.Fatalf("get across a restart: %v %q, want 7", f.Status, f.Payload)
	}
}

// With one socket passed, the daemon binds the other itself, and removes
// only that one when it stops.
func TestOnePassedSocket(t *testing.T) {
	dir := t.TempDir()
	sock, admin := filepath.Join(dir, genid.SocketFile), filepath.Join(dir, genid.AdminSocketFile)
	hostfd := managerSocket(t, sock, 0o666, false)
	d := start(t, dir, server.Config{Listeners: map[string]int{genid.SocketFile: pass(t, hostfd)}})
	d.alive(t)
	c := d.dialAdmin(t)
	send(t, c, wire.OpGet, 1, named("", nil))
	if f := recv(t, c); f.Status != wire.StatusOK {
		t.Fatalf("the daemon's own admin socket: %v %q", f.Status, f.Payload)
	}
	d.stop()
	if _, err := os.Lstat(admin); !os.IsNotExist(err) {
		t.Fatalf("the daemon's own admin socket after it stopped: %v, want removed", err)
	}
	if m := mode(t, sock); m.Type() != os.ModeSocket {
		t.Fatalf("the passed socket after the daemon stopped: %v, want left", m)
	}
}

// A passed socket that is not what the daemon would have made is refused,
// and the daemon does not start; every fd passed is closed.
func TestPassedSocketsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		// make returns the fds to pass, by file, after setting dir up.
		make func(t *testing.T, dir string) map[string]int
		want string
	}{
		{"another path", func(t *testing.T, dir string) map[string]int {
			fd := managerSocket(t, filepath.Join(dir, "other.sock"), 0o666, false)
			return map[string]int{genid.SocketFile: pass(t, fd)}
		}, "ListenStream="},
		{"admin for host", func(t *testing.T, dir string) map[string]int {
			fd := managerSocket(t, filepath.Join(dir, genid.SocketFile), 0o666, false)
			return map[string]int{genid.AdminSocketFile: pass(t, fd), genid.SocketFile: pass(t, fd)}
		}, "ListenStream="},
		{"not listening", func(t *testing.T, dir string) map[string]int {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(dir, genid.SocketFile)}); err != nil {
				t.Fatal(err)
			}
			return map[string]int{genid.SocketFile: fd}
		}, "not listening"},
		{"datagram", func(t *testing.T, dir string) map[string]int {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			return map[string]int{genid.AdminSocketFile: fd}
		}, "not a stream socket"},
		{"not unix", func(t *testing.T, dir string) map[string]int {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			return map[string]int{genid.SocketFile: fd}
		}, "not a unix socket"},
		{"file replaced", func(t *testing.T, dir string) map[string]int {
			// The passed socket's file was unlinked and another socket
			// bound in its place: its path is still the socket's name.
			p := filepath.Join(dir, genid.SocketFile)
			fd := managerSocket(t, p, 0o666, false)
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			managerSocket(t, p, 0o666, false)
			return map[string]int{genid.SocketFile: pass(t, fd)}
		}, "not the file of the socket"},
		{"file of another user", func(t *testing.T, dir string) map[string]int {
			p := filepath.Join(dir, genid.SocketFile)
			fd := managerSocket(t, p, 0o666, false)
			if err := os.Lchown(p, 65534, -1); err != nil {
				t.Fatal(err)
			}
			return map[string]int{genid.SocketFile: pass(t, fd)}
		}, "not a socket owned by"},
		{"admin socket without credentials", func(t *testing.T, dir string) map[string]int {
			fd := managerSocket(t, filepath.Join(dir, genid.AdminSocketFile), 0o600, false)
			return map[string]int{genid.AdminSocketFile: pass(t, fd)}
		}, "PassCredentials=yes"},
		{"unknown file", func(t *testing.T, dir string) map[string]int {
			fd := managerSocket(t, filepath.Join(dir, "x.sock"), 0o666, false)
			return map[string]int{"x.sock": pass(t, fd)}
		}, "takes genid.sock and admin.sock only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "file of another user" && os.Geteuid() != 0 {
				t.Fatal("needs root: it gives the socket's file to another user")
			}
			dir := t.TempDir()
			fds := tc.make(t, dir)
			_, err := server.New(server.Config{RunDir: dir, Listeners: fds, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error saying %q", err, tc.want)
			}
			for file, fd := range fds {
				if !closed(fd) {
					t.Errorf("the fd passed for %s is still open after New failed", file)
					unix.Close(fd)
				}
			}
		})
	}
}

// On a passed admin socket as on the daemon's own, each request is judged
// on its sender: a process holding a socket root connected is no
// administrator.
func TestPassedAdminJudgedPerSender(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the child connects as root, then gives it up")
	}
	dir := t.TempDir()
	adminfd := managerSocket(t, filepath.Join(dir, genid.AdminSocketFile), 0o600, true)
	d := start(t, dir, server.Config{Listeners: map[string]int{genid.AdminSocketFile: pass(t, adminfd)}})
	cmd := exec.Command(os.Args[0], "-test.run=^TestAdminJudgedPerSender$")
	cmd.Env = append(os.Environ(), adminChildEnv+"="+d.AdminSocketPath())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("unprivileged sender: %v", err)
	}
	if want := strings.Repeat(fmt.Sprintf("%d\n", wire.StatusPermission), 4); string(out) != want {
		t.Fatalf("query-peer, bump, history and metrics from nobody on root's passed socket: statuses %q, want permission (%d) for each", out, wire.StatusPermission)
	}
	if g := d.status(t).Generation; g != 0 {
		t.Fatalf("the refused bump moved the generation to %d", g)
	}
}

// A passed socket's file gets the daemon's group and mode whatever its
// maker gave it (the admin group's, or the daemon's own), and each socket
// passes credentials as the daemon's own would: the admin socket only.
// The daemon's copies are closed on exec.
func TestPassedSocketsSettings(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: it gives the sockets' files other groups")
	}
	for _, tc := range []struct {
		name       string
		adminGroup int
		wantGroup  int
		wantMode   os.FileMode
	}{
		{"admin group", 65534, 65534, 0o660},
		{"root only", 0, os.Getegid(), 0o600}, // Config's 0: none
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sock, admin := filepath.Join(dir, genid.SocketFile), filepath.Join(dir, genid.AdminSocketFile)
			hostfd := managerSocket(t, sock, 0o600, true)
			adminfd := managerSocket(t, admin, 0o666, true)
			for _, p := range []string{sock, admin} {
				if err := os.Lchown(p, -1, 1234); err != nil {
					t.Fatal(err)
				}
			}
			// Copies without close-on-exec, as a manager may pass them.
			h, err := unix.Dup(hostfd)
			if err != nil {
				t.Fatal(err)
			}
			a, err := unix.Dup(adminfd)
			if err != nil {
				t.Fatal(err)
			}
			start(t, dir, server.Config{AdminGroup: tc.adminGroup, Listeners: map[string]int{genid.SocketFile: h, genid.AdminSocketFile: a}})
			var st unix.Stat_t
			for p, want := range map[string]struct {
				gid  int
				mode os.FileMode
			}{sock: {os.Getegid(), 0o666}, admin: {tc.wantGroup, tc.wantMode}} {
				if err := unix.Lstat(p, &st); err != nil {
					t.Fatal(err)
				}
				if int(st.Uid) != os.Geteuid() || int(st.Gid) != want.gid || os.FileMode(st.Mode&0o777) != want.mode {
					t.Errorf("%s: owner %d:%d mode %#o, want %d:%d and %#o", filepath.Base(p), st.Uid, st.Gid, st.Mode&0o777, os.Geteuid(), want.gid, want.mode)
				}
			}
			for fd, want := range map[int]int{hostfd: 0, adminfd: 1} {
				if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED); err != nil || v != want {
					t.Errorf("SO_PASSCRED %d (%v), want %d", v, err, want)
				}
			}
			for _, fd := range []int{h, a} {
				if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
					t.Errorf("the daemon's copy %d: flags %#x (%v), want close-on-exec", fd, flags, err)
				}
				if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
					t.Errorf("the daemon's copy %d: status flags %#x (%v), want non-blocking", fd, fl, err)
				}
			}
		})
	}
}
