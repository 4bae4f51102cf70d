package criu

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/servertest"
	"github.com/genid-project/genid/internal/wire"
)

// flood is the test binary as an unprivileged peer that takes all it can:
// it opens connections to sock and watches on each, until the daemon
// refuses, and keeps trying for any slot that frees up. It prints how many
// it holds each time that changes, and never acks.
func flood(sock string) int {
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	var held []net.Conn
	report := -1
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Write(wire.Append(nil, wire.Header{Op: wire.OpWatch, ID: 1}, nil))
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			f, err := wire.ReadFrame(c, wire.MaxReplyPayload)
			if err == nil && f.Status == wire.StatusOK {
				held = append(held, c)
				continue
			}
			c.Close()
		}
		if len(held) != report {
			report = len(held)
			fmt.Println(report)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// One unprivileged peer takes every connection and watcher it may: root
// still watches on the host's socket, the admin still bumps, and a CRIU
// restore still attaches its watcher, from the reserve.
func TestRestoreUnderFlood(t *testing.T) {
	h := newHost(t, "flood")
	h.args = []string{"--max-conns", "300", "--max-watchers", "100", "--reserve", "10",
		"--max-conns-per-user", "1000", "--max-watchers-per-user", "1000"}
	images, pid, out := checkpointWatcher(t, h)
	h.start(0)

	held := startFlood(t, h)
	// 100 watchers, 10 kept in reserve.
	servertest.WaitFor(t, "the flood to take all it may", func() bool { return held.Load() == 90 })

	// root watches on the host's socket...
	rootOut := filepath.Join(t.TempDir(), "root.out")
	spawn(t, rootOut, nil, genidctl, "--run-dir", h.dir, "watch")
	servertest.WaitFor(t, "root's watcher", func() bool { return h.status().Watchers == 91 })
	// ...the admin bumps...
	if g := h.mustCtl("bump", "--reason", "under flood"); g != "1" {
		t.Fatalf("bump under flood: %s", g)
	}
	waitLine(t, rootOut, "1")
	// ...and a restore attaches its watcher.
	env := []string{"GENID_RUN_DIR=" + h.dir}
	mustCriu(t, env, "restore", images, "-d")
	defer syscall.Kill(pid, syscall.SIGKILL)
	waitLine(t, out, "6")
	st := h.status()
	restored := 0
	for _, w := range st.WatcherList {
		if w.PID == pid {
			restored++
		}
	}
	if restored != 1 {
		t.Fatalf("the restored watcher is not attached: %d watchers, none of pid %d", st.Watchers, pid)
	}
	if n := held.Load(); n != 90 {
		t.Fatalf("the flood got %d: more than its share", n)
	}
	t.Logf("the flood holds %d watchers of %d; root's and the restored one were served", held.Load(), st.Watchers)
}

// startFlood runs the test binary's flood helper as nobody on h's host
// socket, for as long as the test runs: it takes every watcher it may and
// holds them. The count it holds is kept up to date in the result.
func startFlood(t *testing.T, h *host) *atomic.Int64 {
	t.Helper()
	self, _ := os.Executable()
	fl := exec.Command(self)
	fl.Env = append(os.Environ(), "GENID_TEST_HELPER=flood", "SOCK="+filepath.Join(h.dir, "genid.sock"))
	fl.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	fl.Stderr = os.Stderr
	stdout, err := fl.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := fl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fl.Process.Kill(); fl.Wait() })
	var held atomic.Int64
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			n, _ := strconv.Atoi(sc.Text())
			held.Store(int64(n))
		}
	}()
	return &held
}
