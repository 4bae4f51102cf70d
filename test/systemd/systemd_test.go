// Package systemd tests genid's Debian package under a real systemd as pid
// 1. The test binary runs inside the test bed of hack/testbed.sh with a
// writable root (`make e2e-systemd` builds the package and runs it): it
// boots the bed's systemd in pid, mount and cgroup namespaces of its own
// (the run's own v2 cgroup as its root, /sys and /proc/sys read-only, the
// capabilities a container manager drops dropped), installs the package
// at GENID_DEB with dpkg, and drives it with systemctl and genidctl.
package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/proctest"
)

var deb string

func TestMain(m *testing.M) {
	deb = os.Getenv("GENID_DEB")
	if _, err := os.Stat(deb); deb == "" || err != nil {
		fmt.Fprintf(os.Stderr, "systemd e2e: GENID_DEB %q missing: run through `make e2e-systemd`, inside the test bed\n", deb)
		os.Exit(1)
	}
	for _, bin := range []string{"/usr/lib/systemd/systemd", "systemctl", "systemd-analyze", "dpkg", "nsenter", "unshare", "setpriv"} {
		if _, err := exec.LookPath(bin); err != nil {
			fmt.Fprintf(os.Stderr, "systemd e2e: %s not found: run through `make e2e-systemd`, inside the test bed\n", bin)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// bootScript runs as pid 1 of the new namespaces and becomes systemd. It
// keeps systemd off the host's kernel settings and devices, as a container
// manager does: /sys and /proc/sys read-only, and no capability to load
// modules, set the clock or reach hardware.
const bootScript = `set -e
mount -o remount,bind,ro /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
if [ -e /proc/sysrq-trigger ]; then
	mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
	mount -o remount,bind,ro /proc/sysrq-trigger
fi
systemd-machine-id-setup >/dev/null
exec setpriv --bounding-set -sys_module,-sys_time,-sys_rawio,-sys_boot,-wake_alarm,-sys_tty_config,-audit_control,-audit_read,-mac_admin,-mac_override \
	/usr/lib/systemd/systemd --unit=basic.target --log-target=console --show-status=no
`

// machine is the booted systemd.
type machine struct {
	t   *testing.T
	pid int // systemd's, in the test's pid namespace
	log *proctest.Buffer
}

func boot(t *testing.T) *machine {
	t.Helper()
	m := &machine{t: t, log: &proctest.Buffer{}}
	cmd := exec.Command("unshare", "--fork", "--pid", "--mount", "--cgroup", "--mount-proc", "--", "/bin/sh", "-c", bootScript)
	cmd.Env = []string{"container=genid-testbed", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdout, cmd.Stderr = m.log, m.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		if t.Failed() && m.pid > 0 {
			r := m.run(30*time.Second, "journalctl", "--no-pager", "-o", "short-monotonic", "-n", "300")
			t.Logf("the journal:\n%s%s", r.out, r.err)
		}
		// Killing pid 1 ends every process of its namespace.
		if m.pid > 0 {
			syscall.Kill(m.pid, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		<-done
		if t.Failed() && m.pid > 0 {
			t.Logf("systemd's log:\n%s", m.log.String())
		}
	})
	// systemd is unshare's child, pid 1 inside.
	deadline := time.Now().Add(10 * time.Second)
	for m.pid == 0 {
		select {
		case <-done:
			t.Fatalf("systemd's namespace ended: %v\n%s", cmd.ProcessState, m.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no systemd started:\n%s", m.log.String())
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)); err == nil {
			if f := strings.Fields(string(b)); len(f) == 1 {
				if exe, _ := os.Readlink("/proc/" + f[0] + "/exe"); strings.HasSuffix(exe, "/systemd") {
					m.pid, _ = strconv.Atoi(f[0])
				}
			}
		}
	}
	// Up when the boot's jobs are done: "running", or "degraded" if a unit
	// of the bed's failed, which is not ours to judge.
	var state string
	for deadline = time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		state = strings.TrimSpace(m.run(10*time.Second, "systemctl", "is-system-running").out)
		if state == "running" || state == "degraded" {
			break
		}
	}
	switch state {
	case "running":
	case "degraded":
		t.Logf("systemd is up, degraded:\n%s", m.run(10*time.Second, "systemctl", "--failed", "--no-legend").out)
	default:
		t.Fatalf("systemd not up after 90 s: %q", state)
	}
	t.Logf("systemd %s up", strings.SplitN(m.run(10*time.Second, "systemctl", "--version").out, "\n", 2)[0])
	return m
}

type result struct {
	out, err string
	code     int
	took     time.Duration
}

// run runs a command inside the machine's namespaces, bounded by limit.
func (m *machine) run(limit time.Duration, args ...string) result {
	m.t.Helper()
	return m.runAs(limit, nil, args...)
}

// runAs is run with the command prefixed by prefix (setpriv ...).
func (m *machine) runAs(limit time.Duration, prefix []string, args ...string) result {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	argv := append([]string{"--target", strconv.Itoa(m.pid), "--mount", "--pid", "--cgroup", "--"}, prefix...)
	cmd := exec.CommandContext(ctx, "nsenter", append(argv, args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{out: out.String(), err: errb.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		m.t.Fatalf("%v: still running after %v (out %q, err %q)", args, limit, r.out, r.err)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		m.t.Fatalf("%v: %v", args, err)
	}
	return r
}

// must runs a command that must succeed, and returns its output.
func (m *machine) must(args ...string) string {
	m.t.Helper()
	r := m.run(60*time.Second, args...)
	if r.code != 0 {
		m.t.Fatalf("%v: exit %d: %s%s", args, r.code, r.out, r.err)
	}
	return strings.TrimSpace(r.out)
}

// active is each unit's ActiveState.
func (m *machine) active(units ...string) string {
	m.t.Helper()
	return strings.Join(strings.Fields(m.run(20*time.Second, append([]string{"systemctl", "is-active"}, units...)...).out), " ")
}

// mainPID is the service's main pid, 0 if none.
func (m *machine) mainPID(unit string) int {
	m.t.Helper()
	pid, err := strconv.Atoi(m.must("systemctl", "show", "-P", "MainPID", unit))
	if err != nil {
		m.t.Fatal(err)
	}
	return pid
}

// files lists the files under the directories a package touches, without
// those of systemd's and dpkg's own bookkeeping, which change with any
// package (logs, journals, dpkg's databases, systemd's runtime state).
func (m *machine) files() []string {
	m.t.Helper()
	skip := regexp.MustCompile(`^(/run/systemd|/run/log|/run/user|/run/lock|/run/dbus|/var/log|/var/cache|/var/lib/dpkg|/var/lib/systemd/(timers|random-seed|catalog)|/var/tmp|/run/mount|/run/credentials)(/|$)`)
	var list []string
	for _, root := range []string{"/etc", "/usr", "/var", "/run"} {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if skip.MatchString(p) {
				if d != nil && d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			list = append(list, p)
			return nil
		})
	}
	slices.Sort(list)
	return list
}

// diff is what only a, and what only b, holds.
func diff(a, b []string) (onlyA, onlyB []string) {
	for _, p := range a {
		if _, ok := slices.BinarySearch(b, p); !ok {
			onlyA = append(onlyA, p)
		}
	}
	for _, p := range b {
		if _, ok := slices.BinarySearch(a, p); !ok {
			onlyB = append(onlyB, p)
		}
	}
	return onlyA, onlyB
}

// exposure is the overall score `systemd-analyze security` gives a unit.
var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\S+)`)

// The package's whole life under systemd: dpkg -i starts the sockets only,
// the first client starts the daemon, which takes its sockets from systemd
// and runs with its hardening; a restart keeps the generation; once the
// sockets are stopped a client is told at once what to start; dpkg --purge
// leaves no file behind.
func TestPackageUnderSystemd(t *testing.T) {
	m := boot(t)
	// The bed makes /usr/lib/criu (a mount point for the plugin), which no
	// package owns and a fresh system lacks: dpkg would remove it with the
	// package's plugin.
	if r := m.run(20*time.Second, "dpkg", "-S", "/usr/lib/criu"); r.code != 0 {
		m.run(20*time.Second, "rmdir", "/usr/lib/criu")
	}
	before := m.files()
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("install", func(t *testing.T) {
		t.Log(m.must("dpkg", "-i", deb))
		// What the package lays down besides the units: the plugin where
		// CRIU loads it, the man page and completions genidctl made.
		if r := m.run(30*time.Second, "sh", "-c", "test -f /usr/lib/criu/genid-criu.so && "+
			"zcat /usr/share/man/man8/genidctl.8.gz | grep -q '^\\.TH' && "+
			"bash -n /usr/share/bash-completion/completions/genidctl && "+
			"test -s /usr/share/zsh/vendor-completions/_genidctl && "+
			"grep -q 'complete -c genidctl' /usr/share/fish/vendor_completions.d/genidctl.fish"); r.code != 0 {
			t.Errorf("the package's plugin, man page or completions: exit %d: %s%s", r.code, r.out, r.err)
		}
		if got := m.active("genid.socket", "genid-admin.socket", "genid.service"); got != "active active inactive" {
			t.Fatalf("after dpkg -i: genid.socket, genid-admin.socket, genid.service are %q, want the sockets active, the daemon not yet started", got)
		}
		for _, u := range []string{"genid.socket", "genid-admin.socket", "genid.service"} {
			if got := m.must("systemctl", "is-enabled", u); got != "enabled" {
				t.Errorf("%s is %s after dpkg -i, want enabled", u, got)
			}
		}
		for path, want := range map[string]string{"/run/genid/genid.sock": "srw-rw-rw- root root", "/run/genid/admin.sock": "srw------- root root"} {
			if got := m.must("stat", "-c", "%A %U %G", path); got != want {
				t.Errorf("%s made by systemd: %s, want %s", path, got, want)
			}
		}
	})

	step("first client starts the daemon", func(t *testing.T) {
		// get reads the page, which the daemon makes: it connects to
		// start it.
		if got := m.must("genidctl", "get"); got != "0" {
			t.Fatalf("genidctl get: %q, want 0", got)
		}
		// The page is made before the daemon tells systemd it is ready:
		// the unit may still be activating for a moment.
		got := m.active("genid.service")
		for deadline := time.Now().Add(10 * time.Second); got == "activating" && time.Now().Before(deadline); got = m.active("genid.service") {
			time.Sleep(20 * time.Millisecond)
		}
		if got != "active" {
			t.Fatalf("genid.service %s after the first client, want active", got)
		}
		out := m.must("genidctl", "status")
		if !strings.Contains(out, "generation: 0") {
			t.Fatalf("status: %s", out)
		}
		// Type=notify: systemd saw READY=1; and the daemon says it took its
		// sockets from systemd.
		if got := m.must("systemctl", "show", "-P", "StatusErrno,Result,NRestarts", "genid.service"); got != "0\nsuccess\n0" {
			t.Errorf("genid.service: StatusErrno, Result, NRestarts %q", got)
		}
		journal := m.must("journalctl", "-u", "genid.service", "-o", "cat", "--no-pager")
		if !strings.Contains(journal, "passed_sockets=2") {
			t.Errorf("the daemon's log does not say it served the 2 sockets systemd passed:\n%s", journal)
		}
	})

	step("hardened", func(t *testing.T) {
		pid := m.mainPID("genid.service")
		status := m.must("cat", fmt.Sprintf("/proc/%d/status", pid))
		// CAP_CHOWN 0, CAP_NET_ADMIN 12, CAP_SYS_ADMIN 21, CAP_SYSLOG 34
		want := fmt.Sprintf("%016x", 1<<0|1<<12|1<<21|1<<34)
		for _, field := range []string{"CapBnd", "CapEff", "CapPrm"} {
			if got := procField(status, field); got != want {
				t.Errorf("the daemon's %s: %s, want %s (CAP_CHOWN, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYSLOG)", field, got, want)
			}
		}
		if got := procField(status, "NoNewPrivs"); got != "1" {
			t.Errorf("the daemon's NoNewPrivs: %s", got)
		}
		if got := procField(status, "Seccomp"); got != "2" {
			t.Errorf("the daemon's Seccomp: %s, want 2 (a filter)", got)
		}
		// ProtectSystem=strict: /usr is read-only for it.
		if r := m.run(10*time.Second, "nsenter", "--target", strconv.Itoa(pid), "--mount", "--", "touch", "/usr/genid-probe"); r.code == 0 {
			t.Errorf("the daemon's /usr is writable")
		}
		// The page stays writable: a bump works (the admin socket, its
		// sender judged by the credentials systemd's socket passes).
		if got := m.must("genidctl", "bump", "--reason", "systemd-test"); got != "1" {
			t.Fatalf("bump: %q, want 1", got)
		}
		// An unprivileged user reads and watches, and may not bump.
		nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}
		if r := m.runAs(20*time.Second, nobody, "genidctl", "status"); r.code != 0 || !strings.Contains(r.out, "generation: 1") {
			t.Errorf("status as nobody: exit %d: %s%s", r.code, r.out, r.err)
		}
		if r := m.runAs(20*time.Second, nobody, "genidctl", "bump"); r.code != 4 {
			t.Errorf("bump as nobody: exit %d, want 4 (permission): %s%s", r.code, r.out, r.err)
		}
		// The vmgenid backend reads /dev/kmsg (the bed's run binds the
		// host's), through the device policy and the capability bounding
		// set the unit allows.
		if vmgenid, _ := filepath.Glob("/sys/bus/*/drivers/vmgenid/*:*"); len(vmgenid) > 0 {
			if out := m.must("genidctl", "status"); !strings.Contains(out, "backends:   [vmgenid]") {
				t.Errorf("this machine has a vmgenid device (%s), but the daemon's status does not list the backend:\n%s\n%s",
					vmgenid[0], out, m.must("journalctl", "-u", "genid.service", "-o", "cat", "--no-pager"))
			}
		} else {
			t.Log("no vmgenid device on this machine: the backend's access to /dev/kmsg under the unit is not checked")
		}
		out := m.run(60*time.Second, "systemd-analyze", "security", "--no-pager", "genid.service").out
		match := exposureRE.FindStringSubmatch(out)
		if match == nil {
			t.Fatalf("systemd-analyze security: no overall exposure in:\n%s", out)
		}
		t.Logf("systemd-analyze security genid.service: %s %s", match[1], match[2])
		if score, _ := strconv.ParseFloat(match[1], 64); score > 2.8 {
			t.Errorf("exposure %s, above the 2.8 this unit had:\n%s", match[1], out)
		}
	})

	step("restart keeps the generation", func(t *testing.T) {
		pid := m.mainPID("genid.service")
		m.must("genidctl", "bump", "--min", "41")
		// A scope: its directory, page and socket are the daemon's own.
		if got := m.must("genidctl", "scope", "create", "--start", "5", "c1"); got != "5" {
			t.Fatalf("scope create: %q", got)
		}
		if got := m.must("stat", "-c", "%A", "/run/genid/scopes/c1/genid.sock"); got != "srw-rw-rw-" {
			t.Fatalf("the scope's socket: %s", got)
		}
		m.must("systemctl", "restart", "genid.service")
		if got := m.mainPID("genid.service"); got == pid || got == 0 {
			t.Fatalf("main pid %d after restart (was %d)", got, pid)
		}
		if got := m.must("genidctl", "get"); got != "41" {
			t.Fatalf("get after restart: %q, want 41", got)
		}
		if out := m.must("genidctl", "status"); !strings.Contains(out, "generation: 41") {
			t.Fatalf("status after restart: %s", out)
		}
		if got := m.must("stat", "-c", "%A", "/run/genid/admin.sock"); got != "srw-------" {
			t.Errorf("admin.sock after restart: %s", got)
		}
		if out := m.must("genidctl", "status", "--scope", "c1"); !strings.Contains(out, "generation: 5") {
			t.Errorf("the scope after restart: %s", out)
		}
		m.must("genidctl", "scope", "remove", "c1")

		// The floor in the unit's state dir: a lost page does not lower
		// the generation.
		if got := m.must("stat", "-c", "%a %U", "/var/lib/genid"); got != "700 root" {
			t.Errorf("the state dir: %q, want 700 root", got)
		}
		m.must("systemctl", "stop", "genid.service")
		m.must("rm", "-f", "/run/genid/generation")
		m.must("genidctl", "status")
		if got, err := strconv.Atoi(m.must("genidctl", "get")); err != nil || got < 41 {
			t.Errorf("get after the page was removed: %d (%v), want at least 41", got, err)
		}
	})

	step("stopped: a clear error, at once", func(t *testing.T) {
		m.must("systemctl", "stop", "genid.service", "genid.socket")
		if got := m.active("genid.socket", "genid-admin.socket", "genid.service"); got != "inactive inactive inactive" {
			t.Fatalf("after systemctl stop genid.service genid.socket: %q, want all inactive", got)
		}
		for _, args := range [][]string{{"status"}, {"bump"}, {"outdated"}, {"watch", "--once"}, {"wait-watchers"}} {
			r := m.run(20*time.Second, append([]string{"genidctl"}, args...)...)
			lines := strings.Split(strings.TrimSpace(r.err), "\n")
			if r.code != 3 || len(lines) != 1 || !strings.Contains(lines[0], "start it: systemctl start genid.socket") {
				t.Errorf("genidctl %v with genid stopped: exit %d, stderr %q: want exit 3 and one line saying what to start", args, r.code, r.err)
			}
			if r.took > 2*time.Second {
				t.Errorf("genidctl %v with genid stopped took %v", args, r.took)
			}
		}
		// The page outlives the daemon.
		if got := m.must("genidctl", "get"); got != "41" {
			t.Errorf("get with genid stopped: %q, want 41", got)
		}
		m.must("systemctl", "start", "genid.socket")
		if got := m.active("genid.socket", "genid-admin.socket"); got != "active active" {
			t.Fatalf("systemctl start genid.socket: %q", got)
		}
		if out := m.must("genidctl", "status"); !strings.Contains(out, "generation: 41") {
			t.Fatalf("status, started again by its socket: %s", out)
		}
	})

	step("purge leaves nothing", func(t *testing.T) {
		m.must("dpkg", "--purge", "genid")
		if got := m.active("genid.socket", "genid-admin.socket", "genid.service"); got != "inactive inactive inactive" {
			t.Errorf("after dpkg --purge: %q, want all inactive", got)
		}
		if out := m.run(20*time.Second, "systemctl", "list-unit-files", "--no-legend", "genid*").out; strings.TrimSpace(out) != "" {
			t.Errorf("unit files left: %s", out)
		}
		if out := m.run(20*time.Second, "dpkg", "-l", "genid").out; strings.Contains(out, "genid") && !strings.Contains(out, "no packages found") {
			t.Logf("dpkg -l genid: %s", out)
		}
		added, removed := diff(m.files(), before)
		if len(added) > 0 || len(removed) > 0 {
			t.Errorf("dpkg -i then --purge changed the file list: left %q, took %q", added, removed)
		}
	})
}

// procField is a field of /proc/PID/status.
func procField(status, name string) string {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
