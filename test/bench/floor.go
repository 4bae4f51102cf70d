package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/wire"
)

// The AF_UNIX floor: what a watcher on a unix stream socket costs before
// genid does anything. A plain sender holds one end of N socketpairs and
// writes each the event frame the daemon would; the waiters helper reads
// the other ends exactly as it reads genid connections. genid against this
// floor is the daemon's own cost; the floor against inotify is the kernel's.
//
// The sender is a process of its own, `bench socket-sender`, like the
// daemon: it holds its N ends and passes the helper's N ends to the bench,
// so no process needs 2N descriptors (the hard limit may be 20 000).

// fdBatch is how many descriptors go in one SCM_RIGHTS message (the
// kernel's SCM_MAX_FD is 253).
const fdBatch = 250

// fanoutSocket runs a socket sender and a waiters helper on its sockets.
func fanoutSocket(b *bench, n int) (*arena, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ctl, theirs := pair[0], os.NewFile(uintptr(pair[1]), "socket-sender control")
	cmd := exec.Command(self, "socket-sender", strconv.Itoa(n))
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		unix.Close(ctl)
		return nil, err
	}
	if err := bound(ctl, ioTimeout); err != nil {
		unix.Close(ctl)
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	stopSender := func() {
		unix.Close(ctl) // the sender exits on EOF
		waitBounded(cmd, 10*time.Second)
	}
	fds, err := recvFds(ctl, n)
	if err != nil {
		stopSender()
		return nil, fmt.Errorf("socket sender: %w", err)
	}
	h, err := startHelper(b.waiters, "genid", n, fds)
	if err != nil {
		stopSender()
		return nil, err
	}
	a := &arena{h: h, close: stopSender}
	a.round = func() (int64, error) {
		var cpu [8]byte
		t0 := mono()
		if err := writeAll(ctl, []byte{1}); err != nil {
			return 0, err
		}
		if err := readFull(ctl, cpu[:]); err != nil {
			return 0, fmt.Errorf("socket sender: %w", err)
		}
		a.cpu = append(a.cpu, ms(int64(binary.NativeEndian.Uint64(cpu[:]))))
		t1, err := h.done()
		return t1 - t0, err
	}
	return a, nil
}

// passPairs makes n socketpairs and sends one end of each over ctl, in
// batches, closing each batch once sent. It returns the ends it kept.
func passPairs(ctl, n int) ([]int, error) {
	ours := make([]int, 0, n)
	for len(ours) < n {
		var batch []int
		for len(batch) < fdBatch && len(ours) < n {
			p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				closeAll(batch)
				closeAll(ours)
				return nil, fmt.Errorf("socketpair %d: %w", len(ours), err)
			}
			ours, batch = append(ours, p[0]), append(batch, p[1])
		}
		err := unix.Sendmsg(ctl, []byte{0}, unix.UnixRights(batch...), nil, 0)
		closeAll(batch)
		if err != nil {
			closeAll(ours)
			return nil, fmt.Errorf("pass descriptors: %w", err)
		}
	}
	return ours, nil
}

// recvFds receives n descriptors sent in batches over SCM_RIGHTS.
func recvFds(fd, n int) ([]int, error) {
	fds := make([]int, 0, n)
	oob := make([]byte, unix.CmsgSpace(fdBatch*4))
	var b [1]byte
	for len(fds) < n {
		_, oobn, _, _, err := unix.Recvmsg(fd, b[:], oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			// A socket with a receive timeout (bound) is not restarted
			// after a signal, and the runtime's preemption sends some.
			continue
		}
		if err == nil && oobn == 0 {
			err = fmt.Errorf("no descriptors after %d of %d", len(fds), n)
		}
		if err == nil {
			fds, err = appendRights(fds, oob[:oobn])
		}
		if err != nil {
			closeAll(fds)
			return nil, err
		}
	}
	return fds, nil
}

// appendRights appends the descriptors of SCM_RIGHTS control messages.
func appendRights(fds []int, oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fds, err
	}
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// socketSender is `bench socket-sender N`, with its control socket as fd 3:
// it makes N socketpairs, passes one end of each to the bench, and then,
// for each byte read from the control socket, sends every socket it kept an
// event frame and answers with the CPU time (ns, 8 bytes) that took. It
// exits when the control socket closes.
func socketSender(n int) error {
	const ctl = 3
	ours, err := passPairs(ctl, n)
	if err != nil {
		return err
	}
	runtime.LockOSThread() // for the thread's CPU clock
	var frame [wire.HeaderSize + 8]byte
	wire.PutHeader(frame[:], wire.Header{Op: wire.OpEvent, Len: 8})
	for {
		var cue [1]byte
		if err := readFull(ctl, cue[:]); err != nil {
			return nil // the bench is done
		}
		frame[wire.HeaderSize]++
		cpu0 := threadCPU()
		for _, fd := range ours {
			if _, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&frame[0])), uintptr(len(frame)),
				unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0); e != 0 {
				return fmt.Errorf("send: %w", e)
			}
		}
		var cpu [8]byte
		binary.NativeEndian.PutUint64(cpu[:], uint64(threadCPU()-cpu0))
		if err := writeAll(ctl, cpu[:]); err != nil {
			return err
		}
	}
}
