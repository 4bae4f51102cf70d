package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/testbed"
)

// restoreResult is what the inner run (in the test bed) reports.
type restoreResult struct {
	With    []float64 `json:"with_plugin_ms"`
	Without []float64 `json:"without_plugin_ms"`
	Empty   []float64 `json:"empty_plugin_ms"` // with a plugin that does nothing
	Gen     uint32    `json:"generation_after"`
	Mode    string    `json:"criu_mode"` // from the test bed's facts
	Error   string    `json:"error,omitempty"`
}

// emptyPlugin is the source of a CRIU plugin that does nothing, built in
// the test bed: restores with it tell CRIU's cost of loading any plugin
// from genid's own.
//
//go:embed testdata/empty-plugin.c
var emptyPlugin string

// criuTimeout bounds each criu command of the figure: a criu that hangs
// (waiting for a breakpoint that never fires, say) fails it within a
// minute, with its log, instead of never.
const criuTimeout = time.Minute

// restoreOuter runs `bench restore-inner` in the CRIU test bed, with the
// plugin installed where CRIU loads it without flags.
func restoreOuter(b *bench, rounds int) (*restoreResult, error) {
	root, err := filepath.Abs(b.repo)
	if err != nil {
		return nil, err
	}
	// Building the bed from an empty cache takes a few minutes; a hang
	// fails the figure.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, b.testbed, "build")
	killGroup(build)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("testbed build: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	rel := func(p string) (string, error) {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		r, err := filepath.Rel(root, abs)
		if err != nil || strings.HasPrefix(r, "..") {
			return "", fmt.Errorf("%s is outside %s", p, root)
		}
		return "/src/" + r, nil
	}
	selfIn, err := rel(self)
	if err != nil {
		return nil, err
	}
	ctlIn, err := rel(b.genidctl)
	if err != nil {
		return nil, err
	}
	plugin, err := filepath.Abs(b.plugin)
	if err != nil {
		return nil, err
	}
	// The run's own bound is for what the criu commands' bounds do not
	// cover; 3×rounds restores take a minute or less.
	inner := time.Duration(600+rounds) * time.Second
	ctx, cancel = context.WithTimeout(context.Background(), inner+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.testbed, "run", "--timeout", strconv.Itoa(int(inner.Seconds())), "--bind", root+":/src",
		"--ro-bind", plugin+":/usr/lib/criu/genid-criu.so", "-w", "/src",
		"--", selfIn, "restore-inner", "-genidctl", ctlIn, "-rounds", strconv.Itoa(rounds))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	killGroup(cmd)
	err = cmd.Run()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r restoreResult
	if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &r); jerr != nil {
		return nil, fmt.Errorf("restore in the test bed: %v, %v: %s", err, jerr, out.String())
	}
	if r.Error != "" {
		return nil, fmt.Errorf("restore in the test bed (%s): %s", r.Mode, r.Error)
	}
	return &r, err
}

