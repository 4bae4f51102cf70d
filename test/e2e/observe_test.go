package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/genid-project/genid/genid"
)

// nobody is a user who is no administrator.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

type doctorReport struct {
	OK     bool `json:"ok"`
	Checks []struct {
		Check   string `json:"check"`
		Status  string `json:"status"`
		Message string `json:"message"`
		Fix     string `json:"fix"`
	} `json:"checks"`
}

func (r doctorReport) status(check string) (string, string) {
	for _, c := range r.Checks {
		if c.Check == check {
			return c.Status, c.Message
		}
	}
	return "", ""
}

func doctorRun(t *testing.T, bin, dir string, args ...string) (doctorReport, result) {
	t.Helper()
	r := ctl(t, bin, dir, append([]string{"doctor", "--json"}, args...)...)
	var rep doctorReport
	if err := json.Unmarshal([]byte(r.out), &rep); err != nil {
		t.Fatalf("doctor: exit %d: %v\n%s\n%s", r.code, err, r.out, r.err)
	}
	return rep, r
}

// doctor on this host, for real: with no daemon it fails (exit 1) and says
// how to start one; with one it reports it, its version (this binary's) and
// the sockets; both times it probes the machine's breakpoints.
func TestDoctor(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	args := []string{"--hooks-dir", filepath.Join(t.TempDir(), "none"), "--oci-hooks-dir", t.TempDir(), "--cdi-dir", t.TempDir()}
	rep, r := doctorRun(t, bin, dir, args...)
	if st, msg := rep.status("daemon"); r.code != 1 || rep.OK || st != "fail" || !strings.Contains(msg, dir) {
		t.Fatalf("without a daemon: exit %d, ok %v, daemon %s %q", r.code, rep.OK, st, msg)
	}
	if r := ctl(t, bin, dir, append([]string{"doctor"}, args...)...); r.code != 1 || !strings.Contains(r.out, "fail  daemon") ||
		!strings.Contains(r.out, "fix: start it: genidctl --run-dir "+dir+" daemon") || r.err != "" {
		t.Fatalf("text without a daemon: exit %d\n%s\nstderr %q", r.code, r.out, r.err)
	}

	startDaemon(t, bin, dir)
	version := ctl(t, bin, dir, "status", "--json")
	var st genid.Status
	if err := json.Unmarshal([]byte(version.out), &st); err != nil || st.Version == "" {
		t.Fatalf("status: %v %q", err, version.out)
	}
	rep, r = doctorRun(t, bin, dir, args...)
	if s, msg := rep.status("daemon"); s != "ok" || !strings.Contains(msg, "version "+st.Version) {
		t.Errorf("daemon: %s %q", s, msg)
	}
	if s, msg := rep.status("admin socket"); s != "ok" || !strings.Contains(msg, "0600 root:root: only root may bump") {
		t.Errorf("admin socket: %s %q", s, msg)
	}
	if s, msg := rep.status("hw breakpoints"); s == "" || s == "ok" && !strings.HasPrefix(msg, "fire") {
		t.Errorf("hw breakpoints: %s %q", s, msg)
	}
	failed := false
	for _, c := range rep.Checks {
		failed = failed || c.Status == "fail"
	}
	if want := map[bool]int{false: 0, true: 1}[failed]; r.code != want || rep.OK == failed {
		t.Errorf("exit %d, ok %v, a check failed: %v\n%s", r.code, rep.OK, failed, r.out)
	}
}

