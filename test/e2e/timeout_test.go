package e2e

import (
	"strings"
	"syscall"
	"testing"
)

// A client never hangs: a daemon that accepts and does not answer (here
// stopped with SIGSTOP) ends each command at its --timeout with exit 5;
// one that is gone is reported at once, on one line saying what to start,
// with exit 3 (well within a --timeout that would otherwise end it with 5).
func TestClientNeverHangs(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	mustCtl(t, bin, dir, "scope", "create", "s1")
	mustCtl(t, bin, dir, "bump")

	// T stands for --timeout and its value (before a command's NAME).
	stuck := [][]string{
		{"status", "T"}, {"bump", "T"}, {"outdated", "T"}, {"watch", "T"}, {"scope", "list", "T"},
		{"scope", "create", "T", "s2"}, {"scope", "remove", "T", "s1"}, {"status", "--scope", "s1", "T"},
		{"history", "T"}, {"metrics", "T"},
	}
	withTimeout := func(args []string, d string) []string {
		var out []string
		for _, a := range args {
			if a == "T" {
				out = append(out, "--timeout", d)
			} else {
				out = append(out, a)
			}
		}
		return out
	}
	d.cmd.Process.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { d.cmd.Process.Signal(syscall.SIGCONT) })
	for _, args := range stuck {
		r := ctl(t, bin, dir, withTimeout(args, "300ms")...)
		if r.code != 5 || !strings.Contains(r.err, "did not answer within 300ms (--timeout)") {
			t.Errorf("genidctl %v, daemon stopped: %+v, want exit 5 saying what passed", args, r)
		}
	}
	// The page needs no daemon.
	if g := mustCtl(t, bin, dir, "get", "--timeout", "300ms"); g != "1" {
		t.Errorf("get with the daemon stopped: %q", g)
	}
	d.kill(syscall.SIGKILL)

	gone := append(stuck, []string{"wait-watchers", "T"}, []string{"watch", "--once", "T"})
	for _, args := range gone {
		r := ctl(t, bin, dir, withTimeout(args, "30s")...)
		lines := strings.Split(strings.TrimSpace(r.err), "\n")
		if r.code != 3 || len(lines) != 1 || !strings.HasSuffix(lines[0], "; start it: genidctl --run-dir "+dir+" daemon") {
			t.Errorf("genidctl %v, daemon gone: %+v, want exit 3 and one line saying what to start", args, r)
		}
	}
}
