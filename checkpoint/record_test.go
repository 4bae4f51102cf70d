package checkpoint

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/genidtest"
)

func u32p(v uint32) *uint32 { return &v }

// sample is a record with every field set.
var sample = &Record{
	Version: 2,
	Time:    time.Unix(1790000000, 0).UTC(),
	RunDir:  "/run/genid",
	Scopes: []ScopeRecord{
		{Name: "", Generation: u32p(5)},
		{Name: "c1", Generation: u32p(9), Mounts: []Mount{{ID: 111, Path: "/run/genid"}, {ID: 112, File: true, Path: "/dev/sysgenid"}}},
		{Name: "c2"},
	},
	Sockets: []Socket{
		{Inode: 4242, Watcher: true, Nonblock: true, Acked: 9, Scope: "c1", Path: "/run/genid/scopes/c1/genid.sock"},
		{Inode: 4243, Acked: 0, Scope: "", Path: "/run/genid/genid.sock"},
	},
}

// sampleBytes is sample in the record's layout, byte for byte: what the C
// plugin writes and reads (plugin/criu/genid-criu.c).
const sampleBytes = "47454e4944524543" + "0200" + "0000" + "aa000000" + // magic, version, length
	"803bb16a00000000" + "00" + "0a00" + "2f72756e2f67656e6964" + // time, writer "", run dir
	"0300" + // 3 scopes
	"00" + "01" + "05000000" + "0000" + // host: generation 5, no mounts
	"026331" + "01" + "09000000" + "0200" + // c1: generation 9, 2 mounts
	"6f000000" + "00" + "0a00" + "2f72756e2f67656e6964" + // 111: the directory at /run/genid
	"70000000" + "01" + "0d00" + "2f6465762f73797367656e6964" + // 112: the page at /dev/sysgenid
	"026332" + "00" + "00000000" + "0000" + // c2: no generation
	"02000000" + // 2 sockets
	"92100000" + "03" + "09000000" + "026331" + "1f00" + "2f72756e2f67656e69642f73636f7065732f63312f67656e69642e736f636b" +
	"93100000" + "00" + "00000000" + "00" + "1500" + "2f72756e2f67656e69642f67656e69642e736f636b"

func TestRecordLayout(t *testing.T) {
	b, err := sample.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != sampleBytes {
		t.Fatalf("layout changed:\n got %s\nwant %s", got, sampleBytes)
	}
	r, err := DecodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r, sample) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", r, sample)
	}
}

func TestRecordRefused(t *testing.T) {
	good, _ := sample.Encode()
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "no magic"},
		{"other file", []byte(`{"version": 1}`), "no magic"},
		{"version 4", append(append([]byte("GENIDREC"), 4, 0, 0, 0), good[12:]...), "version 4, not 2 to 3"},
		{"version 1", append(append([]byte("GENIDREC"), 1, 0, 0, 0), good[12:]...), "version 1, not 2 to 3"},
		{"VMClock mount in version 2", bytes.Replace(good, []byte("\x70\x00\x00\x00\x01"), []byte("\x70\x00\x00\x00\x03"), 1), "mount flags 0x3 (version 2)"},
		{"cut short", good[:len(good)-1], "cut short"},
		{"padded", append(append([]byte{}, good...), 0), "cut short or padded"},
		{"length lies", func() []byte { b := append([]byte{}, good...); b[12]--; return b[:len(b)-1] }(), "unexpected EOF"},
		{"bad name", bytes.Replace(good, []byte("\x02c1"), []byte("\x02.1"), 1), "starts with"},
		{"unknown socket scope", bytes.Replace(good, []byte("\x02c1\x1f\x00"), []byte("\x02c9\x1f\x00"), 1), "does not list"},
		{"socket flags", bytes.Replace(good, []byte("\x92\x10\x00\x00\x03"), []byte("\x92\x10\x00\x00\x07"), 1), "socket flags"},
	} {
		_, err := DecodeRecord(tc.b)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// A record with a VMClock page's mount is version 3; one without stays
// version 2 (what genid before the VMClock page reads), unless it says 3.
func TestRecordVersions(t *testing.T) {
	v3 := *sample
	v3.Version = 0
	v3.Scopes = append([]ScopeRecord{}, sample.Scopes...)
	v3.Scopes[1].Mounts = append(append([]Mount{}, sample.Scopes[1].Mounts...), Mount{ID: 113, File: true, VMClock: true, Path: "/dev/vmclock0"})
	b, err := v3.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// The version, and the new mount: 113, flags 3, its path.
	if b[8] != 3 || !bytes.Contains(b, []byte("\x71\x00\x00\x00\x03\x0d\x00/dev/vmclock0")) {
		t.Fatalf("record with a VMClock mount: % x", b)
	}
	r, err := DecodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	v3.Version = 3
	if !reflect.DeepEqual(r, &v3) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", r, &v3)
	}
	// VMClock says which file: it implies File.
	v3.Scopes[1].Mounts[2].File = false
	if again, err := v3.Encode(); err != nil || !bytes.Equal(again, b) {
		t.Fatalf("a VMClock mount without File: %v\n% x", err, again)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"flag 2 alone", bytes.Replace(b, []byte("\x71\x00\x00\x00\x03"), []byte("\x71\x00\x00\x00\x02"), 1), "mount flags 0x2 (version 3)"},
		{"flag 4", bytes.Replace(b, []byte("\x71\x00\x00\x00\x03"), []byte("\x71\x00\x00\x00\x07"), 1), "mount flags 0x7 (version 3)"},
	} {
		if _, err := DecodeRecord(tc.b); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}

	plain := *sample
	for v, want := range map[int]byte{0: 2, 1: 2, 2: 2, 3: 3} {
		plain.Version = v
		b, err := plain.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if b[8] != want {
			t.Errorf("Version %d without a VMClock mount: written as %d, want %d", v, b[8], want)
		}
	}
	plain.Version = 4
	if _, err := plain.Encode(); err == nil {
		t.Error("a version this genid does not know was written")
	}
}

