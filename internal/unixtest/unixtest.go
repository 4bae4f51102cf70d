// Package unixtest holds test helpers for unix sockets in the states a
// client meets around a daemon that is starting or gone.
package unixtest

import (
	"syscall"
	"testing"
)

// Bound binds a unix stream socket at path without listening: what a client
// sees while the daemon starts (bound, not yet listening), or after it died.
// The socket is closed when the test ends.
func Bound(t testing.TB, path string) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	return fd
}
