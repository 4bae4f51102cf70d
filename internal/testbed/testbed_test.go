package testbed

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadFacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "facts")
	text := "hash=abc\nnot a fact\ndeb.criu=4.1.1-1\nrun.hw_breakpoints.detail=the child ran past it (0)\nempty=\n"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := ReadFacts(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"hash": "abc", "deb.criu": "4.1.1-1", "run.hw_breakpoints.detail": "the child ran past it (0)", "empty": ""}
	if len(m) != len(want) {
		t.Fatalf("facts %q, want %q", m, want)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}
	if _, err := ReadFacts(filepath.Join(t.TempDir(), "none")); !os.IsNotExist(err) {
		t.Fatalf("a missing file: %v", err)
	}
}

func TestCRIUMode(t *testing.T) {
	for _, tc := range []struct {
		facts map[string]string
		want  string
	}{
		{map[string]string{"run.hw_breakpoints": "fire", "run.criu_fault": "none"},
			"hardware breakpoints: fire; CRIU_FAULT=none"},
		{map[string]string{"run.hw_breakpoints": "never", "run.hw_breakpoints.detail": "no trap within 1 s", "run.criu_fault": "130"},
			"hardware breakpoints: never (no trap within 1 s); CRIU_FAULT=130"},
		{map[string]string{"hash": "abc"},
			"criu mode unknown: the facts have no run.hw_breakpoints (not a test bed run?)"},
	} {
		if got := CRIUMode(tc.facts); got != tc.want {
			t.Errorf("CRIUMode(%q) = %q, want %q", tc.facts, got, tc.want)
		}
	}
}