// The history, through the real binary: who bumped, with what, and the
// barrier of a real watcher; kept across a restart of the daemon.
func TestHistoryCommand(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	d := startDaemon(t, bin, dir)
	w := startWatch(t, bin, dir)
	waitRegistered(t, bin, dir, 1)
	mustCtl(t, bin, dir, "scope", "create", "web")
	mustCtl(t, bin, dir, "bump", "--avoid", "6", "--reason", "test restore")
	if got := w.next(t); got != "7" {
		t.Fatalf("watch printed %s", got)
	}
	mustCtl(t, bin, dir, "wait-watchers", "--timeout", "10s")
	mustCtl(t, bin, dir, "bump", "--scope", "web")
	var list []genid.HistoryEntry
	if err := json.Unmarshal([]byte(mustCtl(t, bin, dir, "history", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("history: %+v", list)
	}
	if e := list[0]; e.Scope != "" || e.Previous != 0 || e.Generation != 7 || e.Min != 7 || e.Reason != "test restore" ||
		e.By != "admin" || e.UID != 0 || e.Outdated != 1 || e.Barrier != genid.BarrierCleared || e.BarrierNS <= 0 {
		t.Errorf("host's bump: %+v", e)
	}
	if e := list[1]; e.Scope != "web" || e.Generation != 1 || e.Barrier != genid.BarrierCleared || e.Outdated != 0 {
		t.Errorf("web's bump: %+v", e)
	}
	text := mustCtl(t, bin, dir, "history", "--scope", "")
	if !strings.Contains(text, "0 -> 7") || !strings.Contains(text, "test restore") || strings.Contains(text, "web") {
		t.Errorf("history of the host scope:\n%s", text)
	}
	if !strings.Contains(d.log.String(), `msg=bumped scope=host seq=1 previous=0 generation=7 reason="test restore" by=admin`) {
		t.Errorf("the log does not say the same:\n%s", d.log.String())
	}
	// A non-administrator is refused (exit 4).
	if r := ctlAs(t, nobody, bin, dir, "history"); r.code != 4 {
		t.Errorf("history as nobody: exit %d: %s", r.code, r.err)
	}
	d.kill(syscall.SIGTERM)
	startDaemon(t, bin, dir)
	if text := mustCtl(t, bin, dir, "history", "--last", "1"); !strings.Contains(text, "web") {
		t.Errorf("history after a restart:\n%s", text)
	}
}

// The metrics, printed by genidctl metrics and served by the opt-in
// listener, on a unix socket and on TCP, parsed by the Prometheus library.
func TestMetricsCommand(t *testing.T) {
	bin := genidctl(t)
	dir := runDir(t)
	sock := filepath.Join(t.TempDir(), "metrics.sock")
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a free port
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().String()
	ln.Close()
	startDaemon(t, bin, dir, "--metrics-listen", sock)
	tcpDir := runDir(t)
	startDaemon(t, bin, tcpDir, "--metrics-listen", port)
	w := startWatch(t, bin, dir)
	waitRegistered(t, bin, dir, 1)
	mustCtl(t, bin, dir, "bump")
	w.next(t)
	mustCtl(t, bin, dir, "wait-watchers", "--timeout", "10s")
	if r := ctl(t, bin, dir, "bump", "--scope", "nosuch"); r.code != 1 { // refused: not found
		t.Fatalf("bump of no scope: exit %d", r.code)
	}

	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("metrics socket: %v %v", fi, err)
	}
	unixClient := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	for how, text := range map[string][]byte{
		"genidctl metrics": []byte(mustCtl(t, bin, dir, "metrics") + "\n"),
		"unix listener":    get(t, unixClient, "http://genid/metrics"),
	} {
		parser := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := parser.TextToMetricFamilies(bytes.NewReader(text))
		if err != nil {
			t.Fatalf("%s: %v\n%s", how, err, text)
		}
		for name, want := range map[string]float64{
			"genid_generation":        1,
			"genid_watchers":          1,
			"genid_outdated_watchers": 0,
			"genid_bumps_total":       1,
			"genid_barrier_seconds":   1, // observations
		} {
			mf := mfs[name]
			if mf == nil || len(mf.Metric) != 1 {
				t.Errorf("%s: %s: %v", how, name, mf)
				continue
			}
			m := mf.Metric[0]
			got := m.GetGauge().GetValue() + m.GetCounter().GetValue() + float64(m.GetHistogram().GetSampleCount())
			if got != want {
				t.Errorf("%s: %s = %v, want %v", how, name, got, want)
			}
		}
		refused := false
		for _, m := range mfs["genid_refusals_total"].GetMetric() {
			for _, l := range m.Label {
				refused = refused || l.GetName() == "code" && l.GetValue() == "not_found" && m.GetCounter().GetValue() == 1
			}
		}
		if !refused {
			t.Errorf("%s: the refused bump is not counted", how)
		}
	}
	if text := get(t, &http.Client{Timeout: 10 * time.Second}, "http://"+port+"/metrics"); !bytes.Contains(text, []byte(`genid_generation{scope=""} 0`)) {
		t.Errorf("TCP listener:\n%s", text)
	}
	if r := ctlAs(t, nobody, bin, dir, "metrics"); r.code != 4 {
		t.Errorf("metrics as nobody: exit %d", r.code)
	}
}

func get(t *testing.T, c *http.Client, url string) []byte {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %s", url, err, resp.Status)
	}
	return b
}

// The example hook renews SSH host keys on a VM restore's bump of the host
// scope, and does nothing on any other bump; the daemon runs it.
func TestExampleHook(t *testing.T) {
	bin := genidctl(t)
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Fatal("ssh-keygen (openssh-client) is needed to test the example hook")
	}
	hook, err := filepath.Abs("../../examples/hooks/50-ssh-host-keys")
	if err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	for _, typ := range []string{"ed25519", "ecdsa"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", typ, "-N", "", "-f", filepath.Join(keys, "ssh_host_"+typ+"_key")).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v %s", err, out)
		}
	}
	fingerprint := func() string {
		out, err := exec.Command("ssh-keygen", "-l", "-f", filepath.Join(keys, "ssh_host_ed25519_key.pub")).Output()
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	before := fingerprint()
	run := func(scope, reason string) string {
		cmd := exec.Command(hook)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GENID_SCOPE=" + scope, "GENID_REASON=" + reason,
			"GENID_GENERATION=3", "GENID_PREVIOUS=2", "SSH_HOST_KEY_DIR=" + keys}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("hook: %v\n%s", err, out)
		}
		return string(out)
	}
	run("web", "vmgenid")
	run("", "manual")
	if fingerprint() != before {
		t.Fatal("keys renewed on a bump that is no VM restore")
	}
	if out := run("", "vmgenid"); !strings.Contains(out, "2 SSH host keys renewed") {
		t.Fatalf("hook said %q", out)
	}
	if fingerprint() == before {
		t.Fatal("keys not renewed on a VM restore")
	}
	// The daemon runs it from its hooks dir (on an administrator's bump it
	// does nothing), and records its outcome.
	hooksDir := filepath.Join(t.TempDir(), "hooks.d")
	os.Mkdir(hooksDir, 0o755)
	b, _ := os.ReadFile(hook)
	os.WriteFile(filepath.Join(hooksDir, "50-ssh-host-keys"), b, 0o755)
	dir := runDir(t)
	startDaemon(t, bin, dir, "--hooks-dir", hooksDir)
	mustCtl(t, bin, dir, "bump")
	deadline := time.Now().Add(10 * time.Second)
	for {
		var list []genid.HistoryEntry
		json.Unmarshal([]byte(mustCtl(t, bin, dir, "history", "--json")), &list)
		if len(list) == 1 && list[0].Hooks == genid.HooksDone {
			if r := list[0].HookResults; len(r) != 1 || r[0].Name != "50-ssh-host-keys" || !r[0].OK() {
				t.Fatalf("results %+v", r)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hooks not done: %+v", list)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
