package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/page"
	"github.com/genid-project/genid/genid/wire"
)

// cRecord is what plugin/criu/genid-criu.c writes, byte for byte in layout.
const cRecord = `{
  "version": 1,
  "generation": 5,
  "socket": "/run/genid/genid.sock",
  "time": "2026-11-22T18:00:00Z",
  "sockets": [
    {"inode": 4242, "watcher": true, "acked": 5, "nonblock": true, "path": "/run/genid/genid.sock"},
    {"inode": 4243, "watcher": false, "acked": 0, "nonblock": false, "path": "/run/genid/genid.sock"}
  ]
}
`

func TestReadsTheCPluginsRecord(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, RecordName), []byte(cRecord), 0o644)
	r, err := ReadRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if *r.Generation != 5 || r.Writer != "" || len(r.Sockets) != 2 ||
		r.Sockets[0] != (Socket{Inode: 4242, Watcher: true, Acked: 5, Nonblock: true, Path: "/run/genid/genid.sock"}) {
		t.Fatalf("record %+v", r)
	}
	if min, err := MinForRestore(r); min != 6 || err != nil {
		t.Fatalf("min %d %v", min, err)
	}
	// Recording after the plugin keeps the plugin's richer record.
	if err := RecordGeneration(dir, t.TempDir(), "action-script"); err != nil {
		t.Fatal(err)
	}
	if r2, _ := ReadRecord(dir); len(r2.Sockets) != 2 || r2.Writer != "" {
		t.Fatalf("the plugin's record was replaced: %+v", r2)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadRecord(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no record: %v", err)
	}
	if min, err := MinForRestore(nil); min != 0 || err != nil {
		t.Fatalf("no record: min %d %v", min, err)
	}
	g := uint32(1<<32 - 1)
	if err := WriteRecord(dir, &Record{Generation: &g, Writer: "test"}); err != nil {
		t.Fatal(err)
	}
	r, err := ReadRecord(dir)
	if err != nil || *r.Generation != g || r.Version != 1 || r.Time == "" {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := MinForRestore(r); err == nil {
		t.Fatal("a record at the maximum must refuse a restore bump")
	}
	os.WriteFile(filepath.Join(dir, RecordName), []byte(`{"version": 2}`), 0o644)
	if _, err := ReadRecord(dir); err == nil {
		t.Fatal("an unknown version was accepted")
	}
}

// fakeDaemon answers bumps on a run dir's socket and keeps its page, as the
// daemon does, and remembers each bump's min: enough for a restore, without
// the capabilities a real daemon checks.
type fakeDaemon struct {
	dir string
	pg  *page.Writer

	mu    sync.Mutex
	bumps []wire.Bump
}

func startFakeDaemon(t *testing.T, gen uint32) *fakeDaemon {
	t.Helper()
	dir := t.TempDir()
	pg, err := page.Create(filepath.Join(dir, genid.PageFile))
	if err != nil {
		t.Fatal(err)
	}
	pg.Store(gen)
	ln, err := net.Listen("unix", filepath.Join(dir, genid.SocketFile))
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDaemon{dir: dir, pg: pg}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		pg.Close()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				d.serve(c)
			}()
		}
	}()
	return d
}

func (d *fakeDaemon) serve(c net.Conn) {
	for {
		f, err := wire.ReadFrame(c, wire.DefaultMaxPayload)
		if err != nil {
			return
		}
		h := wire.Header{Op: f.Op, ID: f.ID}
		var reply []byte
		switch b, err := wire.ParseBump(f.Payload); {
		case f.Op != wire.OpBump:
			h.Status = wire.StatusUnknownOp
		case err != nil:
			h.Status = wire.StatusBadRequest
		default:
			d.mu.Lock()
			d.bumps = append(d.bumps, b)
			gen := max(d.pg.Load()+1, b.Min)
			d.pg.Store(gen)
			d.mu.Unlock()
			reply = wire.U32(gen)
		}
		if _, err := c.Write(wire.Append(nil, h, reply)); err != nil {
			return
		}
	}
}

func (d *fakeDaemon) bumped() []wire.Bump {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]wire.Bump(nil), d.bumps...)
}

