// Package hooks runs the daemon's after-restore hooks: the executables of a
// directory, in lexical order, each with a timeout, told the bump in their
// environment (what CRaC's and Lambda SnapStart's after-restore hooks give a
// runtime, here for a whole host or scope: new SSH host keys or a new DHCP
// lease after a VM clone).
//
// The daemon runs as root: a hook that someone else could have written would
// run their code as root. So a directory or a hook is refused unless it and
// every directory above it belong to root or the daemon's user and nobody
// else may write to them (a sticky directory such as /tmp excepted, where
// only a file's owner may replace it). A hook is checked at each run; its
// symbolic link is followed and its target checked the same way.
//
// Names are those of run-parts(8): letters, digits, '_' and '-' only, so
// that editors' backups and package managers' leftovers (foo~, foo.dpkg-old)
// never run. Files that are not executable are skipped, as run-parts does.
package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/genid-project/genid/genid"
)

// DefaultTimeout bounds one hook's run.
const DefaultTimeout = 30 * time.Second

// MaxOutput bounds what is kept of a hook's output (its end), for the log.
const MaxOutput = 4 << 10

// Hook is an executable of the directory, checked.
type Hook struct {
	Name string // its name in the directory
	Path string // what runs: the file, or its link's target
}

// Bump is what the hooks are told, in their environment.
type Bump struct {
	Scope      string // GENID_SCOPE: "" for the host scope
	Previous   uint32 // GENID_PREVIOUS
	Generation uint32 // GENID_GENERATION
	Reason     string // GENID_REASON
	RunDir     string // GENID_RUN_DIR: the daemon's
	Seq        uint64 // GENID_SEQ: the bump's number in the history
}

// Env is the environment of a hook run for b: a fixed PATH and b, and
// nothing of the daemon's.
func (b Bump) Env() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"GENID_SCOPE=" + b.Scope,
		"GENID_PREVIOUS=" + strconv.FormatUint(uint64(b.Previous), 10),
		"GENID_GENERATION=" + strconv.FormatUint(uint64(b.Generation), 10),
		"GENID_REASON=" + b.Reason,
		"GENID_RUN_DIR=" + b.RunDir,
		"GENID_SEQ=" + strconv.FormatUint(b.Seq, 10),
	}
}

// ValidName tells whether run-parts(8) would run a file of that name.
func ValidName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// List returns the hooks of dir in lexical order, each checked (owners
// holds the uids that may own them: root and the daemon's). A missing dir
// has none. A dir that fails the check fails whole; a hook that fails it
// is returned with its error, so that the refusal is reported where it
// would have run.
func List(dir string, owners []uint32) ([]Hook, []genid.HookResult, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if err := Trusted(dir, owners); err != nil {
		return nil, nil, fmt.Errorf("hooks directory refused: %w", err)
	}
	var hooks []Hook
	var refused []genid.HookResult
	for _, e := range ents { // sorted by name
		if !ValidName(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		h, err := check(path, owners)
		if errors.Is(err, errSkip) {
			continue
		}
		if err != nil {
			refused = append(refused, genid.HookResult{Name: e.Name(), Exit: -1, Error: "refused: " + err.Error()})
			continue
		}
		h.Name = e.Name()
		hooks = append(hooks, h)
	}
	return hooks, refused, nil
}

// errSkip marks a file that is not a hook: not executable, or not a file.
var errSkip = errors.New("not a hook")

// check resolves and checks one hook.
func check(path string, owners []uint32) (Hook, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return Hook{}, err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return Hook{}, err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return Hook{}, errSkip
	}
	if err := Trusted(real, owners); err != nil {
		return Hook{}, err
	}
	return Hook{Path: real}, nil
}

// Trusted checks that path and every directory above it belong to one of
// owners and that no one else may write to them, a sticky directory
// excepted (only the owner of an entry may replace it there).
func Trusted(path string, owners []uint32) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no owner", p)
		}
		if !slices.Contains(owners, st.Uid) {
			return fmt.Errorf("%s belongs to uid %d, not to root or the daemon's user", p, st.Uid)
		}
		sticky := fi.IsDir() && fi.Mode()&os.ModeSticky != 0
		if fi.Mode().Perm()&0o022 != 0 && !(sticky && p != abs) {
			return fmt.Errorf("%s is writable by its group or others (mode %#o)", p, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// Run runs h for b within timeout: on time out, h and whatever it started
// in its process group are killed. Its output (the end of it, up to
// MaxOutput) is returned for the log.
func Run(ctx context.Context, h Hook, b Bump, timeout time.Duration) (genid.HookResult, []byte) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	res := genid.HookResult{Name: h.Name, Exit: -1}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := &tail{max: MaxOutput}
	cmd := exec.Command(h.Path)
	cmd.Env = b.Env()
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// What the hook left running in another session may hold its output
	// open: Wait gives up on the output then.
	cmd.WaitDelay = time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		res.Error = err.Error()
		return res, nil
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		// The whole group: a hook's children must not outlive its bound.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = <-done
		res.TimedOut = ctx.Err() == context.DeadlineExceeded
		res.Error = fmt.Sprintf("killed: %v", ctx.Err())
		if res.TimedOut {
			res.Error = fmt.Sprintf("killed after %v", timeout)
		}
	}
	res.DurationNS = int64(time.Since(start))
	ps := cmd.ProcessState
	switch {
	case ps != nil && ps.Exited():
		res.Exit = ps.ExitCode()
	case ps != nil && res.Error == "":
		res.Error = ps.String() // "signal: ..."
	case ps == nil && res.Error == "":
		res.Error = err.Error()
	}
	return res, out.bytes()
}

// tail keeps the last max bytes written to it.
type tail struct {
	max int
	b   []byte
	cut bool
}

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
		t.cut = true
	}
	return len(p), nil
}

func (t *tail) bytes() []byte {
	if t.cut {
		return append([]byte("..."), t.b...)
	}
	return bytes.Clone(t.b)
}

var _ io.Writer = (*tail)(nil)
