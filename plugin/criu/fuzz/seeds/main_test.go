package main

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/genid-project/genid/checkpoint"
)

// Every seed is a record the Go reader takes back as written.
func TestSamples(t *testing.T) {
	for name, r := range samples() {
		b, err := r.Encode()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		back, err := checkpoint.DecodeRecord(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if again, _ := back.Encode(); !bytes.Equal(again, b) {
			t.Fatalf("%s does not survive a round trip", name)
		}
	}
}

// Every reject is refused by the Go reader; the same edit of its sample
// is taken, where one is (the reader refuses it for that edit alone).
func TestRejects(t *testing.T) {
	for name, b := range rejects() {
		if _, err := checkpoint.DecodeRecord(b); err == nil {
			t.Errorf("%s taken", name)
		}
	}
}

// The Go fuzzer's corpus, as the C fuzzer's seeds: the bytes Go fuzzes.
func TestGoCorpusBytes(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("go test fuzz v1\n[]byte(\"GENID\\x00\\xff\")\n"), 0o644)
	if b, err := goCorpusBytes(good); err != nil || string(b) != "GENID\x00\xff" {
		t.Fatalf("%q, %v", b, err)
	}
	for _, bad := range []string{"go test fuzz v1\nstring(\"x\")\n", "go test fuzz v2\n[]byte(\"x\")\n", "go test fuzz v1\n[]byte(\"x)\n"} {
		f := filepath.Join(dir, "bad")
		os.WriteFile(f, []byte(bad), 0o644)
		if _, err := goCorpusBytes(f); err == nil {
			t.Errorf("%q taken", bad)
		}
	}
	if _, err := goCorpusBytes(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file taken")
	}
}

// writeSeeds writes every sample, and the Go corpus when run from the
// repository's root (as make does).
func TestWriteSeeds(t *testing.T) {
	dir := t.TempDir()
	wd, _ := os.Getwd()
	t.Chdir(filepath.Join(wd, "../../../.."))
	if err := writeSeeds(dir); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	corpus, _ := filepath.Glob("checkpoint/testdata/fuzz/FuzzDecodeRecord/*")
	if len(corpus) == 0 || len(ents) != len(samples())+len(rejects())+len(corpus) {
		t.Fatalf("%d seeds written, want %d samples, %d rejects and %d of the Go corpus", len(ents), len(samples()), len(rejects()), len(corpus))
	}
}

// TestMain lets the test binary stand in for the C fuzzer: with
// SEEDS_FAKE_FUZZER set, it prints the Go reader's verdicts ("agree"), the
// opposite ("disagree"), or none ("mute") for each file it is given. With
// GENID_ROUNDTRIP_OUT set too, it stands in for record_roundtrip: it
// writes back each record taken as the C writer does, or ("roundtrip-"
// modes) with a byte changed, a time from before, not at all, or also
// for a record it refused.
func TestMain(m *testing.M) {
	mode := os.Getenv("SEEDS_FAKE_FUZZER")
	if mode == "" {
		os.Exit(m.Run())
	}
	for _, f := range os.Args[1:] {
		b, _ := os.ReadFile(f)
		h := fnv.New64a()
		h.Write(b)
		_, err := checkpoint.DecodeRecord(b)
		accept := (err == nil) != (mode == "disagree")
		v := "reject: fake"
		if w := rejectWhy["reject-sockets-min"]; mode == "pinned" && bytes.Equal(b, rejects()["reject-sockets-min"]) {
			v = "reject: " + w
		}
		if accept {
			v = "accept"
		}
		if mode != "mute" {
			fmt.Printf("%016x %s\n", h.Sum64(), v)
		}
		out := os.Getenv("GENID_ROUNDTRIP_OUT")
		if out == "" || mode == "roundtrip-none" || (err != nil && mode != "roundtrip-refused") {
			continue
		}
		r, _ := checkpoint.DecodeRecord(b)
		if r == nil {
			r = &checkpoint.Record{}
		}
		if len(r.RunDir) > pluginRunDirMax {
			continue
		}
		r.Version, r.Writer, r.Time = 0, "", time.Now()
		if mode == "roundtrip-old" {
			r.Time = time.Unix(1, 0)
		}
		w, _ := r.Encode()
		if mode == "roundtrip-byte" {
			w[len(w)-1] ^= 1
		}
		os.WriteFile(filepath.Join(out, fmt.Sprintf("%016x", h.Sum64())), w, 0o644)
	}
	os.Exit(0)
}

// The C reader's reason is pinned where the verdict alone does not tell
// its checks apart.
func TestPinnedReason(t *testing.T) {
	dir := t.TempDir()
	for name, b := range rejects() {
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	self, _ := os.Executable()
	t.Setenv("SEEDS_FAKE_FUZZER", "agree")
	if err := compare(self, false, false, []string{dir}); err == nil || !strings.Contains(err.Error(), "not \"reject: more sockets") {
		t.Errorf("another reason taken: %v", err)
	}
	t.Setenv("SEEDS_FAKE_FUZZER", "pinned")
	if err := compare(self, false, false, []string{dir}); err != nil {
		t.Error(err)
	}
}

// The round trip fails where a record taken is not written back as the Go
// writer writes it, or one refused is written back.
func TestRoundtrip(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"plugin", "vmclock"} {
		b, _ := samples()[name].Encode()
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
	}
	os.WriteFile(filepath.Join(dir, "refused"), []byte("GENIDREC"), 0o644)
	// A run dir the plugin cannot hold: read, not written back.
	long, _ := (&checkpoint.Record{RunDir: "/" + strings.Repeat("r", pluginRunDirMax)}).Encode()
	os.WriteFile(filepath.Join(dir, "long"), long, 0o644)
	self, _ := os.Executable()
	for mode, want := range map[string]string{
		"agree": "", "roundtrip-none": "no such file", "roundtrip-old": "stamped",
		"roundtrip-byte": "differing from byte", "roundtrip-refused": "was written",
	} {
		t.Setenv("SEEDS_FAKE_FUZZER", mode)
		err := compare(self, true, false, []string{dir})
		if (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", mode, err)
		}
	}
}

// compare runs the fuzzer on every file and fails where its verdict is
// not the Go reader's, or missing.
func TestCompare(t *testing.T) {
	dir := t.TempDir()
	for name, r := range samples() {
		b, _ := r.Encode()
		os.WriteFile(filepath.Join(dir, name), b, 0o644)
		os.WriteFile(filepath.Join(dir, name+"-cut"), b[:len(b)-1], 0o644)
	}
	self, _ := os.Executable()
	for mode, want := range map[string]string{"agree": "", "disagree": "disagree", "mute": "no verdict"} {
		t.Setenv("SEEDS_FAKE_FUZZER", mode)
		err := compare(self, false, false, []string{dir})
		if (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", mode, err)
		}
		if mode == "disagree" && err != nil && strings.Count(err.Error(), "\n") != 2*len(samples()) {
			t.Errorf("disagree: every file should be listed: %v", err)
		}
	}
	t.Setenv("SEEDS_FAKE_FUZZER", "")
	if err := compare(self, false, false, []string{filepath.Join(dir, "missing")}); err == nil {
		t.Error("a missing dir compared")
	}
	if err := compare("/nonexistent", false, false, []string{dir}); err == nil {
		t.Error("a missing fuzzer compared")
	}
}
