package criu

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/genid-project/genid/checkpoint"
)

// 6. A Go program drives dump and restore through go-criu with the plugin
// package's Notify (and no C plugin): the restore bumps past the snapshot.
func TestGoCriuNotify(t *testing.T) {
	h := newHost(t, "gocriu")
	h.start(0)
	h.mustCtl("bump", "--min", "12")
	// CRIU's swrk inherits the environment: no C plugin for this test.
	t.Setenv("CRIU_LIBS_DIR", t.TempDir())

	p := spawn(t, filepath.Join(t.TempDir(), "out"), nil, "sh", "-c", "while :; do sleep 0.1; done")
	images := imagesDir(t)
	dirFd := openDir(t, images)

	c := criu.MakeCriu()
	dumpNfy := checkpoint.NewNotify(nil, images, h.dir)
	err := bounded(commandTimeout, func() error {
		return c.Dump(&rpc.CriuOpts{
			ImagesDirFd: proto.Int32(int32(dirFd)),
			Pid:         proto.Int32(int32(p.Pid)),
			LogLevel:    proto.Int32(4),
			LogFile:     proto.String("dump.log"),
		}, dumpNfy)
	})
	if err != nil {
		t.Fatalf("go-criu dump: %v\n%s\n(criu mode: %s)", err, logTail(images, "dump.log"), criuMode())
	}
	if r := readRecord(t, images); r.Writer != "go-criu" || r.Generation == nil || *r.Generation != 12 {
		t.Fatalf("record %+v", r)
	}

	h.start(1)
	rstNfy := checkpoint.NewNotify(nil, images, h.dir)
	err = bounded(commandTimeout, func() error {
		return c.Restore(&rpc.CriuOpts{
			ImagesDirFd: proto.Int32(int32(dirFd)),
			LogLevel:    proto.Int32(4),
			LogFile:     proto.String("restore.log"),
			RstSibling:  proto.Bool(true),
		}, rstNfy)
	})
	if err != nil {
		t.Fatalf("go-criu restore: %v\n%s\n(criu mode: %s)", err, logTail(images, "restore.log"), criuMode())
	}
	defer unix.Kill(p.Pid, unix.SIGKILL)
	if rstNfy.Restored != 13 || h.gen() != 13 {
		t.Fatalf("restore bumped to %d, page %d; want 13", rstNfy.Restored, h.gen())
	}
	if unix.Kill(p.Pid, 0) != nil {
		t.Fatal("restored process not running")
	}
}

// bounded runs a go-criu call, which starts `criu swrk` as a child of this
// process and gives no handle on it: if the call has not returned within
// timeout, every criu child of this process is killed, and the call then
// fails.
func bounded(timeout time.Duration, call func() error) error {
	done := make(chan error, 1)
	go func() { done <- call() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
	}
	n := killChildren("criu")
	err := <-done
	return fmt.Errorf("still running after %v, %d criu killed: %v", timeout, n, err)
}

// killChildren kills the children of this process named comm, and returns
// how many it found.
func killChildren(comm string) int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	n := 0
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(string(b[end+1:]))
		if string(b[open+1:end]) != comm || len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b[:open]))); err == nil && unix.Kill(pid, unix.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// A go-criu call whose criu hangs fails after the timeout, its criu killed.
func TestBounded(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "criu")
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, sleep, fake)
	start := time.Now()
	err = bounded(200*time.Millisecond, func() error { return exec.Command(fake, "60").Run() })
	if err == nil || !strings.Contains(err.Error(), "1 criu killed: signal: killed") || time.Since(start) > 10*time.Second {
		t.Fatalf("a hung criu: %v after %v", err, time.Since(start))
	}
	if err := bounded(time.Minute, func() error { return nil }); err != nil {
		t.Fatalf("a call that returns: %v", err)
	}
}

// openDir opens a directory fd that survives exec: go-criu v7 hands CRIU
// the number only.
func openDir(t *testing.T, dir string) int {
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func logTail(dir, name string) string {
	b, _ := os.ReadFile(filepath.Join(dir, name))
	return name + " (tail):\n" + tail(string(b), 40) + "\n" + strconv.Itoa(len(b)) + " bytes"
}
