package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/genid-project/genid/genid"
)

// TestExitCodes runs genidctl's command line in process: a wrong command
// line exits 2 and a missing daemon 3, never one for the other (the
// end-to-end tests check the built binary the same way).
func TestExitCodes(t *testing.T) {
	t.Setenv("GENID_RUN_DIR", "")
	t.Setenv("CRTOOLS_SCRIPT_ACTION", "")
	empty := t.TempDir() // no page: no daemon ever ran here
	withPage := t.TempDir()
	if err := os.WriteFile(filepath.Join(withPage, genid.PageFile), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"foo"}, exitUsage},
		{[]string{"help", "foo"}, exitUsage},
		{[]string{"help", "bump"}, 0},
		{[]string{"bump", "--min", "abc"}, exitUsage},
		{[]string{"bump", "--bogus"}, exitUsage},
		{[]string{"wait-watchers", "--timeout", "xyz"}, exitUsage},
		{[]string{"wait-watchers", "--timeout", "-1s"}, exitUsage},
		{[]string{"status", "extra"}, exitUsage},
		{[]string{"outdated", "extra"}, exitUsage},
		{[]string{"daemon", "extra"}, exitUsage},
		{[]string{"daemon", "--max-watchers", "-1"}, exitUsage},
		{[]string{"daemon", "--max-conns", "0"}, exitUsage},
		{[]string{"daemon", "--frame-timeout", "-1s"}, exitUsage},
		{[]string{"daemon", "--max-frame", "0"}, exitUsage},
		{[]string{"daemon", "--max-frame", "8"}, exitUsage},
		{[]string{"status"}, exitUnreachable},
		{[]string{"get"}, exitUnreachable},
		{[]string{"bump"}, exitUnreachable},
		// --run-dir after the command wins over the one before it.
		{[]string{"get", "--run-dir", withPage}, 0},
		{[]string{"status", "--run-dir", withPage}, exitUnreachable}, // a page, no socket
		{[]string{"hooks-d", "--dir", "-"}, exitUsage},               // two files
		{[]string{"hooks-d", "extra"}, exitUsage},
		{[]string{"cdi-spec", "extra"}, exitUsage},
		{[]string{"hooks-d", "--dir", filepath.Join(t.TempDir(), "hooks.d")}, 0},
		{[]string{"cdi-spec", "--dir", filepath.Join(t.TempDir(), "cdi")}, 0},
		{[]string{"oci-config"}, exitUsage},
	} {
		args := append([]string{"genidctl", "--run-dir", empty}, tc.args...)
		if got := run(args); got != tc.want {
			t.Errorf("%v: exit %d, want %d", tc.args, got, tc.want)
		}
	}
}