// restoreInner runs in the test bed: a daemon, a small process (sleep)
// dumped once with the plugin, then restored 3×rounds times, in turn with
// the plugin (it reads the record and bumps past it), without it
// (CRIU_LIBS_DIR pointing at an empty dir) and with a plugin that does
// nothing instead (CRIU_LIBS_DIR holding only that). Each restore is timed
// from exec to exit of `criu restore -d`; the restored process is then
// killed.
func restoreInner(genidctl string, rounds int) (r restoreResult) {
	defer func() {
		if e := recover(); e != nil {
			r.Error = fmt.Sprint(e)
		}
	}()
	if facts, err := testbed.ReadFacts("/etc/genid-testbed"); err != nil {
		r.Mode = "criu mode unknown: " + err.Error()
	} else {
		r.Mode = testbed.CRIUMode(facts)
	}
	must := func(err error, what string) {
		if err != nil {
			panic(fmt.Sprintf("%s: %v", what, err))
		}
	}
	// Restored processes are reparented to us: reap them ourselves.
	must(unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
	run := "/run/genid-bench"
	os.RemoveAll(run)
	must(os.MkdirAll(run, 0o755), "run dir")
	var dlog bytes.Buffer
	daemon := exec.Command(genidctl, "--run-dir", run, "daemon", "--backends", "none", "--log-level", "warn")
	daemon.Stdout, daemon.Stderr = &dlog, &dlog
	must(daemon.Start(), "daemon")
	defer func() {
		daemon.Process.Signal(syscall.SIGTERM)
		waitBounded(daemon, 10*time.Second)
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(run, "genid.sock")); err == nil {
			break
		}
		if i > 2000 {
			panic("daemon did not start: " + dlog.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	work, err := os.MkdirTemp("/tmp", "restore-")
	must(err, "work dir")
	images, empty, other := filepath.Join(work, "img"), filepath.Join(work, "no-plugins"), filepath.Join(work, "empty-plugin")
	for _, d := range []string{images, empty, other} {
		must(os.MkdirAll(d, 0o755), d)
	}
	src := filepath.Join(work, "empty-plugin.c")
	must(os.WriteFile(src, []byte(emptyPlugin), 0o644), "empty plugin")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	out, err := exec.CommandContext(ctx, "gcc", "-O2", "-shared", "-fPIC", "-o", filepath.Join(other, "empty.so"), src).CombinedOutput()
	cancel()
	must(err, "gcc of the empty plugin: "+string(out))

	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	must(err, "null")
	p := exec.Command("sleep", "1000000")
	p.Stdin, p.Stdout, p.Stderr = null, null, null
	p.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	must(p.Start(), "spawn")
	pid := p.Process.Pid
	time.Sleep(100 * time.Millisecond)

	env := append(os.Environ(), "GENID_RUN_DIR="+run)
	// criu runs in a process group of its own, killed whole at the bound.
	criu := func(extraEnv []string, log string, args ...string) error {
		c := exec.Command("criu", append(args, "-D", images, "-o", log)...)
		c.Env = append(append([]string{}, env...), extraEnv...)
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		var out bytes.Buffer
		c.Stdout, c.Stderr = &out, &out
		if err := c.Start(); err != nil {
			return err
		}
		timer := time.AfterFunc(criuTimeout, func() { syscall.Kill(-c.Process.Pid, syscall.SIGKILL) })
		err := c.Wait()
		if !timer.Stop() {
			err = fmt.Errorf("still running after %v, killed: %w", criuTimeout, err)
		}
		if err != nil {
			b, _ := os.ReadFile(filepath.Join(images, log))
			return fmt.Errorf("criu %s: %v: %s\n--- %s (tail):\n%s", args[0], err, out.Bytes(), log, tail(string(b), 30))
		}
		return nil
	}
	must(criu(nil, "dump.log", "dump", "-t", strconv.Itoa(pid)), "dump")
	p.Wait()
	if _, err := os.Stat(filepath.Join(images, "genid.record")); err != nil {
		panic("the plugin wrote no record at dump: " + err.Error())
	}
	// kinds: genid's plugin, none, the empty plugin.
	dirs := []string{"", empty, other}
	restore := func(kind, i int) float64 {
		var extra []string
		if dirs[kind] != "" {
			extra = []string{"CRIU_LIBS_DIR=" + dirs[kind]}
		}
		t0 := time.Now()
		must(criu(extra, fmt.Sprintf("restore-%d.log", i), "restore", "-d"), "restore")
		el := time.Since(t0)
		must(unix.Kill(pid, unix.SIGKILL), "kill restored")
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
		return float64(el.Nanoseconds()) / 1e6
	}
	for kind := range dirs { // warm-up, each kind
		restore(kind, -1-kind)
	}
	for i := range rounds {
		// Rotate which goes first, so drift hits all alike.
		var t [3]float64
		for k := range dirs {
			kind := (i + k) % len(dirs)
			t[kind] = restore(kind, len(dirs)*i+k)
		}
		r.With, r.Without, r.Empty = append(r.With, t[0]), append(r.Without, t[1]), append(r.Empty, t[2])
	}
	b, _ := os.ReadFile(filepath.Join(run, "generation"))
	if len(b) >= 4 {
		r.Gen = uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
	}
	return r
}

// killGroup makes cmd, run with a context, the leader of a process group
// that the context's end kills whole (the test bed's script and what it
// started).
func killGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
