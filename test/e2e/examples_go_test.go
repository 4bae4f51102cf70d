package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
)

// TestGoExamples builds the four programs of examples/go and runs each, as
// an unprivileged user, against the real daemon with real bumps: what it
// prints is what a user sees, and the daemon's status tells whether it
// acked.
func TestGoExamples(t *testing.T) {
	bin := genidctl(t)
	exes := buildGoExamples(t)
	for _, name := range []string{"watchdog", "hotpath", "eventloop"} {
		t.Run(name, func(t *testing.T) { testRebuilder(t, bin, exes, name) })
	}
	t.Run("orchestrator", func(t *testing.T) { testOrchestrator(t, bin, exes) })
}

// buildGoExamples builds examples/go/... into a directory nobody may read,
// and returns it.
func buildGoExamples(t *testing.T) string {
	t.Helper()
	out := runDir(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the examples are built with go: %v", err)
	}
	cmd := exec.Command(goBin, "build", "-o", out+"/", "../../examples/go/...")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if r := runCmd(t, cmd, 5*time.Minute); r.code != 0 {
		t.Fatalf("go build ./examples/go/...: exit %d\n%s\n%s", r.code, r.out, r.err)
	}
	return out
}

// example is one of the programs, running as nobody.
type example struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	seen   []string // every line read so far
	stderr bytes.Buffer
	done   chan error
}

func startExample(t *testing.T, exes, dir, name string, args ...string) *example {
	t.Helper()
	cmd := exec.Command(filepath.Join(exes, name), args...)
	cmd.Env = []string{"GENID_RUN_DIR=" + dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	e := &example{t: t, cmd: cmd, lines: make(chan string, 100), done: make(chan error, 1)}
	cmd.Stderr = &e.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	e.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			e.lines <- sc.Text()
		}
		close(e.lines)
		e.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("%s printed %q, stderr:\n%s", name, e.seen, e.stderr.String())
		}
	})
	return e
}

// next returns the next line, failing the test if none comes in 10 s.
func (e *example) next() string {
	e.t.Helper()
	select {
	case l, ok := <-e.lines:
		if !ok {
			e.t.Fatalf("%s exited early: %v", e.cmd.Path, <-e.done)
		}
		e.seen = append(e.seen, l)
		return l
	case <-time.After(10 * time.Second):
		e.t.Fatalf("%s printed nothing in 10 s", e.cmd.Path)
		return ""
	}
}

// expect checks that the next line is want.
func (e *example) expect(want string) {
	e.t.Helper()
	if l := e.next(); l != want {
		e.t.Fatalf("%s printed %q, want %q", filepath.Base(e.cmd.Path), l, want)
	}
}

// pause stops the program (SIGSTOP), and waits until it is.
func (e *example) pause() {
	e.t.Helper()
	e.cmd.Process.Signal(syscall.SIGSTOP)
	stat := fmt.Sprintf("/proc/%d/stat", e.cmd.Process.Pid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(stat)
		if err != nil {
			e.t.Fatal(err)
		}
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "T" {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s not stopped by SIGSTOP: %s", e.cmd.Path, b)
		}
	}
}

// quiet checks that nothing is printed for a while.
func (e *example) quiet(d time.Duration) {
	e.t.Helper()
	select {
	case l, ok := <-e.lines:
		e.t.Fatalf("%s printed %q (open %v), want nothing yet", filepath.Base(e.cmd.Path), l, ok)
	case <-time.After(d):
	}
}

// stop ends the program as a user would (SIGTERM; the event loop: the end
// of its input), and checks that it exits cleanly having printed nothing
// more, and nothing on stderr.
func (e *example) stop() {
	e.t.Helper()
	if filepath.Base(e.cmd.Path) == "eventloop" {
		e.stdin.Close()
	} else {
		e.cmd.Process.Signal(syscall.SIGTERM)
	}
	var rest []string
	timeout := time.After(10 * time.Second)
	for open := true; open; {
		var l string
		select {
		case l, open = <-e.lines:
			if open {
				rest = append(rest, l)
			}
		case <-timeout:
			e.t.Fatalf("%s did not stop", e.cmd.Path)
		}
	}
	if err := <-e.done; err != nil {
		e.t.Fatalf("%s: %v", e.cmd.Path, err)
	}
	if len(rest) > 0 || e.stderr.Len() > 0 {
		e.t.Fatalf("%s at its end printed %q, stderr %q", e.cmd.Path, rest, e.stderr.String())
	}
}

