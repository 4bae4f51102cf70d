package torture

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/genid-project/genid/internal/proctest"
)

// genidctlPath is the genidctl binary under test: $GENIDCTL (the Makefile
// sets it), else ../../bin/genidctl. The cases run as root.
func genidctlPath(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the torture cases run as root (they kill daemons, act as other users, raise limits)")
	}
	abs, err := proctest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// tortureRunDir makes a run dir with a short path (a scope's socket path
// must fit in sun_path), 0755 and root's, as /run/genid is.
func tortureRunDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "gt")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// daemonArgv is the command line of a daemon serving runDir with its state
// in stateDir, with no hypervisor backend and no hooks (the cases bump
// themselves), plus extra daemon flags.
func daemonArgv(runDir, stateDir string, extra ...string) []string {
	argv := []string{"--run-dir", runDir, "daemon", "--backends", "none", "--hooks-dir", "", "--state-dir", stateDir}
	return append(argv, extra...)
}

// raiseNofile raises this process's RLIMIT_NOFILE to at least n (the
// hard limit too, if it is lower: root may); the daemons it starts inherit
// it (Go restores the limit it found at start in its children only when
// the program never set it itself).
func raiseNofile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	lim.Cur, lim.Max = n, max(lim.Max, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raise RLIMIT_NOFILE to %d: %v", n, err)
	}
}

// promValues reads the unlabelled series of a Prometheus text exposition
// (go_goroutines, process_open_fds, ...), by name.
func promValues(b []byte) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.ContainsRune(line, '{') {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	return out
}

// logTail is the last lines of a log.
func logTail(b []byte, lines int) string {
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}
