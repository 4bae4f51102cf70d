package e2e

import (
	"bufio"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cFlags are the warnings the C client and the examples are held to.
var cFlags = []string{"-std=gnu11", "-Wall", "-Wextra", "-Werror"}

// cCompilers are the compilers genid.h is built with: `make c-deps` (part
// of `make test`) installs clang where it is missing.
func cCompilers(t *testing.T) []string {
	t.Helper()
	for _, cc := range []string{"gcc", "clang"} {
		if _, err := exec.LookPath(cc); err != nil {
			t.Fatalf("%s not found: run `make c-deps` (make test does)", cc)
		}
	}
	return []string{"gcc", "clang"}
}

// compileC builds src (relative to test/e2e) against genid.h into out.
func compileC(t *testing.T, cc, out, src string, flags ...string) {
	t.Helper()
	args := append(append(slices.Clone(cFlags), flags...), "-pthread", "-I../../plugin/criu", "-o", out, src)
	b, err := exec.Command(cc, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", cc, strings.Join(args, " "), err, b)
	}
}

// examplesC are the four programs of examples/c.
var examplesC = []string{"watchdog", "eventloop", "hotpath", "orchestrator"}

// buildExamplesC builds each example with every compiler, and returns the
// paths of gcc's builds (in dir, readable by nobody).
func buildExamplesC(t *testing.T, dir string) map[string]string {
	t.Helper()
	exes := map[string]string{}
	for _, cc := range cCompilers(t) {
		for _, name := range examplesC {
			out := filepath.Join(dir, name+"-"+cc)
			compileC(t, cc, out, "../../examples/c/"+name+".c", "-O2")
			if cc == "gcc" {
				exes[name] = out
			}
		}
	}
	return exes
}

// cprog is a running example: its stdout lines arrive on lines, and all of
// them are kept in seen.
type cprog struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string

	mu   sync.Mutex
	seen []string
}

// startProg runs exe with args as nobody: the examples need no privilege.
func startProg(t *testing.T, name, exe string, args ...string) *cprog {
	t.Helper()
	p := &cprog{name: name, cmd: exec.Command(exe, args...), lines: make(chan string, 100)}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr strings.Builder
	p.cmd.Stderr = &stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.seen = append(p.seen, sc.Text())
			p.mu.Unlock()
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("%s printed %q, stderr: %s", name, p.output(), stderr.String())
		}
	})
	return p
}

// expect reads p's lines until want; a line it skips fails the test.
func (p *cprog) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatalf("%s exited, want %q", p.name, want)
		}
		if l != want {
			t.Fatalf("%s printed %q, want %q", p.name, l, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%s printed nothing, want %q", p.name, want)
	}
}

func (p *cprog) output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen)
}

// TestExamplesC runs the four C examples of the vmgenid proposal's
// workflows against the real daemon, as nobody, and checks what their user
// sees: each rebuilds exactly once per bump and acks, the event loop keeps
// serving its requests with the state of the current generation, the
// orchestrator resumes only once every watcher acked, and when one never
// does, it resumes on its timeout and says how many are outdated.
func TestExamplesC(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	startDaemon(t, bin, dir)
	exes := buildExamplesC(t, dir)

	watchdog := startProg(t, "watchdog", exes["watchdog"], dir)
	loop := startProg(t, "eventloop", exes["eventloop"], dir)
	hot := startProg(t, "hotpath", exes["hotpath"], dir)
	orch := startProg(t, "orchestrator", exes["orchestrator"], dir, "2000")
	all := []*cprog{watchdog, loop, hot, orch}
	for _, p := range all {
		p.expect(t, "ready at generation 0")
	}
	waitRegistered(t, bin, dir, 4)
	ping := func(gen string) {
		t.Helper()
		if _, err := io.WriteString(loop.stdin, "ping\n"); err != nil {
			t.Fatal(err)
		}
		loop.expect(t, "pong at generation "+gen)
	}
	ping("0") // served while genid has nothing to say

	for _, gen := range []string{"1", "2"} {
		mustCtl(t, bin, dir, "bump")
		for _, p := range []*cprog{watchdog, loop, hot} {
			p.expect(t, "rebuilt at generation "+gen)
		}
		orch.expect(t, "paused at generation "+gen)
		orch.expect(t, "rebuilt at generation "+gen)
		orch.expect(t, "resumed at generation "+gen)
		mustCtl(t, bin, dir, "wait-watchers", "--timeout", "10s")
		if st := getStatus(t, bin, dir); st.Watchers != 4 || st.Outdated != 0 {
			t.Fatalf("after bump %s: %d watchers, %d outdated", gen, st.Watchers, st.Outdated)
		}
		ping(gen)
	}

	// A watcher that never acks: the orchestrator's barrier times out.
	startWatch(t, bin, dir, "--exec", "false")
	waitRegistered(t, bin, dir, 5)
	mustCtl(t, bin, dir, "bump")
	for _, p := range []*cprog{watchdog, loop, hot} {
		p.expect(t, "rebuilt at generation 3")
	}
	orch.expect(t, "paused at generation 3")
	orch.expect(t, "rebuilt at generation 3")
	orch.expect(t, "timeout: 1 watchers outdated at generation 3")
	orch.expect(t, "resumed at generation 3")
	if st := getStatus(t, bin, dir); st.Outdated != 1 {
		t.Fatalf("after bump 3: %d outdated, want only the one that never acks", st.Outdated)
	}
	ping("3")

	// Exactly once per bump, and nothing else.
	rebuilt := []string{"ready at generation 0", "rebuilt at generation 1", "rebuilt at generation 2", "rebuilt at generation 3"}
	for _, p := range []*cprog{watchdog, hot} {
		if got := p.output(); !slices.Equal(got, rebuilt) {
			t.Errorf("%s printed %q, want %q", p.name, got, rebuilt)
		}
	}
	if got := slices.DeleteFunc(loop.output(), func(l string) bool { return strings.HasPrefix(l, "pong") }); !slices.Equal(got, rebuilt) {
		t.Errorf("eventloop printed %q, want %q", got, rebuilt)
	}
	orchestrated := []string{"ready at generation 0"}
	for _, gen := range []string{"1", "2"} {
		orchestrated = append(orchestrated, "paused at generation "+gen, "rebuilt at generation "+gen, "resumed at generation "+gen)
	}
	orchestrated = append(orchestrated, "paused at generation 3", "rebuilt at generation 3",
		"timeout: 1 watchers outdated at generation 3", "resumed at generation 3")
	if got := orch.output(); !slices.Equal(got, orchestrated) {
		t.Errorf("orchestrator printed %q, want %q", got, orchestrated)
	}
}