// testRebuilder: a program that rebuilds at each generation, and acks.
func testRebuilder(t *testing.T, bin, exes, name string) {
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	e := startExample(t, exes, dir, name)
	e.expect("ready at generation 0")
	waitRegistered(t, bin, dir, 1)
	request := func(req string) {
		t.Helper()
		if name == "eventloop" {
			if _, err := io.WriteString(e.stdin, req+"\n"); err != nil {
				t.Fatal(err)
			}
		}
	}
	served := func(req string, gen int) {
		t.Helper()
		if name == "eventloop" {
			e.expect(fmt.Sprintf("served %s at generation %d", req, gen))
		}
	}
	serve := func(req string, gen int) {
		t.Helper()
		request(req)
		served(req, gen)
	}
	acked := func(gen int) {
		t.Helper()
		mustCtl(t, bin, dir, "wait-watchers", "--timeout", "10s")
		if st := getStatus(t, bin, dir); st.Watchers != 1 || st.Outdated != 0 || st.WatcherList[0].Acked != uint32(gen) {
			t.Fatalf("after generation %d: %+v", gen, st)
		}
	}
	serve("a", 0)

	for gen := 1; gen <= 2; gen++ {
		mustCtl(t, bin, dir, "bump")
		e.expect(fmt.Sprintf("rebuilt at generation %d", gen))
		acked(gen)
		serve(fmt.Sprintf("r%d", gen), gen)
	}

	// A request that comes with a restore is served with the new key: the
	// event loop takes the generation before it serves, whatever woke it.
	// (Stopped meanwhile, it finds both at once.)
	e.pause()
	mustCtl(t, bin, dir, "bump")
	request("now")
	e.cmd.Process.Signal(syscall.SIGCONT)
	e.expect("rebuilt at generation 3")
	served("now", 3)
	acked(3)

	// Two restores in a row: it may see the first, not both; it rebuilds
	// at most once a generation and ends at the newest.
	mustCtl(t, bin, dir, "bump")
	mustCtl(t, bin, dir, "bump", "--min", "9")
	for l := e.next(); l != "rebuilt at generation 9"; l = e.next() {
		if l != "rebuilt at generation 4" || slices.Contains(e.seen[:len(e.seen)-1], l) {
			t.Fatalf("after two bumps: %q (printed %q)", l, e.seen)
		}
	}
	acked(9)
	serve("z", 9)

	// The daemon restarts (an upgrade): the program registers with the
	// new one by itself, and rebuilds at its next generation.
	if err := d.kill(syscall.SIGTERM); err != nil {
		t.Fatalf("daemon: %v", err)
	}
	startDaemon(t, bin, dir)
	waitRegistered(t, bin, dir, 1)
	e.quiet(200 * time.Millisecond)
	mustCtl(t, bin, dir, "bump")
	e.expect("rebuilt at generation 10")
	acked(10)
	serve("after the restart", 10)
	e.stop()
}

// testOrchestrator: it pauses, rebuilds and acks for itself, waits for the
// other watchers and resumes; at its timeout it says how many are late and
// resumes all the same; a generation that comes while it waits starts it
// over.
func testOrchestrator(t *testing.T, bin, exes string) {
	dir := runDir(t)
	startDaemon(t, bin, dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Another watcher, slow to rebuild: this test acks for it when it
	// chooses.
	c, err := genid.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := c.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	e := startExample(t, exes, dir, "orchestrator", "-timeout", "2s")
	e.expect("ready at generation 0")
	waitRegistered(t, bin, dir, 2)

	// It waits for the other watcher, and resumes when it acked.
	mustCtl(t, bin, dir, "bump")
	e.expect("paused at generation 1")
	e.expect("rebuilt at generation 1")
	e.quiet(500 * time.Millisecond) // the other is outdated
	if st := getStatus(t, bin, dir); st.Outdated != 1 {
		t.Fatalf("with the orchestrator acked and the other not: %+v", st)
	}
	if err := other.Ack(ctx, 1); err != nil {
		t.Fatal(err)
	}
	e.expect("resumed at generation 1")

	// A new generation while it waits: it starts over, and resumes once.
	mustCtl(t, bin, dir, "bump")
	e.expect("paused at generation 2")
	e.expect("rebuilt at generation 2")
	mustCtl(t, bin, dir, "bump")
	e.expect("paused at generation 3")
	e.expect("rebuilt at generation 3")
	if err := other.Ack(ctx, 3); err != nil {
		t.Fatal(err)
	}
	e.expect("resumed at generation 3")

	// The other never acks: at the timeout it says so, and resumes.
	mustCtl(t, bin, dir, "bump")
	start := time.Now()
	e.expect("paused at generation 4")
	e.expect("rebuilt at generation 4")
	e.expect("timeout at generation 4: 1 outdated")
	// (Give or take the daemon's timer slack.)
	if took := time.Since(start); took < 2*time.Second-100*time.Millisecond {
		t.Fatalf("timed out after %v, before its 2 s", took)
	}
	e.expect("resumed at generation 4")
	if st := getStatus(t, bin, dir); st.Outdated != 1 || st.Watchers != 2 {
		t.Fatalf("after the timeout: %+v", st)
	}
	e.stop()
	if got := strings.Count(strings.Join(e.seen, "\n"), "rebuilt at"); got != 4 {
		t.Fatalf("%d rebuilds for 4 generations: %q", got, e.seen)
	}
}
