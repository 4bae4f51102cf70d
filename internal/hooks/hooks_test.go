package hooks

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var owners = []uint32{0, uint32(os.Geteuid())}

func write(t *testing.T, dir, name, body string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
	return p
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"10-ssh": true, "a_b": true, "Z9": true, "az": true, "AZ": true, "09": true,
		"": false, "x.sh": false, "x~": false, ".hidden": false, "a b": false, "x.dpkg-old": false, "ü": false,
	} {
		if ValidName(name) != want {
			t.Errorf("%q: %v", name, !want)
		}
	}
}

func TestList(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "20-b", "", 0o755)
	write(t, dir, "10-a", "", 0o700)
	write(t, dir, "30-c.sh", "", 0o755)
	write(t, dir, "40-plain", "", 0o644)
	write(t, dir, "50-group-writable", "", 0o775)
	os.Mkdir(filepath.Join(dir, "60-dir"), 0o755)
	os.Symlink(filepath.Join(dir, "10-a"), filepath.Join(dir, "70-link"))
	os.Symlink(filepath.Join(dir, "gone"), filepath.Join(dir, "80-dangling"))
	list, refused, err := List(dir, owners)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, h := range list {
		names = append(names, h.Name+"="+filepath.Base(h.Path))
	}
	if got := strings.Join(names, " "); got != "10-a=10-a 20-b=20-b 70-link=10-a" {
		t.Errorf("hooks: %s", got)
	}
	if len(refused) != 2 || refused[0].Name != "50-group-writable" || !strings.Contains(refused[0].Error, "writable by its group or others") ||
		refused[1].Name != "80-dangling" || refused[0].Exit != -1 {
		t.Errorf("refused: %+v", refused)
	}
	if list, refused, err := List(filepath.Join(dir, "none"), owners); list != nil || refused != nil || err != nil {
		t.Errorf("a missing dir: %v %v %v", list, refused, err)
	}
	os.Chmod(dir, 0o757)
	if _, _, err := List(dir, owners); err == nil || !strings.Contains(err.Error(), "hooks directory refused") {
		t.Errorf("a dir others may write: %v", err)
	}
	if _, _, err := List(filepath.Join(dir, "20-b"), owners); err == nil {
		t.Error("a file as the dir")
	}
}

