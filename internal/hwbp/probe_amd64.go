package hwbp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Offsets in struct user (sys/user.h) of the debug registers.
const (
	debugRegs = 848 // offsetof(struct user, u_debugreg)
	dr0       = debugRegs
	dr6       = debugRegs + 6*8
	dr7       = debugRegs + 7*8
	dr7L0     = 0x1 // local enable, slot 0; RW0 = LEN0 = 0: execute
	dr6B0     = 0x1 // slot 0 was hit
)

const atEntry = 9 // AT_ENTRY in the auxiliary vector

// Probe sets a breakpoint in a traced child and waits up to timeout for
// its trap; why explains a verdict other than Fire.
func Probe(timeout time.Duration) (v Verdict, why string) {
	// ptrace requests must come from the tracer: the thread that started
	// the child.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// This very program, even if its file was replaced since it started.
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = []string{ChildEnv + "=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return Error, fmt.Sprintf("start the child: %v", err)
	}
	pid := cmd.Process.Pid
	reaped := false
	defer func() {
		if !reaped {
			unix.Kill(pid, unix.SIGKILL)
			wait(pid)
		}
		cmd.Process.Release()
	}()
	// Stopped after its exec.
	if ws, err := wait(pid); err != nil || !ws.Stopped() || ws.StopSignal() != syscall.SIGTRAP {
		return Error, fmt.Sprintf("the child did not stop for tracing (%v, %v)", ws, err)
	}
	self := reflect.ValueOf(target).Pointer()
	addr, err := childAddress(pid, self)
	if err != nil {
		return Error, err.Error()
	}
	// A breakpoint anywhere else would never fire: check that the child has
	// the function's code there.
	if err := sameCode(pid, addr, self); err != nil {
		return Error, fmt.Sprintf("the probe's function is not at %#x in the child: %v", addr, err)
	}
	if err := pokeUser(pid, dr0, addr); err != nil {
		return Never, fmt.Sprintf("PTRACE_POKEUSER of a debug register: %v", err)
	}
	if err := pokeUser(pid, dr7, dr7L0); err != nil {
		return Never, fmt.Sprintf("PTRACE_POKEUSER of a debug register: %v", err)
	}

	var expired atomic.Bool
	timer := time.AfterFunc(timeout, func() {
		expired.Store(true)
		unix.Kill(pid, unix.SIGKILL)
	})
	defer timer.Stop()
	sig := 0
	for {
		if err := unix.PtraceCont(pid, sig); err != nil {
			if expired.Load() {
				continue // killed meanwhile: wait tells
			}
			return Error, fmt.Sprintf("PTRACE_CONT: %v", err)
		}
		ws, err := wait(pid)
		if err != nil {
			return Error, fmt.Sprintf("wait for the trap: %v", err)
		}
		switch {
		case ws.Exited():
			reaped = true
			return Never, fmt.Sprintf("the child ran past the breakpoint to its exit (%d)", ws.ExitStatus())
		case ws.Signaled() && expired.Load():
			reaped = true
			return Never, fmt.Sprintf("no trap within %v: child killed", timeout)
		case ws.Signaled():
			reaped = true
			return Error, fmt.Sprintf("the child ended with signal %v", ws.Signal())
		case !ws.Stopped():
			return Error, fmt.Sprintf("the child's status %#x", uint32(ws))
		case ws.StopSignal() != syscall.SIGTRAP:
			// The Go runtime's own signals (preemption): pass them on.
			sig = int(ws.StopSignal())
			continue
		}
		v, err := peekUser(pid, dr6)
		if err != nil {
			return Error, fmt.Sprintf("PTRACE_PEEKUSER of DR6: %v", err)
		}
		if v&dr6B0 == 0 {
			return Error, fmt.Sprintf("SIGTRAP, but DR6 (%#x) does not name the breakpoint", v)
		}
		return Fire, ""
	}
}

// sameCode checks that the child has at addr the code this process has at
// self.
func sameCode(pid int, addr, self uintptr) error {
	var want, got [16]byte
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		return err
	}
	defer mem.Close()
	if _, err := mem.ReadAt(want[:], int64(self)); err != nil {
		return err
	}
	if _, err := unix.PtracePeekText(pid, addr, got[:]); err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("code % x, want % x", got, want)
	}
	return nil
}

// wait waits for pid's next state change, stops included.
func wait(pid int) (unix.WaitStatus, error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return ws, err
	}
}

func pokeUser(pid int, off, v uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_POKEUSR, uintptr(pid), off, v, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func peekUser(pid int, off uintptr) (uint64, error) {
	var b [8]byte
	if _, err := unix.PtracePeekUser(pid, off, b[:]); err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// childAddress is where addr, an address in this process, is in the child,
// the same program: shifted by where each was loaded (their entry points).
func childAddress(pid int, addr uintptr) (uintptr, error) {
	self, err := entry("/proc/self/auxv")
	if err != nil {
		return 0, err
	}
	child, err := entry("/proc/" + strconv.Itoa(pid) + "/auxv")
	if err != nil {
		return 0, err
	}
	return addr - self + child, nil
}

// entry reads the program's entry point from an auxiliary vector.
func entry(path string) (uintptr, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	r := bytes.NewReader(b)
	for {
		var kv [2]uint64
		if err := binary.Read(r, binary.NativeEndian, &kv); err != nil {
			return 0, fmt.Errorf("%s: no AT_ENTRY", path)
		}
		if kv[0] == atEntry {
			return uintptr(kv[1]), nil
		}
		if kv[0] == 0 {
			return 0, fmt.Errorf("%s: no AT_ENTRY", path)
		}
	}
}
