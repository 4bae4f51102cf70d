package server

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/wire"
)

// A container's scope whose process ended, before the daemon saw it end,
// is the container's no more: a scope made or restored under its name (a
// runc restore of that container, with its new process) takes the name.
// The loop is held from the process's end to the request, so that it
// cannot see the end first.
func TestOwnerGoneUnseen(t *testing.T) {
	s := serve(t, Config{}, nil)
	q := dialUnix(t, s.AdminSocketPath())
	exchange(t, q, wire.Append(nil, wire.Header{Op: wire.OpGet, ID: 1}, wire.AppendName(nil, ""))) // accepted
	var admin *conn
	eventually(t, s, "the admin connection", func() bool {
		for _, c := range s.loop.byFD {
			if c != nil && c.admin {
				admin = c
			}
		}
		return admin != nil
	})

	for _, how := range []string{"create", "restore"} {
		old, restored := proctest.Sleeper(t), proctest.Sleeper(t)
		var err error
		if err2 := s.do(func() { _, err = s.createScope("web", wire.ScopeCreate{PID: uint32(old.Process.Pid)}) }); err2 != nil || err != nil {
			t.Fatal(err2, err)
		}
		var name string
		var gen uint32
		if err2 := s.do(func() {
			old.Process.Kill()
			old.Wait()
			if how == "create" {
				gen, err = s.createScope("web", wire.ScopeCreate{PID: uint32(restored.Process.Pid), Flags: wire.FlagExistOK})
				if st := s.scopes["web"]; st != nil && st.meta.PID == restored.Process.Pid {
					name = st.name
				}
				return
			}
			s.restore(admin, wire.Header{Op: wire.OpRestore, ID: 2}, "web", wire.Restore{PID: uint32(restored.Process.Pid)}, true)
		}); err2 != nil || err != nil {
			t.Fatal(err2, err)
		}
		if how == "restore" {
			f := exchange(t, q, nil)
			if f.Status != wire.StatusOK || !bytes.Equal(f.Payload, wire.AppendName(wire.U32(1), "web")) {
				t.Fatalf("restore under the name of a scope whose process ended: %+v %q", f.Header, f.Payload)
			}
		} else if name != "web" || gen != 0 {
			t.Fatalf("create under the name of a scope whose process ended: %q at %d", name, gen)
		}
		if err2 := s.do(func() { err = s.removeScope(s.scopes["web"], "test") }); err2 != nil || err != nil {
			t.Fatal(err2, err)
		}
	}
}

// procStart reads a process's start time after its name, which may hold
// spaces and parentheses: here, sleep run as "a) (b c".
func TestProcStart(t *testing.T) {
	dir := t.TempDir()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(dir, "a) (b c")
	if err := os.Symlink(sleep, odd); err != nil {
		t.Fatal(err)
	}
	p := exec.Command(odd, "1000")
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { p.Process.Kill(); p.Wait() }()
	for _, pid := range []int{os.Getpid(), p.Process.Pid} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		// Field 22, after "PID (COMM) ", COMM as /proc/PID/comm tells it.
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			t.Fatal(err)
		}
		rest, ok := strings.CutPrefix(string(b), fmt.Sprintf("%d (%s) ", pid, strings.TrimSuffix(string(comm), "\n")))
		if !ok {
			t.Fatalf("stat %q, comm %q", b, comm)
		}
		want, err := strconv.ParseUint(strings.Fields(rest)[19], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := procStart(pid); err != nil || got != want {
			t.Errorf("procStart(%d) = %d, %v; want %d (%q)", pid, got, err, want, b)
		}
	}
	if _, err := procStart(-1); err == nil {
		t.Error("procStart of no process")
	}
}