func TestTrusted(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "h", "", 0o755)
	if err := Trusted(p, owners); err != nil {
		t.Errorf("own file: %v", err)
	}
	// Nobody owns nothing here: every path belongs to someone else.
	if err := Trusted(p, []uint32{12345}); err == nil || !strings.Contains(err.Error(), "belongs to uid") {
		t.Errorf("another owner: %v", err)
	}
	// A sticky dir that others may write (/tmp) above is fine; not the
	// hook itself, were it sticky.
	sticky := filepath.Join(dir, "sticky")
	os.Mkdir(sticky, 0o755)
	os.Chmod(sticky, 0o777|os.ModeSticky)
	q := write(t, sticky, "h", "", 0o755)
	if err := Trusted(q, owners); err != nil {
		t.Errorf("under a sticky dir: %v", err)
	}
	if err := Trusted(sticky, owners); err == nil {
		t.Error("a sticky dir others may write, as the hooks dir")
	}
	if err := Trusted(filepath.Join(dir, "none"), owners); err == nil {
		t.Error("a missing file")
	}
	// A hook as it should be, in a directory others may write.
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o777)
	if err := Trusted(write(t, open, "h", "", 0o755), owners); err == nil || !strings.Contains(err.Error(), open+" is writable") {
		t.Errorf("in a directory others may write: %v", err)
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	b := Bump{Scope: "web", Previous: 2, Generation: 3, Reason: "vmgenid", RunDir: "/run/genid", Seq: 9}
	h := Hook{Name: "env", Path: write(t, dir, "env", `echo "$GENID_SCOPE $GENID_PREVIOUS $GENID_GENERATION $GENID_REASON $GENID_RUN_DIR $GENID_SEQ $HOME"; pwd; exit 4`, 0o755)}
	res, out := Run(context.Background(), h, b, time.Minute)
	if res.Name != "env" || res.Exit != 4 || res.TimedOut || res.Error != "" || res.OK() || res.DurationNS <= 0 {
		t.Errorf("result %+v", res)
	}
	if string(out) != "web 2 3 vmgenid /run/genid 9 \n/\n" {
		t.Errorf("output %q", out)
	}
	ok := Hook{Name: "ok", Path: write(t, dir, "ok", "true", 0o755)}
	if res, _ := Run(context.Background(), ok, b, time.Minute); !res.OK() || res.Exit != 0 {
		t.Errorf("ok: %+v", res)
	}
	if res, _ := Run(context.Background(), Hook{Name: "x", Path: filepath.Join(dir, "none")}, b, time.Minute); res.OK() || res.Error == "" || res.Exit != -1 {
		t.Errorf("missing: %+v", res)
	}
	killed := Hook{Name: "killed", Path: write(t, dir, "killed", "kill -9 $$", 0o755)}
	if res, _ := Run(context.Background(), killed, b, time.Minute); res.OK() || res.Exit != -1 || res.TimedOut || res.Error != "signal: killed" {
		t.Errorf("killed by a signal: %+v", res)
	}
	exact := Hook{Name: "exact", Path: write(t, dir, "exact", fmt.Sprintf("yes a | tr -d '\\n' | head -c %d", MaxOutput), 0o755)}
	if _, out := Run(context.Background(), exact, b, time.Minute); len(out) != MaxOutput || out[0] != 'a' {
		t.Errorf("output of exactly %d bytes: %d, %q...", MaxOutput, len(out), out[:min(len(out), 8)])
	}
	// The output's end is kept.
	loud := Hook{Name: "loud", Path: write(t, dir, "loud", "yes a | tr -d '\\n' | head -c 10000; echo END", 0o755)}
	if _, out := Run(context.Background(), loud, b, time.Minute); len(out) != MaxOutput+3 || !strings.HasPrefix(string(out), "...") || !strings.HasSuffix(string(out), "aEND\n") {
		t.Errorf("output of %d bytes: %q...", len(out), out[:min(len(out), 20)])
	}
}

func TestRunTimeout(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	h := Hook{Name: "stuck", Path: write(t, dir, "stuck", "sleep 60 & echo $! >"+pidFile+"; echo started; wait", 0o755)}
	start := time.Now()
	res, out := Run(context.Background(), h, Bump{}, 200*time.Millisecond)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v", took)
	}
	if !res.TimedOut || res.Exit != -1 || res.Error != "killed after 200ms" || res.OK() || string(out) != "started\n" {
		t.Errorf("%+v %q", res, out)
	}
	b, _ := os.ReadFile(pidFile)
	pid := strings.TrimSpace(string(b))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + pid); err != nil {
			break
		}
		st, _ := os.ReadFile("/proc/" + pid + "/stat")
		if strings.Contains(string(st), ") Z ") {
			break // killed, not yet reaped by its init
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hook's child %s outlived it", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A daemon that stops kills its hook too.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	res, _ = Run(ctx, h, Bump{}, time.Minute)
	if res.TimedOut || res.Error != "killed: context canceled" {
		t.Errorf("cancelled: %+v", res)
	}
	if res, _ := Run(context.Background(), Hook{Name: "t", Path: write(t, dir, "t", "true", 0o755)}, Bump{}, 0); !res.OK() {
		t.Errorf("the default timeout: %+v", res)
	}
}

func TestEnvIsTheBumpOnly(t *testing.T) {
	t.Setenv("SECRET", "x")
	env := Bump{Scope: "", Generation: 1}.Env()
	if slices.ContainsFunc(env, func(s string) bool { return strings.HasPrefix(s, "SECRET=") }) || !slices.Contains(env, "GENID_SCOPE=") {
		t.Errorf("%q", env)
	}
}
