package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// passedChildEnv makes TestPassedSockets, run again as a child with
// sockets at fds 3 and 4, call passedSockets as a daemon systemd started.
const passedChildEnv = "GENID_TEST_PASSED_NAMES"

// passedChild prints what passedSockets made of the fds and names it was
// given: FILE=bound-path lines, sorted, or the error.
func passedChild(names string) int {
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid())) // systemd sets it to the pid it starts
	os.Setenv("LISTEN_FDS", "2")
	os.Setenv("LISTEN_FDNAMES", names)
	fds, err := passedSockets()
	if err != nil {
		fmt.Println("error:", err)
		return 0
	}
	var lines []string
	for file, fd := range fds {
		sa, err := unix.Getsockname(fd)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		lines = append(lines, file+"="+sa.(*unix.SockaddrUnix).Name)
	}
	slices.Sort(lines)
	fmt.Println(strings.Join(lines, " "))
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if os.Getenv(v) != "" {
			fmt.Println("error: left in the environment:", v)
		}
	}
	// The Files passedSockets took are closed: the copies alone remain.
	for _, fd := range []int{3, 4} {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			fmt.Println("error: fd", fd, "still open")
		}
	}
	return 0
}

// The sockets systemd passes are taken by their names: genid for the host
// scope's socket, admin for the admin socket; other names are refused.
func TestPassedSockets(t *testing.T) {
	if names := os.Getenv(passedChildEnv); names != "" {
		os.Exit(passedChild(names))
	}
	dir := t.TempDir()
	var files []*os.File
	for _, name := range []string{"a.sock", "b.sock"} {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, name), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	a, b := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	for _, tc := range []struct{ names, want string }{
		{"genid:admin", "admin.sock=" + b + " genid.sock=" + a},
		{"admin:genid", "admin.sock=" + a + " genid.sock=" + b},
		{"genid:other", `error: socket activation: a socket named "other": name them genid and admin (FileDescriptorName=)`},
		{"genid:genid", `error: socket activation: two sockets named "genid"`},
		{"genid", `error: socket activation: a socket named "LISTEN_FD_4": name them genid and admin (FileDescriptorName=)`},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestPassedSockets$")
		cmd.Env = append(os.Environ(), passedChildEnv+"="+tc.names)
		cmd.ExtraFiles = files
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", tc.names, err)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("names %s: %q, want %q", tc.names, got, tc.want)
		}
	}
}

// Without socket activation there is nothing to take.
func TestNoPassedSockets(t *testing.T) {
	t.Setenv("LISTEN_PID", "")
	t.Setenv("LISTEN_FDS", "")
	if fds, err := passedSockets(); fds != nil || err != nil {
		t.Fatalf("passedSockets without LISTEN_FDS: %v, %v", fds, err)
	}
}