func writeCRecord(t *testing.T, gen uint32) string {
	t.Helper()
	dir := t.TempDir()
	if err := WriteRecord(dir, &Record{Generation: &gen, Socket: "/run/genid/genid.sock"}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A checkpoint the C plugin recorded, restored where CRIU did not load the
// plugin (only the action script or Notify runs): nothing bumped yet, and
// the restore must, even on a host already past the record (two restores of
// one checkpoint must not share a generation).
func TestRestoreOfPluginRecordWithoutPlugin(t *testing.T) {
	for _, tc := range []struct {
		name       string
		page, want uint32
		env        string
	}{
		{name: "host behind", page: 3, want: 6},
		{name: "host ahead", page: 9, want: 10},
		{name: "inherited value, not past the record", page: 9, want: 10, env: "5"},
		{name: "inherited value, past the page", page: 9, want: 10, env: "12"},
		{name: "not a number", page: 9, want: 10, env: "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv(RestoredEnv, tc.env)
			}
			d := startFakeDaemon(t, tc.page)
			images := writeCRecord(t, 5)
			r, err := Restore(context.Background(), images, d.dir)
			if err != nil {
				t.Fatal(err)
			}
			if !r.Bumped || r.Generation != tc.want || d.pg.Load() != tc.want {
				t.Fatalf("restore %+v, page %d: want a bump to %d", r, d.pg.Load(), tc.want)
			}
			if b := d.bumped(); len(b) != 1 || b[0].Min != 6 || b[0].Reason != Reason {
				t.Fatalf("bumps %+v, want one with min 6, reason %s", b, Reason)
			}
			if s := r.String(); !strings.Contains(s, "recorded by the CRIU plugin") || !strings.Contains(s, fmt.Sprintf("bumped to %d", tc.want)) {
				t.Fatalf("log line %q", s)
			}
		})
	}
}

// The same checkpoint, where the plugin ran and bumped past its record
// before the tasks were forked, and says so in criu's environment, which
// the action script inherits: no second bump.
func TestRestoreOfPluginRecordAfterPlugin(t *testing.T) {
	t.Setenv(RestoredEnv, "6")
	d := startFakeDaemon(t, 6)
	images := writeCRecord(t, 5)
	r, err := Restore(context.Background(), images, d.dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Bumped || r.Generation != 6 || len(d.bumped()) != 0 || d.pg.Load() != 6 {
		t.Fatalf("restore %+v, bumps %+v, page %d: want no bump", r, d.bumped(), d.pg.Load())
	}
	if s := r.String(); !strings.Contains(s, "not bumped") {
		t.Fatalf("log line %q", s)
	}
}

// A record of the action script or Notify is always bumped past, even when
// the page is already ahead: no plugin bumps for it.
func TestRestoreOfOwnRecordAlwaysBumps(t *testing.T) {
	d := startFakeDaemon(t, 9)
	images := t.TempDir()
	g := uint32(5)
	WriteRecord(images, &Record{Generation: &g, Writer: "action-script"})
	r, err := Restore(context.Background(), images, d.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Bumped || r.Generation != 10 {
		t.Fatalf("restore %+v, want a bump to 10", r)
	}
	// No record at all: a bump by one.
	r, err = Restore(context.Background(), t.TempDir(), d.dir)
	if err != nil || !r.Bumped || r.Generation != 11 || r.Record != nil {
		t.Fatalf("restore without a record: %+v %v", r, err)
	}
}

// Notify, as go-criu calls it, takes the same path and logs what it did.
func TestNotifyPostRestoreOfPluginRecord(t *testing.T) {
	for _, tc := range []struct {
		page, want uint32
		bumps      int
	}{
		{page: 2, want: 8, bumps: 1}, // the plugin did not run
		{page: 8, want: 9, bumps: 1}, // it did, but in criu, whose environment Notify does not see
	} {
		d := startFakeDaemon(t, tc.page)
		images := writeCRecord(t, 7)
		var log bytes.Buffer
		n := NewNotify(nil, images, d.dir)
		n.Logger = slog.New(slog.NewTextHandler(&log, nil))
		if err := n.PostRestore(1); err != nil {
			t.Fatal(err)
		}
		if n.Restored != tc.want || len(d.bumped()) != tc.bumps || d.pg.Load() != tc.want {
			t.Fatalf("page %d: restored %d, bumps %+v, page now %d; want %d after %d bumps",
				tc.page, n.Restored, d.bumped(), d.pg.Load(), tc.want, tc.bumps)
		}
		if !strings.Contains(log.String(), "generation 7 recorded by the CRIU plugin") {
			t.Fatalf("log: %s", log.String())
		}
	}
}

// A restore that cannot reach the daemon fails: the restore must not resume
// tasks that were told nothing.
func TestRestoreWithoutDaemonFails(t *testing.T) {
	d := startFakeDaemon(t, 3)
	os.Remove(filepath.Join(d.dir, genid.SocketFile))
	if _, err := Restore(context.Background(), writeCRecord(t, 5), d.dir); !errors.Is(err, genid.ErrUnreachable) {
		t.Fatalf("restore without a daemon: %v", err)
	}
}
