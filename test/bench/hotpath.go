package main

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
)

// sink takes the loops' results, so the compiler cannot drop the loads.
//
//lint:ignore U1000 written only: the loads must have a destination
var sink uint32

// checkLoop is the hot path: the Go client's Generation, n times.
//
//go:noinline
func checkLoop(c *genid.Client, n int) time.Duration {
	var s uint32
	t0 := time.Now()
	for range n {
		s += c.Generation()
	}
	el := time.Since(t0)
	sink += s
	return el
}

// preadLoop is the baseline: pread(2) of the page's 4 bytes, n times, as a
// plain system call (no Go scheduler hooks, as from C).
//
//go:noinline
func preadLoop(fd int, n int) time.Duration {
	var buf [4]byte
	var s uint32
	t0 := time.Now()
	for range n {
		unix.RawSyscall6(unix.SYS_PREAD64, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), 4, 0, 0, 0)
		s += uint32(buf[0])
	}
	el := time.Since(t0)
	sink += s
	return el
}

// hotPath returns ns/op of both, one sample per run, runs interleaved.
func hotPath(d *daemon, runs int) (check, pread []float64, err error) {
	c, err := genid.Open(d.dir)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	fd, err := unix.Open(d.page(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	defer unix.Close(fd)
	const nCheck, nPread = 200_000_000, 1_000_000
	checkLoop(c, nCheck/10) // warm-up
	preadLoop(fd, nPread/10)
	for range runs {
		check = append(check, float64(checkLoop(c, nCheck).Nanoseconds())/nCheck)
		pread = append(pread, float64(preadLoop(fd, nPread).Nanoseconds())/nPread)
	}
	return check, pread, nil
}
