package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/wire"
)

// arena is one mechanism set up for N watcher threads: the helper holds the
// watcher side, round runs the writer's side and returns when every thread
// has read (or, for a barrier, when every reply is in).
type arena struct {
	h          *helper
	switches   []float64             // the watcher threads' context switches, per round
	cpu        []float64             // the sender's CPU time (ms) per round, where round records it
	watcherCPU []float64             // the watcher threads' CPU time (ms) per round
	round      func() (int64, error) // ns from the trigger to the end
	close      func()
}

// measure runs the rounds, records under mech their times, the watcher
// side's wake-ups per watcher and the CPU times (the sender's under mech,
// the watchers' under mech+" watchers"), and stops the arena.
func (a *arena) measure(rounds, watchers int, mech string, series, wakes, cpu map[string][]float64) error {
	defer a.stop()
	s, err := a.rounds(rounds)
	series[mech] = append(series[mech], s...)
	for _, v := range a.switches {
		wakes[mech] = append(wakes[mech], v/float64(watchers))
	}
	if len(a.cpu) > 1 {
		cpu[mech] = append(cpu[mech], a.cpu[1:]...) // not the warm-up round
	}
	cpu[mech+" watchers"] = append(cpu[mech+" watchers"], a.watcherCPU...)
	return err
}

// rounds runs one warm-up round and then n measured ones, in ms.
func (a *arena) rounds(n int) ([]float64, error) {
	var out []float64
	for r := range n + 1 {
		if err := a.h.ready(); err != nil {
			return nil, err
		}
		h0, c0 := a.h.switches(), cpuTime(a.h.cmd.Process.Pid)
		ns, err := a.round()
		if err != nil {
			return nil, err
		}
		if r > 0 {
			out = append(out, ms(ns))
			a.switches = append(a.switches, float64(a.h.switches()-h0))
			a.watcherCPU = append(a.watcherCPU, ms(cpuTime(a.h.cmd.Process.Pid)-c0))
		}
	}
	return out, nil
}

func (a *arena) stop() {
	a.h.stop()
	if a.close != nil {
		a.close()
	}
}

// genidWatchers registers N watcher connections, hands them to a waiters
// helper of the given kind, and opens the control connection that bumps.
func genidWatchers(b *bench, d *daemon, n int, kind string) (*helper, int, error) {
	fds, err := d.watchers(n)
	if err != nil {
		return nil, -1, err
	}
	ctl, err := dialRaw(d.adminSock())
	if err != nil {
		closeAll(fds)
		return nil, -1, err
	}
	h, err := startHelper(b.waiters, kind, n, fds) // owns fds from here on
	if err != nil {
		unix.Close(ctl)
		return nil, -1, err
	}
	return h, ctl, nil
}

// fanoutGenid: N watcher connections; a client bumps.
func fanoutGenid(b *bench, d *daemon, n int) (*arena, error) {
	h, ctl, err := genidWatchers(b, d, n, "genid")
	if err != nil {
		return nil, err
	}
	return bumpArena(d, h, ctl), nil
}

// bumpArena: rounds of a bump of the host scope on ctl, an admin
// connection, that end when every watcher of h has read.
func bumpArena(d *daemon, h *helper, ctl int) *arena {
	bump := hostScope(wire.Bump{Reason: "bench"}.Encode())
	id := uint32(0)
	a := &arena{h: h, close: func() { unix.Close(ctl) }}
	a.round = func() (int64, error) {
		id++
		frame := wire.Append(nil, wire.Header{Op: wire.OpBump, ID: id}, bump)
		cpu0 := cpuTime(d.pid())
		t0 := mono()
		if err := writeAll(ctl, frame); err != nil {
			return 0, err
		}
		t1, err := h.done()
		if err != nil {
			return 0, err
		}
		if f, err := rawFrame(ctl); err != nil || f.Status != wire.StatusOK {
			return 0, fmt.Errorf("bump: %v %v %s", err, f.Status, f.Payload)
		}
		a.cpu = append(a.cpu, ms(cpuTime(d.pid())-cpu0))
		return t1 - t0, nil
	}
	return a
}

