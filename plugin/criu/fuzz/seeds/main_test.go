package main

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	if len(corpus) == 0 || len(ents) != len(samples())+len(corpus) {
		t.Fatalf("%d seeds written, want %d samples and %d of the Go corpus", len(ents), len(samples()), len(corpus))
	}
}

// TestMain lets the test binary stand in for the C fuzzer: with
// SEEDS_FAKE_FUZZER set, it prints the Go reader's verdicts ("agree"), the
// opposite ("disagree"), or none ("mute") for each file it is given.
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
		if accept {
			v = "accept"
		}
		if mode != "mute" {
			fmt.Printf("%016x %s\n", h.Sum64(), v)
		}
	}
	os.Exit(0)
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
		err := compare(self, []string{dir})
		if (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", mode, err)
		}
		if mode == "disagree" && err != nil && strings.Count(err.Error(), "\n") != 2*len(samples()) {
			t.Errorf("disagree: every file should be listed: %v", err)
		}
	}
	t.Setenv("SEEDS_FAKE_FUZZER", "")
	if err := compare(self, []string{filepath.Join(dir, "missing")}); err == nil {
		t.Error("a missing dir compared")
	}
	if err := compare("/nonexistent", []string{dir}); err == nil {
		t.Error("a missing fuzzer compared")
	}
}
