package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/proctest"
)

// helper is a running waiters process: N threads, each blocked in read() on
// one of the fds handed to it.
type helper struct {
	cmd    *exec.Cmd
	files  []*os.File // the fds handed over, closed by stop
	stdin  io.WriteCloser
	lines  chan string
	stderr proctest.Buffer // written while it runs
}

// startHelper runs the waiters helper with fds as its fds 3, 4, ... (the
// first n are the watched ones; eventfd-reply also takes the reply fd). It
// owns the fds from then on: stop closes them.
func startHelper(bin, kind string, n int, fds []int) (*helper, error) {
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), "")
	}
	h := &helper{files: files, lines: make(chan string, 16)}
	h.cmd = exec.Command(bin, kind, strconv.Itoa(n))
	h.cmd.ExtraFiles = files
	h.cmd.Stderr = &h.stderr
	var err error
	fail := func(err error) (*helper, error) {
		h.closeFiles()
		return nil, err
	}
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		return fail(err)
	}
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	if err := h.cmd.Start(); err != nil {
		return fail(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	return h, nil
}

func (h *helper) next(timeout time.Duration) (string, error) {
	select {
	case l, ok := <-h.lines:
		if !ok {
			h.cmd.Wait()
			return "", fmt.Errorf("waiters helper exited: %s", h.stderr.String())
		}
		return l, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("waiters helper silent for %v: %s", timeout, h.stderr.String())
	}
}

// ready waits until every thread is blocked in read().
func (h *helper) ready() error {
	l, err := h.next(2 * time.Minute)
	if err != nil {
		return err
	}
	if l != "ready" {
		return fmt.Errorf("waiters helper said %q, want ready", l)
	}
	return nil
}

// done waits for the end of a round: the time the last thread read.
func (h *helper) done() (int64, error) {
	l, err := h.next(2 * time.Minute)
	if err != nil {
		return 0, err
	}
	t, ok := strings.CutPrefix(l, "done ")
	if !ok {
		return 0, fmt.Errorf("waiters helper said %q, want done", l)
	}
	return strconv.ParseInt(t, 10, 64)
}

func (h *helper) closeFiles() {
	for _, f := range h.files {
		f.Close()
	}
}

func (h *helper) stop() {
	defer h.closeFiles()
	h.stdin.Close()
	waitBounded(h.cmd, 10*time.Second)
}

// waitBounded waits for cmd to exit, and kills it once it has had d to.
func waitBounded(cmd *exec.Cmd, d time.Duration) {
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
	}
}

// waitReadable waits until fd is readable, for at most ioTimeout (for an
// fd that takes no socket timeout, such as an eventfd).
func waitReadable(fd int) error {
	for {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(p, int(ioTimeout.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("nothing in %v", ioTimeout)
		}
		return nil
	}
}

// switches sums the context switches of the helper's threads.
func (h *helper) switches() int64 {
	n, _ := procSwitches(h.cmd.Process.Pid)
	return n
}
