// Package proctest runs the real genidctl daemon as a process, for the
// tests that need the binary (end-to-end, the test bed's, torture) and for
// the bench: one way to start it, wait until it serves, read its log while
// it runs, and stop or kill it. genid/genidtest runs it in-process instead.
// It also starts the idle processes that tests give scopes to (Sleeper).
package proctest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Binary is the genidctl under test: $GENIDCTL (the Makefile sets it), else
// ../../bin/genidctl (from a test package's directory), made absolute; an
// error if it is not there.
func Binary() (string, error) {
	p := os.Getenv("GENIDCTL")
	if p == "" {
		p = "../../bin/genidctl"
	}
	abs, err := filepath.Abs(p)
	if err == nil {
		_, err = os.Stat(abs)
	}
	if err != nil {
		return "", fmt.Errorf("genidctl: %w (run `make build`, or set GENIDCTL)", err)
	}
	return abs, nil
}

// StartTimeout bounds how long a daemon may take to make its socket.
const StartTimeout = 10 * time.Second

// Buffer is a process's output: written by exec's copying goroutine, read
// by a test while the process may still run.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Daemon is one genidctl daemon process.
type Daemon struct {
	Cmd    *exec.Cmd
	Log    *Buffer // its stdout and stderr
	RunDir string

	exited chan struct{} // closed once it has exited; err then says how
	err    error
}

// Start runs cmd, a daemon command line serving runDir, with its output in
// the daemon's Log, and returns once RUN_DIR/genid.sock and admin.sock
// accept connections (their files alone may be a killed daemon's). A
// daemon that exits or does not serve in StartTimeout is an error (and
// killed).
func Start(cmd *exec.Cmd, runDir string) (*Daemon, error) {
	d := &Daemon{Cmd: cmd, Log: &Buffer{}, RunDir: runDir, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.Log, d.Log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()
	for deadline := time.Now().Add(StartTimeout); ; {
		if serves(filepath.Join(runDir, "genid.sock")) && serves(filepath.Join(runDir, "admin.sock")) {
			return d, nil
		}
		if d.Dead() {
			return nil, fmt.Errorf("daemon exited: %v\n%s", d.err, d.Log)
		}
		if time.Now().After(deadline) {
			d.Kill(syscall.SIGKILL) // the log is whole only once the process is gone
			return nil, fmt.Errorf("daemon made no socket in %v:\n%s", StartTimeout, d.Log)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serves tells whether a unix socket at path accepts a connection.
func serves(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// TB is what Spawn needs of a test.
type TB interface {
	Helper()
	Cleanup(func())
	Failed() bool
	Fatal(args ...any)
	Logf(format string, args ...any)
}

// Spawn is Start for a test: bin with argv, serving runDir. A daemon that
// does not start fails the test; the daemon is killed when the test ends,
// and its log shown if the test failed.
func Spawn(t TB, bin, runDir string, argv ...string) *Daemon {
	t.Helper()
	d, err := Start(exec.Command(bin, argv...), runDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("daemon log (%s):\n%s", runDir, d.Log)
		}
	})
	return d
}

// Dead tells whether the daemon has exited.
func (d *Daemon) Dead() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

// Err says how the daemon exited; nil while it runs.
func (d *Daemon) Err() error {
	if !d.Dead() {
		return nil
	}
	return d.err
}

// Exited is closed when the daemon has exited.
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// Kill sends sig unless the daemon has exited, waits for it to exit, and
// returns how it did.
func (d *Daemon) Kill(sig syscall.Signal) error {
	if !d.Dead() {
		d.Cmd.Process.Signal(sig)
	}
	<-d.exited
	return d.err
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int { return d.Cmd.Process.Pid }

// Sleeper starts a process that does nothing (sleep) for a test to use as
// the process a scope belongs to; it is killed and reaped when the test
// ends.
func Sleeper(t TB) *exec.Cmd {
	t.Helper()
	c := exec.Command("sleep", "1000")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	return c
}
