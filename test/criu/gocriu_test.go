package criu

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/genid-project/genid/plugin"
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
	dumpNfy := plugin.NewNotify(nil, images, h.dir)
	err := c.Dump(&rpc.CriuOpts{
		ImagesDirFd: proto.Int32(int32(dirFd)),
		Pid:         proto.Int32(int32(p.Pid)),
		LogLevel:    proto.Int32(4),
		LogFile:     proto.String("dump.log"),
	}, dumpNfy)
	if err != nil {
		t.Fatalf("go-criu dump: %v\n%s", err, logTail(images, "dump.log"))
	}
	if r := readRecord(t, images); r.Writer != "go-criu" || r.Generation == nil || *r.Generation != 12 {
		t.Fatalf("record %+v", r)
	}

	h.start(1)
	rstNfy := plugin.NewNotify(nil, images, h.dir)
	err = c.Restore(&rpc.CriuOpts{
		ImagesDirFd: proto.Int32(int32(dirFd)),
		LogLevel:    proto.Int32(4),
		LogFile:     proto.String("restore.log"),
		RstSibling:  proto.Bool(true),
	}, rstNfy)
	if err != nil {
		t.Fatalf("go-criu restore: %v\n%s", err, logTail(images, "restore.log"))
	}
	defer unix.Kill(p.Pid, unix.SIGKILL)
	if rstNfy.Restored != 13 || h.gen() != 13 {
		t.Fatalf("restore bumped to %d, page %d; want 13", rstNfy.Restored, h.gen())
	}
	if unix.Kill(p.Pid, 0) != nil {
		t.Fatal("restored process not running")
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