func FuzzDecodeRecord(f *testing.F) {
	good, _ := sample.Encode()
	f.Add(good)
	v3 := *sample
	v3.Scopes = []ScopeRecord{{Name: "c1", Mounts: []Mount{{ID: 1, VMClock: true, Path: "/dev/vmclock0"}}}}
	v3.Sockets = nil
	good3, _ := v3.Encode()
	f.Add(good3)
	f.Add(good[:40])
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		if err != nil {
			return
		}
		// What decodes encodes back to the same bytes.
		again, err := r.Encode()
		if err != nil {
			t.Fatalf("a decoded record does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("decode/encode changed the bytes:\n%x\n%x", b, again)
		}
	})
}

// A record of genid before scopes is read for image-info, and refused for
// a restore.
func TestOldRecord(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, OldRecordName), []byte(`{"version": 1, "generation": 5, "socket": "/run/genid/genid.sock",
		"time": "2026-11-22T18:00:00Z", "sockets": [{"inode": 4242, "watcher": true, "acked": 5, "nonblock": true, "path": "/run/genid/genid.sock"}]}`), 0o644)
	r, err := ReadRecord(dir)
	if !errors.Is(err, ErrOldRecord) || r == nil || r.Version != 1 || *r.Scopes[0].Generation != 5 || len(r.Sockets) != 1 {
		t.Fatalf("old record: %+v, %v", r, err)
	}
	if _, err := Restore(context.Background(), dir, t.TempDir()); !errors.Is(err, ErrOldRecord) {
		t.Fatalf("restore of an old record: %v", err)
	}
}

// Recording after the C plugin keeps the plugin's richer record.
func TestRecordAfterPlugin(t *testing.T) {
	dir := t.TempDir()
	if err := WriteRecord(dir, sample); err != nil {
		t.Fatal(err)
	}
	if err := RecordGeneration(dir, t.TempDir(), "action-script"); err != nil {
		t.Fatal(err)
	}
	if r, err := ReadRecord(dir); err != nil || len(r.Sockets) != 2 || r.Writer != "" {
		t.Fatalf("the plugin's record was replaced: %+v %v", r, err)
	}
	if min, err := MinForRestore(sample.Scope("")); min != 6 || err != nil {
		t.Fatalf("min %d %v", min, err)
	}
	if min, err := MinForRestore(nil); min != 0 || err != nil {
		t.Fatalf("no record: min %d %v", min, err)
	}
	if _, err := MinForRestore(&ScopeRecord{Generation: u32p(^uint32(0))}); err == nil {
		t.Fatal("a record at the maximum must refuse a restore bump")
	}
}