// fanoutPage: N threads asleep on the page (futex.go of internal/page: the
// generation is a futex word each bump wakes), no watcher connection; a
// client bumps.
func fanoutPage(b *bench, d *daemon, n int) (*arena, error) {
	fd, err := unix.Open(d.page(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ctl, err := dialRaw(d.adminSock())
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	h, err := startHelper(b.waiters, "page", n, []int{fd})
	if err != nil {
		unix.Close(ctl)
		return nil, err
	}
	return bumpArena(d, h, ctl), nil
}

// threadCPU is the calling thread's CPU time in ns.
func threadCPU() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return ts.Nano()
}

func eventfds(n int) ([]int, error) {
	fds := make([]int, 0, n)
	for range n {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("eventfd: %w", err)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

var one = [8]byte{1}

// signal writes 1 to every eventfd: the writer of the physical limit, a
// plain loop of write(2).
func signal(fds []int) error {
	for _, fd := range fds {
		if _, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&one[0])), 8); e != 0 {
			return e
		}
	}
	return nil
}

// fanoutEventfd: the physical limit, N eventfds and one writer.
func fanoutEventfd(b *bench, n int) (*arena, error) {
	fds, err := eventfds(n)
	if err != nil {
		return nil, err
	}
	h, err := startHelper(b.waiters, "raw", n, fds)
	if err != nil {
		return nil, err
	}
	a := &arena{h: h}
	a.round = func() (int64, error) {
		runtime.LockOSThread() // for the thread's CPU clock
		defer runtime.UnlockOSThread()
		cpu0 := threadCPU()
		t0 := mono()
		if err := signal(fds); err != nil {
			return 0, err
		}
		a.cpu = append(a.cpu, ms(threadCPU()-cpu0))
		t1, err := h.done()
		return t1 - t0, err
	}
	return a, nil
}

// fanoutInotify: N inotify instances watching one file for IN_MODIFY; the
// writer pwrite()s 4 bytes to it. (The daemon stores to the page through
// mmap, which raises no inotify event at all: see mmapInotifyEvents. So
// the peer here is the honest equivalent, a file written with pwrite.)
func fanoutInotify(b *bench, dir string, n int) (*arena, error) {
	path := filepath.Join(dir, "inotify-page")
	if err := os.WriteFile(path, make([]byte, 4096), 0o644); err != nil {
		return nil, err
	}
	wfd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	fds := make([]int, 0, n)
	for range n {
		fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
		if err == nil {
			_, err = unix.InotifyAddWatch(fd, path, unix.IN_MODIFY)
			if err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			closeAll(fds)
			unix.Close(wfd)
			return nil, fmt.Errorf("inotify %d: %w", len(fds), err)
		}
		fds = append(fds, fd)
	}
	h, err := startHelper(b.waiters, "raw", n, fds)
	if err != nil {
		unix.Close(wfd)
		return nil, err
	}
	var gen [4]byte
	a := &arena{h: h, close: func() { unix.Close(wfd) }}
	a.round = func() (int64, error) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		gen[0]++
		cpu0 := threadCPU()
		t0 := mono()
		if _, _, e := unix.RawSyscall6(unix.SYS_PWRITE64, uintptr(wfd), uintptr(unsafe.Pointer(&gen[0])), 4, 0, 0, 0); e != 0 {
			return 0, e
		}
		a.cpu = append(a.cpu, ms(threadCPU()-cpu0))
		t1, err := h.done()
		return t1 - t0, err
	}
	return a, nil
}

// mmapInotifyEvents tells how many inotify events (IN_MODIFY or any other)
// a bump raises on the page file, which the daemon writes through mmap.
func mmapInotifyEvents(d *daemon) (int, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, d.page(), unix.IN_MODIFY|unix.IN_ATTRIB|unix.IN_CLOSE_WRITE); err != nil {
		return 0, err
	}
	ctl, err := dialRaw(d.adminSock())
	if err != nil {
		return 0, err
	}
	defer unix.Close(ctl)
	before := d.gen()
	if _, err := rawCall(ctl, wire.OpBump, 1, hostScope(wire.Bump{Reason: "inotify check"}.Encode())); err != nil {
		return 0, err
	}
	if d.gen() == before {
		return 0, fmt.Errorf("bump did not change the page")
	}
	time.Sleep(200 * time.Millisecond)
	buf := make([]byte, 4096)
	events := 0
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EAGAIN {
			return events, nil
		}
		if err != nil {
			return 0, err
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			events++
		}
	}
}
