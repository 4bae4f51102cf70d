package torture

// Helpers of the hostile-peer cases (exhaust_test.go, refusals_test.go):
// the test binary's second life as a hostile peer, run as another user,
// set-user-ID, with file capabilities or in namespaces of its own; and the
// daemon those cases start.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/wire"
	"golang.org/x/sys/unix"
)

// bHostileEnv selects the hostile peer's mode in a child of the test
// binary; the child does what its mode says and exits before any test.
const bHostileEnv = "GENID_TORTURE_HOSTILE"

func init() {
	mode := os.Getenv(bHostileEnv)
	if mode == "" {
		return
	}
	var err error
	switch mode {
	case "tries":
		err = refChild()
	case "send-exit":
		err = refSendAndExit()
	case "exhaust":
		err = exhHostile()
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "hostile %s: %v\n", mode, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// bUIDNobody and bUIDOther are the unprivileged users of these cases.
const (
	bUIDNobody = 65534
	bUIDOther  = 65533
)

func bCred(uid uint32) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
}

// bDir is a directory everyone may enter (a run dir, as /run/genid is; or
// where the hostile programs are).
func bDir(t *testing.T) string {
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

// bDaemon starts a daemon serving a fresh run dir, with args.
func bDaemon(t *testing.T, args ...string) (*proctest.Daemon, string) {
	t.Helper()
	bin := genidctlPath(t)
	dir := bDir(t)
	argv := append([]string{"--run-dir", dir, "daemon", "--state-dir", filepath.Join(dir, "state")}, args...)
	return proctest.Spawn(t, bin, dir, argv...), dir
}

// bSelf is a copy of the test binary that every user may run (go test's
// own lies in a directory only root enters).
func bSelf(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(bDir(t), "hostile")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// bHostile is a command running the hostile peer of mode at exe, with env.
func bHostile(exe, mode string, env ...string) *exec.Cmd {
	cmd := exec.Command(exe)
	cmd.Env = append(append(os.Environ(), bHostileEnv+"="+mode), env...)
	return cmd
}

// bRun runs cmd to its end (at most a minute) and returns its stdout.
func bRun(t *testing.T, cmd *exec.Cmd) []byte {
	t.Helper()
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	timer := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	if err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, errb.String())
	}
	return []byte(out.String())
}

// bCall sends a request on c and reads its reply, skipping events.
func bCall(c net.Conn, id uint32, op wire.Op, payload []byte) (wire.Frame, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(wire.Append(nil, wire.Header{Op: op, ID: id}, payload)); err != nil {
		return wire.Frame{}, err
	}
	for {
		f, err := wire.ReadFrame(c, wire.MaxReplyPayload)
		if err != nil || f.ID == id && f.Op == op {
			return f, err
		}
	}
}

// bDial connects to the unix socket at path.
func bDial(path string) (net.Conn, error) {
	return net.DialTimeout("unix", path, 10*time.Second)
}

// bErrno names the errno in err, for a refusal at connect.
func bErrno(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		return unix.ErrnoName(en)
	}
	return err.Error()
}

// bJSONLines decodes out, one JSON value a line.
func bJSONLines[T any](t *testing.T, out []byte) []T {
	t.Helper()
	var vs []T
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l == "" {
			continue
		}
		var v T
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("hostile peer's line %q: %v", l, err)
		}
		vs = append(vs, v)
	}
	return vs
}

// bProc is what the kernel says of a process's use of memory and fds.
type bProc struct {
	RSSKiB int
	FDs    int
	Links  []string // what the fds are
}

func bProcOf(pid int) bProc {
	var p bProc
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &p.RSSKiB)
		}
	}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if l == "/dev/kmsg" {
			continue // the vmgenid backend's, opened once the daemon serves: not a peer's
		}
		p.Links = append(p.Links, l)
	}
	p.FDs = len(p.Links)
	return p
}