// startDaemon starts a real daemon on a run dir of its own, at generation
// gen.
func startDaemon(t *testing.T, gen uint32) *genidtest.Server {
	t.Helper()
	d := genidtest.NewServer(t)
	if gen > 0 {
		if _, err := d.Bump(gen, "setup"); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// lastReason is the reason of d's last bump.
func lastReason(t *testing.T, d *genidtest.Server) string {
	t.Helper()
	st := d.Status()
	if st.LastBump == nil {
		t.Fatalf("no bump yet: %+v", st)
	}
	return st.LastBump.Reason
}

func writeCRecord(t *testing.T, gen uint32) string {
	t.Helper()
	dir := t.TempDir()
	if err := WriteRecord(dir, &Record{RunDir: "/run/genid", Scopes: []ScopeRecord{{Generation: &gen}}}); err != nil {
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
			d := startDaemon(t, tc.page)
			images := writeCRecord(t, 5)
			r, err := Restore(context.Background(), images, d.RunDir)
			if err != nil {
				t.Fatal(err)
			}
			if !r.Bumped || r.Generation != tc.want || d.Generation() != tc.want || lastReason(t, d) != Reason {
				t.Fatalf("restore %+v, generation %d, reason %q: want a bump past 5 to %d, reason %s", r, d.Generation(), lastReason(t, d), tc.want, Reason)
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
	d := startDaemon(t, 6)
	images := writeCRecord(t, 5)
	r, err := Restore(context.Background(), images, d.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Bumped || r.Generation != 6 || d.Generation() != 6 || lastReason(t, d) != "setup" {
		t.Fatalf("restore %+v, generation %d, last reason %q: want no bump", r, d.Generation(), lastReason(t, d))
	}
	if s := r.String(); !strings.Contains(s, "not bumped") {
		t.Fatalf("log line %q", s)
	}
}

// A record of the action script or Notify is always bumped past, even when
// the page is already ahead: no plugin bumps for it.
func TestRestoreOfOwnRecordAlwaysBumps(t *testing.T) {
	d := startDaemon(t, 9)
	images := t.TempDir()
	g := uint32(5)
	WriteRecord(images, &Record{Writer: "action-script", Scopes: []ScopeRecord{{Generation: &g}}})
	r, err := Restore(context.Background(), images, d.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Bumped || r.Generation != 10 {
		t.Fatalf("restore %+v, want a bump to 10", r)
	}
	// No record at all: a bump by one.
	r, err = Restore(context.Background(), t.TempDir(), d.RunDir)
	if err != nil || !r.Bumped || r.Generation != 11 || r.Record != nil {
		t.Fatalf("restore without a record: %+v %v", r, err)
	}
}

// Notify, as go-criu calls it, takes the same path and logs what it did.
func TestNotifyPostRestoreOfPluginRecord(t *testing.T) {
	for _, tc := range []struct {
		page, want uint32
	}{
		{page: 2, want: 8}, // the plugin did not run
		{page: 8, want: 9}, // it did, but in criu, whose environment Notify does not see
	} {
		d := startDaemon(t, tc.page)
		images := writeCRecord(t, 7)
		var log bytes.Buffer
		n := NewNotify(nil, images, d.RunDir)
		n.Logger = slog.New(slog.NewTextHandler(&log, nil))
		if err := n.PostRestore(1); err != nil {
			t.Fatal(err)
		}
		if n.Restored != tc.want || d.Generation() != tc.want || lastReason(t, d) != Reason {
			t.Fatalf("page %d: restored %d, generation now %d (%s); want %d", tc.page, n.Restored, d.Generation(), lastReason(t, d), tc.want)
		}
		if !strings.Contains(log.String(), "generation 7 recorded by the CRIU plugin") {
			t.Fatalf("log: %s", log.String())
		}
	}
}

// A restore that cannot reach the daemon fails: the restore must not resume
// tasks that were told nothing.
func TestRestoreWithoutDaemonFails(t *testing.T) {
	d := startDaemon(t, 3)
	d.Close()
	if _, err := Restore(context.Background(), writeCRecord(t, 5), d.RunDir); !errors.Is(err, genid.ErrUnreachable) {
		t.Fatalf("restore without a daemon: %v", err)
	}
}
