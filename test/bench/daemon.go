package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/wire"
)

// daemon is a `genidctl daemon` process on a run dir of its own.
type daemon struct {
	*proctest.Daemon
	cmd   *exec.Cmd
	dir   string
	state string // its state dir, of its own: the bench leaves nothing in the host's
}

// startDaemon runs the real daemon binary. No hypervisor backend: the
// figures are about the socket daemon (the vmgenid backend would also wake
// on every kernel log line, which is not genid's idle cost).
func startDaemon(bin string, extra ...string) (*daemon, error) {
	return startDaemonIn("", bin, extra...)
}

// startDaemonIn is startDaemon with the run dir made in base (the
// default temporary directory if "").
func startDaemonIn(base, bin string, extra ...string) (*daemon, error) {
	dir, err := os.MkdirTemp(base, "genid-bench-")
	if err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o755)
	state, err := os.MkdirTemp("", "genid-bench-state-")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	args := append([]string{"--run-dir", dir, "daemon", "--backends", "none", "--log-level", "warn", "--state-dir", state,
		"--max-watchers", "100000", "--max-conns", "200000"}, extra...)
	cmd := exec.Command(bin, args...)
	if env := os.Getenv("BENCH_DAEMON_ENV"); env != "" { // experiments: runtime settings
		cmd.Env = append(os.Environ(), strings.Fields(env)...)
	}
	p, err := proctest.Start(cmd, dir)
	if err != nil {
		os.RemoveAll(dir)
		os.RemoveAll(state)
		return nil, err
	}
	return &daemon{Daemon: p, cmd: cmd, dir: dir, state: state}, nil
}

func (d *daemon) sock() string { return filepath.Join(d.dir, "genid.sock") }

// adminSock is where bumps and waits on watchers are asked for.
func (d *daemon) adminSock() string { return filepath.Join(d.dir, "admin.sock") }

// hostScope prefixes an admin request's payload with the host scope's name.
func hostScope(p []byte) []byte { return append(wire.AppendName(nil, ""), p...) }
func (d *daemon) page() string  { return filepath.Join(d.dir, "generation") }
func (d *daemon) pid() int      { return d.cmd.Process.Pid }

// failed adds the tail of the daemon's log to err.
func (d *daemon) failed(err error) error {
	return fmt.Errorf("%w\n--- daemon log (tail):\n%s", err, tail(d.Log.String(), 20))
}

func (d *daemon) stop() {
	timer := time.AfterFunc(10*time.Second, func() { d.Kill(syscall.SIGKILL) })
	d.Kill(syscall.SIGTERM)
	timer.Stop()
	os.RemoveAll(d.dir)
	os.RemoveAll(d.state)
}

// rss is the daemon's resident set in bytes.
func (d *daemon) rss() int64 { return d.status("VmRSS:") }

// status is a size field of /proc/PID/status, in bytes.
func (d *daemon) status(field string) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.pid()))
	return statusField(string(b), field) * 1024
}

// ctxSwitches sums voluntary and involuntary context switches of every
// thread of the daemon.
func (d *daemon) ctxSwitches() (int64, int) { return procSwitches(d.pid()) }

func procSwitches(pid int) (int64, int) {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	var n int64
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		n += statusField(string(b), "voluntary_ctxt_switches:") + statusField(string(b), "nonvoluntary_ctxt_switches:")
	}
	return n, len(tasks)
}

func statusField(status, key string) int64 {
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, key) {
			f := strings.Fields(l[len(key):])
			if len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// ioTimeout bounds every read and write the bench makes on a socket to a
// process it started (the daemon, the socket sender, dbus-daemon): one that
// hangs fails the figure within it, with the process's log, not never.
const ioTimeout = 2 * time.Minute

// bound sets ioTimeout on fd's reads and writes, or with d = 0 clears it
// (for a watcher's connection, handed to a helper that blocks on it between
// rounds for as long as the set-up of other mechanisms takes).
func bound(fd int, d time.Duration) error {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
}

// dialRaw connects a blocking unix socket (a helper thread blocks in read()
// on it), without Go's poller.
func dialRaw(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	for refused := 0; ; {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err == unix.ECONNREFUSED && refused < 200 {
			refused++ // the daemon binds a moment before it listens
		} else if err != unix.EINTR && err != unix.EAGAIN {
			break
		}
		time.Sleep(time.Millisecond) // listen backlog full
	}
	if err == nil {
		err = bound(fd, ioTimeout)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// timedOut names a bounded read or write that ran out of time.
func timedOut(err error) error {
	if err == unix.EAGAIN {
		return fmt.Errorf("no progress in %v: %w", ioTimeout, err)
	}
	return err
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return timedOut(err)
		}
		b = b[n:]
	}
	return nil
}

func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return timedOut(err)
		}
		if n == 0 {
			return fmt.Errorf("EOF")
		}
		b = b[n:]
	}
	return nil
}

// rawFrame reads one frame from a raw fd.
func rawFrame(fd int) (wire.Frame, error) {
	var hdr [wire.HeaderSize]byte
	if err := readFull(fd, hdr[:]); err != nil {
		return wire.Frame{}, err
	}
	h, err := wire.ParseHeader(hdr[:], wire.MaxReplyPayload)
	if err != nil {
		return wire.Frame{}, err
	}
	f := wire.Frame{Header: h, Payload: make([]byte, h.Len)}
	return f, readFull(fd, f.Payload)
}

// rawCall sends a request on a raw fd and reads frames until its reply.
func rawCall(fd int, op wire.Op, id uint32, payload []byte) (wire.Frame, error) {
	if err := writeAll(fd, wire.Append(nil, wire.Header{Op: op, ID: id}, payload)); err != nil {
		return wire.Frame{}, err
	}
	for {
		f, err := rawFrame(fd)
		if err != nil {
			return f, err
		}
		if f.Op == op && f.ID == id {
			if f.Status != wire.StatusOK {
				return f, fmt.Errorf("%v: %v: %s", op, f.Status, f.Payload)
			}
			return f, nil
		}
	}
}

// watchers connects n watchers to the daemon, each registered with watch.
func (d *daemon) watchers(n int) ([]int, error) {
	fds := make([]int, 0, n)
	for range n {
		fd, err := dialRaw(d.sock())
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("connect watcher %d: %w", len(fds), err)
		}
		fds = append(fds, fd)
		_, err = rawCall(fd, wire.OpWatch, 1, nil)
		if err == nil {
			err = bound(fd, 0)
		}
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("watcher %d: %w", len(fds), err)
		}
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// gen reads the generation from the page file.
func (d *daemon) gen() uint32 {
	b, _ := os.ReadFile(d.page())
	if len(b) < 4 {
		return 0
	}
	return binary.NativeEndian.Uint32(b)
}

// cpuTime sums the on-CPU time of every thread of pid, in ns
// (/proc/PID/task/*/schedstat).
func cpuTime(pid int) int64 {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var n int64
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		if f := strings.Fields(string(b)); len(f) > 0 {
			v, _ := strconv.ParseInt(f[0], 10, 64)
			n += v
		}
	}
	return n
}
