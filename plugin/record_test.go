package plugin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
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
	// The plugin bumps at restore: the action script and Notify do not.
	if _, err := Bump(context.Background(), dir, t.TempDir()); !errors.Is(err, ErrPluginRecord) {
		t.Fatalf("bump of a plugin's checkpoint: %v", err)
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
