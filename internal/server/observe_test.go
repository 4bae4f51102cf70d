package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/servertest"
	"github.com/genid-project/genid/internal/wire"
)

func admin(t *testing.T, d *daemon) *genid.Admin {
	t.Helper()
	a, err := genid.OpenAdmin(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func history(t *testing.T, a *genid.Admin, opts genid.HistoryOptions) []genid.HistoryEntry {
	t.Helper()
	list, err := a.History(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// watcher registers a watcher of the host scope.
func watcher(t *testing.T, dir string) *genid.Watcher {
	t.Helper()
	c, err := genid.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	w, err := c.Watch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// ack waits for gen and acks it.
func ack(t *testing.T, w *genid.Watcher, gen uint32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := w.Wait(ctx)
	if err != nil || got != gen {
		t.Fatalf("wait: %d, %v; want %d", got, err, gen)
	}
	if err := w.Ack(ctx, gen); err != nil {
		t.Fatal(err)
	}
}

func TestHistoryRecordsBumps(t *testing.T) {
	d, log := startLog(t, "", server.Config{})
	a := admin(t, d)
	ctx := context.Background()
	if _, err := a.Bump(ctx, "", 10, "maintenance"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateScope(ctx, "web", genid.ScopeOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.BumpAll(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Bump("web", 0, "vmgenid"); err != nil {
		t.Fatal(err)
	}
	all := history(t, a, genid.HistoryOptions{EveryScope: true})
	if len(all) != 4 {
		t.Fatalf("%d entries, want 4: %+v", len(all), all)
	}
	e := all[0]
	if e.Seq != 1 || e.Scope != "" || e.Previous != 0 || e.Generation != 10 || e.Reason != "maintenance" ||
		e.By != "admin" || e.PID != os.Getpid() || e.UID != uint32(os.Getuid()) || e.Min != 10 || e.AllScopes ||
		e.Barrier != genid.BarrierCleared || e.BarrierNS != 0 || e.Outdated != 0 || e.Hooks != "" {
		t.Errorf("admin bump: %+v", e)
	}
	// The bump of every scope: the host's, then web's, each its own entry.
	if e := all[1]; e.Scope != "" || e.Previous != 10 || e.Generation != 11 || e.Reason != "manual" || !e.AllScopes {
		t.Errorf("bump of every scope, host: %+v", e)
	}
	if e := all[2]; e.Scope != "web" || e.Previous != 0 || e.Generation != 1 || !e.AllScopes || e.Seq != 3 {
		t.Errorf("bump of every scope, web: %+v", e)
	}
	if e := all[3]; e.Scope != "web" || e.Reason != "vmgenid" || e.By != "daemon" || e.AllScopes {
		t.Errorf("daemon's bump: %+v", e)
	}
	if web := history(t, a, genid.HistoryOptions{Scope: "web"}); len(web) != 2 || web[0].Seq != 3 || web[1].Seq != 4 {
		t.Errorf("web's history: %+v", web)
	}
	if host := history(t, a, genid.HistoryOptions{Max: 1}); len(host) != 1 || host[0].Seq != 2 {
		t.Errorf("the host's latest: %+v", host)
	}
	// The log tells each bump with its entry's fields, those it has.
	var lines []string
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, "msg=bumped") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 4 || !strings.Contains(lines[0], "min=10") || !strings.Contains(lines[0], "scope=host ") || !strings.Contains(lines[1], "all_scopes=true") ||
		strings.Contains(strings.Join(lines[1:], "\n"), "min=") || strings.Contains(lines[0]+lines[3], "all_scopes") {
		t.Errorf("the bumps' log lines:\n%s", strings.Join(lines, "\n"))
	}
	// A removed scope's bumps stay told.
	if err := a.RemoveScope(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if web := history(t, a, genid.HistoryOptions{Scope: "web"}); len(web) != 2 {
		t.Errorf("web's history after its removal: %+v", web)
	}
}

func TestHistoryRefusals(t *testing.T) {
	d := start(t, "", server.Config{})
	a := admin(t, d)
	if _, err := a.History(context.Background(), genid.HistoryOptions{Scope: "web", EveryScope: true}); !errors.Is(err, genid.ErrBadRequest) {
		t.Errorf("every scope and one: %v", err)
	}
	// On the wire: a name with FlagEveryScope, unknown flags, a short payload.
	c := d.dialAdmin(t)
	for i, p := range [][]byte{
		named("web", wire.History{Flags: wire.FlagEveryScope}.Encode()),
		named("", wire.U32s(2, 0)),
		named("", wire.U32(1)),
	} {
		send(t, c, wire.OpHistory, uint32(i+1), p)
		if f := recv(t, c); f.Status != wire.StatusBadRequest {
			t.Errorf("request %d: %v %q", i, f.Status, f.Payload)
		}
	}
	// A scope's own socket has no history.
	m := d.dial(t)
	send(t, m, wire.OpHistory, 9, named("", wire.History{}.Encode()))
	if f := recv(t, m); f.Status != wire.StatusUnknownOp {
		t.Errorf("history on a scope's socket: %v", f.Status)
	}
	d.alive(t)
}

func TestBarrierTime(t *testing.T) {
	d := start(t, "", server.Config{})
	a := admin(t, d)
	ctx := context.Background()
	w1, w2 := watcher(t, d.dir), watcher(t, d.dir)
	if _, err := a.Bump(ctx, "", 0, "one"); err != nil {
		t.Fatal(err)
	}
	if e := history(t, a, genid.HistoryOptions{})[0]; e.Barrier != genid.BarrierPending || e.Outdated != 2 {
		t.Fatalf("before any ack: %+v", e)
	}
	ack(t, w1, 1)
	time.Sleep(20 * time.Millisecond) // the barrier's time is at least this
	if e := history(t, a, genid.HistoryOptions{})[0]; e.Barrier != genid.BarrierPending {
		t.Fatalf("one of two acked: %+v", e)
	}
	ack(t, w2, 1)
	if err := a.WaitWatchers(ctx, "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	e := history(t, a, genid.HistoryOptions{})[0]
	took, ok := e.BarrierTime()
	if !ok || took < 20*time.Millisecond || took > 10*time.Second {
		t.Fatalf("barrier: %+v", e)
	}
	// A bump before the barrier cleared supersedes it.
	a.Bump(ctx, "", 0, "two")
	a.Bump(ctx, "", 0, "three")
	list := history(t, a, genid.HistoryOptions{})
	if list[1].Barrier != genid.BarrierSuperseded || list[2].Barrier != genid.BarrierPending {
		t.Fatalf("superseded: %+v", list)
	}
	// A watcher that goes clears it too.
	w1.Close()
	ack(t, w2, 3)
	servertest.Eventually(t, func() error {
		if e := history(t, a, genid.HistoryOptions{})[2]; e.Barrier != genid.BarrierCleared {
			return fmt.Errorf("after the last outdated watcher acked: %+v", e)
		}
		return nil
	})
}

func TestBarrierOfRemovedScope(t *testing.T) {
	d := start(t, "", server.Config{})
	a := admin(t, d)
	ctx := context.Background()
	if _, err := a.CreateScope(ctx, "web", genid.ScopeOptions{}); err != nil {
		t.Fatal(err)
	}
	watcher(t, filepath.Join(d.dir, "scopes", "web"))
	a.Bump(ctx, "web", 0, "")
	a.RemoveScope(ctx, "web")
	if e := history(t, a, genid.HistoryOptions{Scope: "web"})[0]; e.Barrier != genid.BarrierRemoved {
		t.Errorf("%+v", e)
	}
}

// The history outlives the daemon: a new one on the run dir tells the old
// bumps, numbers on from them, and what was left open is lost.
func TestHistorySurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	d, log := startLog(t, dir, server.Config{})
	a := admin(t, d)
	ctx := context.Background()
	w := watcher(t, dir)
	a.Bump(ctx, "", 0, "first")
	ack(t, w, 1)
	if err := a.WaitWatchers(ctx, "", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	a.Bump(ctx, "", 0, "second") // its barrier stays open
	before := history(t, a, genid.HistoryOptions{})
	d.stop()
	a.Close()
	logged(t, log, "history resumed", false)

	// A daemon killed while the hooks of a bump (of a scope since
	// removed) ran, its barrier cleared: the file's last entry.
	js, err := json.Marshal(genid.HistoryEntry{Seq: 3, Scope: "web", Previous: 0, Generation: 1, Reason: "hooked",
		By: "admin", Barrier: genid.BarrierCleared, Hooks: genid.HooksPending})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "state", "history.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.Write(append(js, '\n'))
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}

	d, log = startLog(t, dir, server.Config{})
	logged(t, log, "history resumed", true)
	logged(t, log, "lines skipped", false)
	a = admin(t, d)
	a.Bump(ctx, "", 0, "fourth")
	after := history(t, a, genid.HistoryOptions{EveryScope: true})
	if len(after) != 4 {
		t.Fatalf("after a restart: %+v", after)
	}
	if after[0].Reason != "first" || after[0].Barrier != genid.BarrierCleared || after[0].BarrierNS != before[0].BarrierNS || after[0].Hooks != "" {
		t.Errorf("first: %+v, was %+v", after[0], before[0])
	}
	if after[1].Reason != "second" || after[1].Barrier != genid.BarrierLost || after[1].Hooks != "" {
		t.Errorf("second: %+v", after[1])
	}
	if after[2].Reason != "hooked" || after[2].Barrier != genid.BarrierCleared || after[2].Hooks != genid.HooksLost {
		t.Errorf("the bump whose hooks ran: %+v", after[2])
	}
	if after[3].Seq != 4 || after[3].Previous != 2 || after[3].Generation != 3 {
		t.Errorf("fourth: %+v", after[3])
	}
}

// A bump is in the history's file at once, not when the daemon stops: a
// daemon that dies loses at most the changes of the last moments.
func TestHistoryWrittenAtOnce(t *testing.T) {
	dir := t.TempDir()
	d := start(t, dir, server.Config{})
	if _, err := d.bump(0, "now"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "state", "history.jsonl")
	servertest.WaitFor(t, "the bump in "+path, func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(b, []byte(`"reason":"now"`))
	})
}

// The history keeps the last 256 bumps, across rewrites of its file and
// across a restart; a torn last line (a daemon killed mid-write) is skipped.
func TestHistoryBounded(t *testing.T) {
	dir := t.TempDir()
	d := start(t, dir, server.Config{})
	for i := range 600 {
		if _, err := d.bump(0, fmt.Sprint("b", i)); err != nil {
			t.Fatal(err)
		}
	}
	d.stop()
	path := filepath.Join(dir, "state", "history.jsonl")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("history file mode %#o", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if n := bytes.Count(b, []byte("\n")); n >= 2*256 {
		t.Errorf("history file of %d lines: never rewritten", n)
	}
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":601,"time":"2026-`)
	f.Close()

	d, log := startLog(t, dir, server.Config{})
	logged(t, log, "history: lines skipped", true)
	list := history(t, admin(t, d), genid.HistoryOptions{EveryScope: true})
	if len(list) != 256 || list[0].Seq != 600-255 || list[255].Seq != 600 || list[255].Reason != "b599" {
		t.Fatalf("%d entries, %d to %d", len(list), list[0].Seq, list[len(list)-1].Seq)
	}
	if gen, _ := d.bump(0, ""); gen != 601 {
		t.Fatalf("generation %d", gen)
	}
	if list := history(t, admin(t, d), genid.HistoryOptions{Max: 1}); list[0].Seq != 601 {
		t.Errorf("numbered on from %+v", list[0])
	}
}

// hookDir makes a hooks directory with the given scripts (name: body).
func hookDir(t *testing.T, hooks map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "hooks.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range hooks {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// hooksOf waits until the hooks of the latest host bump are done.
func hooksOf(t *testing.T, a *genid.Admin) genid.HistoryEntry {
	t.Helper()
	var e genid.HistoryEntry
	servertest.Eventually(t, func() error {
		e = history(t, a, genid.HistoryOptions{Max: 1})[0]
		if e.Hooks != genid.HooksDone {
			return fmt.Errorf("hooks not done: %+v", e)
		}
		return nil
	})
	return e
}

func TestHooksRunInOrder(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	line := `echo "$0 $GENID_SCOPE/$GENID_PREVIOUS/$GENID_GENERATION/$GENID_REASON/$GENID_SEQ $GENID_RUN_DIR" >>` + out
	dir := hookDir(t, map[string]string{
		"20-second":   line + "; echo said",
		"10-first":    line,
		"30_third":    line + "; exit 3",
		"40.sh":       line, // not a run-parts name
		"50-backup~":  line,
		"60-not-exec": line,
	})
	os.Chmod(filepath.Join(dir, "60-not-exec"), 0o644)
	log := &proctest.Buffer{}
	d := start(t, "", server.Config{HooksDir: dir, Logger: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	a := admin(t, d)
	if _, err := a.Bump(context.Background(), "", 7, "clone"); err != nil {
		t.Fatal(err)
	}
	e := hooksOf(t, a)
	// Each run is logged, an error only where there is one; the output of
	// a hook that wrote some, at debug level.
	var runs, outputs []string
	for _, l := range strings.Split(log.String(), "\n") {
		switch {
		case strings.Contains(l, `msg="hook ran"`) || strings.Contains(l, `msg="hook failed"`):
			runs = append(runs, l)
		case strings.Contains(l, `msg="hook output"`):
			outputs = append(outputs, l)
		}
	}
	if len(runs) != 3 || strings.Contains(strings.Join(runs, "\n"), " err=") || strings.Count(strings.Join(runs, "\n"), "scope=host") != 3 || len(outputs) != 1 ||
		!strings.Contains(outputs[0], "hook=20-second") || !strings.Contains(outputs[0], `output="said\n"`) {
		t.Errorf("the hooks' log lines:\n%s\n%s", strings.Join(runs, "\n"), strings.Join(outputs, "\n"))
	}
	want := fmt.Sprintf("%[1]s/10-first /0/7/clone/1 %[2]s\n%[1]s/20-second /0/7/clone/1 %[2]s\n%[1]s/30_third /0/7/clone/1 %[2]s\n", dir, d.dir)
	if b, _ := os.ReadFile(out); string(b) != want {
		t.Errorf("hooks ran:\n%s\nwant:\n%s", b, want)
	}
	if len(e.HookResults) != 3 {
		t.Fatalf("results: %+v", e.HookResults)
	}
	for i, name := range []string{"10-first", "20-second", "30_third"} {
		r := e.HookResults[i]
		wantExit := 0
		if i == 2 {
			wantExit = 3
		}
		if r.Name != name || r.Exit != wantExit || r.TimedOut || r.Error != "" || r.DurationNS <= 0 || r.OK() != (i < 2) {
			t.Errorf("result %d: %+v", i, r)
		}
	}
}

// A bump returns while its hooks run, and a hook that outlives its timeout
// is killed, with what it started.
func TestHooksTimeoutAndBumpNeverWaits(t *testing.T) {
	tmp := t.TempDir()
	started, release := filepath.Join(tmp, "started"), filepath.Join(tmp, "release")
	if err := exec.Command("mkfifo", release).Run(); err != nil {
		t.Fatal(err)
	}
	dir := hookDir(t, map[string]string{
		"10-slow":  `[ "$GENID_SEQ" = 1 ] || exit 0; touch ` + started + "; read x <" + release + "; echo released",
		"20-stuck": `[ "$GENID_SEQ" = 1 ] || exit 0; sleep 60 & echo $! >` + filepath.Join(tmp, "child") + "; wait",
		"30-after": "touch " + filepath.Join(tmp, "after"),
	})
	d := start(t, "", server.Config{HooksDir: dir, HookTimeout: time.Second})
	a := admin(t, d)
	ctx := context.Background()
	gen, err := a.Bump(ctx, "", 0, "")
	if err != nil || gen != 1 {
		t.Fatal(gen, err)
	}
	servertest.Eventually(t, func() error { _, err := os.Stat(started); return err })
	// The first hook is blocked: bumps go on, each queueing its run.
	for want := uint32(2); want <= 3; want++ {
		if gen, err := a.Bump(ctx, "", 0, ""); err != nil || gen != want {
			t.Fatal(gen, err)
		}
	}
	for _, e := range history(t, a, genid.HistoryOptions{}) {
		if e.Hooks != genid.HooksPending {
			t.Fatalf("while the first hook runs: %+v", e)
		}
	}
	f, err := os.OpenFile(release, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("go\n")
	f.Close()
	var e genid.HistoryEntry
	servertest.Eventually(t, func() error {
		e = history(t, a, genid.HistoryOptions{})[0]
		if e.Hooks != genid.HooksDone {
			return fmt.Errorf("%+v", e)
		}
		return nil
	})
	if r := e.HookResults; len(r) != 3 || !r[0].OK() || !r[1].TimedOut || r[1].Exit != -1 || !strings.Contains(r[1].Error, "killed after 1s") || !r[2].OK() {
		t.Fatalf("results: %+v", r)
	}
	if took := time.Duration(e.HookResults[1].DurationNS); took < time.Second || took > 5*time.Second {
		t.Errorf("the stuck hook took %v", took)
	}
	b, _ := os.ReadFile(filepath.Join(tmp, "child"))
	var pid int
	fmt.Sscan(string(b), &pid)
	if pid <= 0 {
		t.Fatalf("child pid %q", b)
	}
	servertest.Eventually(t, func() error {
		if err := syscallKill0(pid); err == nil {
			return fmt.Errorf("the stuck hook's child %d still runs", pid)
		}
		return nil
	})
	// The queued bumps' hooks ran after.
	servertest.Eventually(t, func() error {
		for _, e := range history(t, a, genid.HistoryOptions{}) {
			if e.Hooks != genid.HooksDone {
				return fmt.Errorf("%+v", e)
			}
		}
		return nil
	})
}

// A hooks directory, or a hook, that someone else could write to is not
// run; the results are in the directory's order all the same, and the
// refusals counted as not run.
func TestHooksRefusedWhenWritableByOthers(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	dir := hookDir(t, map[string]string{"10-a": "echo a >>" + out, "20-b": "echo b >>" + out, "30-c": "echo c >>" + out})
	os.Chmod(filepath.Join(dir, "20-b"), 0o775)
	d := start(t, "", server.Config{HooksDir: dir})
	a := admin(t, d)
	a.Bump(context.Background(), "", 0, "")
	e := hooksOf(t, a)
	refused := func(r genid.HookResult, why string) bool {
		return r.Exit == -1 && r.DurationNS == 0 && !r.OK() && strings.Contains(r.Error, why)
	}
	if r := e.HookResults; len(r) != 3 || r[0].Name != "10-a" || !r[0].OK() || r[1].Name != "20-b" ||
		!refused(r[1], "writable by its group or others") || r[2].Name != "30-c" || !r[2].OK() {
		t.Errorf("results: %+v", e.HookResults)
	}
	if b, _ := os.ReadFile(out); string(b) != "a\nc\n" {
		t.Errorf("ran: %q", b)
	}
	os.Chmod(dir, 0o777)
	a.Bump(context.Background(), "", 0, "")
	e = hooksOf(t, a)
	if len(e.HookResults) != 1 || !refused(e.HookResults[0], "hooks directory refused") {
		t.Errorf("results: %+v", e.HookResults)
	}
	if b, _ := os.ReadFile(out); string(b) != "a\nc\n" {
		t.Errorf("ran: %q", b)
	}
	text, err := a.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mfs := scrape(t, text)
	for _, c := range []struct {
		hook, result string
		n            float64
	}{{"10-a", "ok", 1}, {"20-b", "not_run", 1}, {dir, "not_run", 1}, {"30-c", "ok", 1}} {
		if v, _ := value(t, mfs, "genid_hook_runs_total", "hook", c.hook, "result", c.result); v != c.n {
			t.Errorf("hook %s, %s: %v runs counted, want %v", c.hook, c.result, v, c.n)
		}
	}
}

func syscallKill0(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Signal(syscall.Signal(0))
}

// scrape parses exposition text with the Prometheus library's own parser.
func scrape(t *testing.T, text []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	return mfs
}

// value returns the value of the series of family name with labels.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		for i := 0; i < len(labels); i += 2 {
			if got[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func TestMetrics(t *testing.T) {
	d, log := startLog(t, "", server.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.ServeMetrics(ln)
	a := admin(t, d)
	ctx := context.Background()
	if _, err := a.CreateScope(ctx, "web", genid.ScopeOptions{}); err != nil {
		t.Fatal(err)
	}
	w1, _ := watcher(t, d.dir), watcher(t, d.dir)
	watcher(t, filepath.Join(d.dir, "scopes", "web"))
	a.Bump(ctx, "", 5, "x")
	ack(t, w1, 5)
	a.BumpAll(ctx, "")
	d.BumpAll("vmgenid")
	// A refusal: an ack of a wrong generation.
	if err := w1.Ack(ctx, 99); !errors.Is(err, genid.ErrStale) {
		t.Fatal(err)
	}

	viaAdmin, err := a.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	viaHTTP, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for how, text := range map[string][]byte{"admin socket": viaAdmin, "listener": viaHTTP} {
		mfs := scrape(t, text)
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"genid_generation", []string{"scope", ""}, 7},
			{"genid_generation", []string{"scope", "web"}, 2},
			{"genid_watchers", []string{"scope", ""}, 2},
			{"genid_watchers", []string{"scope", "web"}, 1},
			{"genid_outdated_watchers", []string{"scope", ""}, 2},
			{"genid_outdated_watchers", []string{"scope", "web"}, 1},
			{"genid_bumps_total", []string{"scope", "", "reason", "admin"}, 2},
			{"genid_bumps_total", []string{"scope", "", "reason", "vmgenid"}, 1},
			{"genid_bumps_total", []string{"scope", "web", "reason", "admin"}, 1},
			{"genid_bumps_total", []string{"scope", "web", "reason", "vmgenid"}, 1},
			{"genid_refusals_total", []string{"socket", "scope", "scope", "", "code", "stale"}, 1},
			{"genid_scope_restoring", []string{"scope", "web"}, 0},
			{"genid_build_info", nil, 1},
		} {
			if got, ok := value(t, mfs, c.name, c.labels...); !ok || got != c.want {
				t.Errorf("%s: %s%v = %v (%v), want %v", how, c.name, c.labels, got, ok, c.want)
			}
		}
		// One barrier cleared (the first bump's, when both acked? no: one
		// watcher acked of two) -- none until every watcher acked.
		if got, ok := value(t, mfs, "genid_barrier_seconds", "scope", ""); ok && got != 0 {
			t.Errorf("%s: barrier observed %v times", how, got)
		}
		if mfs["go_goroutines"] == nil || mfs["process_open_fds"] == nil {
			t.Errorf("%s: no Go or process metrics", how)
		}
		if bytes.Contains(text, []byte("pid=")) || bytes.Contains(text, []byte("uid=")) {
			t.Errorf("%s: a process or user in the metrics", how)
		}
	}

	// A request's headers are bounded.
	req, err := http.NewRequest("GET", "http://"+ln.Addr().String()+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Big", strings.Repeat("x", 16<<10))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a request with 16 KiB of headers: %s", resp.Status)
	}
	d.stop() // the listener closes with it, and that is no error
	logged(t, log, "level=ERROR", false)
}

// A metrics request whose headers do not come in time is dropped, as a
// frame is: the daemon's --frame-timeout bounds both.
func TestMetricsSlowHeaders(t *testing.T) {
	d := start(t, "", server.Config{FrameTimeout: 200 * time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.ServeMetrics(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n")); err != nil { // and no end
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("a request whose headers never end, 5 s on: %v", err)
	}
}

// failingListener is a listener whose Accept fails for good.
type failingListener struct{ net.Listener }

func (failingListener) Accept() (net.Conn, error) { return nil, errors.New("accept: broken") }

// A metrics listener that fails is an error in the log, which says why;
// one closed because the daemon stops is none (TestMetrics).
func TestMetricsListenerFails(t *testing.T) {
	d, log := startLog(t, "", server.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d.ServeMetrics(failingListener{ln})
	servertest.WaitFor(t, "the listener's failure in the log", func() bool {
		return strings.Contains(log.String(), `level=ERROR msg="metrics listener failed"`) && strings.Contains(log.String(), "accept: broken")
	})
}

func TestMetricsBarrierAndScopeRemoval(t *testing.T) {
	d := start(t, "", server.Config{})
	a := admin(t, d)
	ctx := context.Background()
	a.CreateScope(ctx, "web", genid.ScopeOptions{})
	w := watcher(t, filepath.Join(d.dir, "scopes", "web"))
	a.Bump(ctx, "web", 0, "")
	ack(t, w, 1)
	if err := a.WaitWatchers(ctx, "web", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	text, _ := a.Metrics(ctx)
	mfs := scrape(t, text)
	if n, ok := value(t, mfs, "genid_barrier_seconds", "scope", "web"); !ok || n != 1 {
		t.Errorf("barrier count %v %v\n%s", n, ok, text)
	}
	a.RemoveScope(ctx, "web")
	text, _ = a.Metrics(ctx)
	if bytes.Contains(text, []byte(`scope="web"`)) {
		t.Errorf("a removed scope's series stay:\n%s", text)
	}
}

// The refusals of a limit at connect are counted.
func TestMetricsRefusedConnections(t *testing.T) {
	d := start(t, "", server.Config{MaxAdminConns: 1})
	a := admin(t, d)
	a.Generation(context.Background(), "")
	c, err := net.Dial("unix", d.AdminSocketPath())
	if err != nil {
		t.Fatal(err)
	}
	expectRefused(t, c, wire.StatusLimit, "admin socket: 1 connections")
	text, err := a.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := value(t, scrape(t, text), "genid_refusals_total", "socket", "admin", "code", "limit"); !ok || n != 1 {
		t.Errorf("limit refusals %v %v", n, ok)
	}
}

// A second daemon on a run dir that one serves fails, and leaves the
// first one's history alone.
func TestHistoryOfAnotherDaemonLeftAlone(t *testing.T) {
	d := start(t, "", server.Config{})
	a := admin(t, d)
	watcher(t, d.dir)
	a.Bump(context.Background(), "", 0, "")
	time.Sleep(50 * time.Millisecond) // written
	path := filepath.Join(d.dir, "state", "history.jsonl")
	before, _ := os.ReadFile(path)
	if _, err := server.New(server.Config{RunDir: d.dir, Logger: slog.New(slog.DiscardHandler)}); err == nil {
		t.Fatal("a second daemon on the run dir")
	}
	time.Sleep(50 * time.Millisecond)
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) || !bytes.Contains(after, []byte(`"barrier":"pending"`)) {
		t.Errorf("history file changed by the second daemon:\n%s\n%s", before, after)
	}
	if e := history(t, a, genid.HistoryOptions{})[0]; e.Barrier != genid.BarrierPending {
		t.Errorf("%+v", e)
	}
}
