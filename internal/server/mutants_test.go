package server_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/wire"
)

// ids is who a process is: its uid, its gid and its supplementary groups.
type ids struct {
	uid, gid uint32
	groups   []uint32
}

func (i ids) String() string {
	g := make([]string, len(i.groups))
	for n, v := range i.groups {
		g[n] = strconv.Itoa(int(v))
	}
	return fmt.Sprintf("%d:%d:%s", i.uid, i.gid, strings.Join(g, ","))
}

func parseIDs(s string) (ids, error) {
	var i ids
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return i, fmt.Errorf("ids %q", s)
	}
	u, err1 := strconv.ParseUint(parts[0], 10, 32)
	g, err2 := strconv.ParseUint(parts[1], 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return i, err
	}
	i.uid, i.gid = uint32(u), uint32(g)
	for _, f := range strings.FieldsFunc(parts[2], func(r rune) bool { return r == ',' }) {
		v, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return i, err
		}
		i.groups = append(i.groups, uint32(v))
	}
	return i, nil
}

// become makes this process (every thread) id, keeping root as its saved
// uid so that it can become someone else again.
func become(id ids) error {
	if err := syscall.Setresuid(0, 0, 0); err != nil { // back to root, to change groups
		return err
	}
	groups := make([]int, len(id.groups))
	for n, g := range id.groups {
		groups[n] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return err
	}
	if err := syscall.Setresgid(int(id.gid), int(id.gid), 0); err != nil {
		return err
	}
	return syscall.Setresuid(int(id.uid), int(id.uid), 0)
}

// senderChildEnv makes TestAdminSender, in the test binary run again as a
// child, connect to the admin socket as one process and send a bump as
// another: "SOCKET CONNECT-IDS SEND-IDS [fd] [restoring] [step]" (with fd,
// the bump carries fd 3 in SCM_RIGHTS; with restoring, the connection
// began a restore before the bump; with step, a restore of the host scope
// is sent in the bump's place). It prints the reply's status and message.
const senderChildEnv = "GENID_TEST_SENDER"

func senderChild(spec string) int {
	f := strings.Fields(spec)
	if len(f) < 3 {
		fmt.Fprintln(os.Stderr, "bad spec", spec)
		return 1
	}
	connectAs, err1 := parseIDs(f[1])
	sendAs, err2 := parseIDs(f[2])
	if err := errors.Join(err1, err2); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := become(connectAs); err != nil {
		fmt.Fprintln(os.Stderr, "become", connectAs, err)
		return 1
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: f[0], Net: "unix"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	var oob []byte
	req := wire.Append(nil, wire.Header{Op: wire.OpBump, ID: 1}, named("", wire.Bump{Reason: "child"}.Encode()))
	for _, opt := range f[3:] {
		switch opt {
		case "step":
			req = wire.Append(nil, wire.Header{Op: wire.OpRestore, ID: 1}, named("", wire.Restore{}.Encode()))
		case "fd":
			oob = unix.UnixRights(3)
		case "restoring":
			begin := wire.Append(nil, wire.Header{Op: wire.OpRestore, ID: 9}, named("", wire.Restore{Flags: wire.FlagBegin}.Encode()))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(begin); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			if r, err := wire.ReadFrame(c, wire.MaxReplyPayload); err != nil || r.Status != wire.StatusOK {
				fmt.Fprintln(os.Stderr, "restore begin:", r.Header, err)
				return 1
			}
		}
	}
	if err := become(sendAs); err != nil {
		fmt.Fprintln(os.Stderr, "become", sendAs, err)
		return 1
	}
	if _, _, err := c.WriteMsgUnix(req, oob, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r, err := wire.ReadFrame(c, wire.MaxReplyPayload)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%d %s\n", r.Status, r.Payload)
	return 0
}

// runSender runs senderChild and returns the status of its bump and the
// reply's message.
func runSender(t *testing.T, sock string, connectAs, sendAs ids, extra *os.File, opts ...string) (wire.Status, string) {
	t.Helper()
	spec := fmt.Sprintf("%s %s %s", sock, connectAs, sendAs)
	if extra != nil {
		spec += " fd"
	}
	for _, opt := range opts {
		spec += " " + opt
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAdminSender$")
	cmd.Env = append(os.Environ(), senderChildEnv+"="+spec)
	cmd.Stderr = os.Stderr
	if extra != nil {
		cmd.ExtraFiles = []*os.File{extra}
	}
	done := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	defer done.Stop()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sender %s as %s: %v", connectAs, sendAs, err)
	}
	st, msg, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	n, err := strconv.Atoi(st)
	if err != nil {
		t.Fatalf("sender printed %q", out)
	}
	return wire.Status(n), msg
}

// The admin socket serves root, the daemon's user and the admin group: a
// sender whose real gid is the group, or who is the user that connected
// while a member of it (SO_PEERGROUPS, however many groups it has). A
// member's connection does not make another user sending on it one, nor
// does root's make nobody one, not even once it began a restore (whose
// later steps need no administrator); the refusal names who may.
func TestAdminSender(t *testing.T) {
	if spec := os.Getenv(senderChildEnv); spec != "" {
		os.Exit(senderChild(spec))
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the children take other users' ids")
	}
	const group = 4242
	d := start(t, othersRunDir(t), server.Config{AdminGroup: group})
	sock := d.AdminSocketPath()
	root := ids{}
	nobody := ids{uid: 65534, gid: 65534}
	member := ids{uid: 65534, gid: 65534, groups: []uint32{group}}
	many := ids{uid: 65534, gid: 65534}
	for g := range uint32(100) {
		many.groups = append(many.groups, 5000+g)
	}
	many.groups = append(many.groups, group) // past the first 64
	for _, tc := range []struct {
		name              string
		connectAs, sendAs ids
		admin             bool
		opts              []string
	}{
		{"root", root, root, true, nil},
		{"nobody on root's connection", root, nobody, false, nil},
		{"nobody on root's connection that began a restore", root, nobody, false, []string{"restoring"}},
		{"nobody's restore step on root's connection that began a restore", root, nobody, true, []string{"restoring", "step"}},
		{"the group as real gid", root, ids{uid: 65534, gid: group}, true, nil},
		{"a member", member, member, true, nil},
		{"a member of 101 groups", many, many, true, nil},
		{"nobody on a member's connection", member, ids{uid: 65533, gid: 65534}, false, nil},
		{"a member on nobody's connection", ids{uid: 65534, gid: group}, ids{uid: 65534, gid: 65534, groups: []uint32{group}}, false, nil},
	} {
		before := d.status(t).Generation
		st, msg := runSender(t, sock, tc.connectAs, tc.sendAs, nil, tc.opts...)
		after := d.status(t).Generation
		switch {
		case tc.admin && (st != wire.StatusOK || after != before+1):
			t.Errorf("%s: %v %q, generation %d -> %d", tc.name, st, msg, before, after)
		case !tc.admin && (st != wire.StatusPermission || after != before):
			t.Errorf("%s: %v %q, generation %d -> %d; want permission", tc.name, st, msg, before, after)
		case !tc.admin && !strings.Contains(msg, "(root, or group 4242)"):
			t.Errorf("%s: the refusal does not name who may: %q", tc.name, msg)
		}
	}
	d.alive(t)
}

// An fd sent to the admin socket is closed by the daemon, which has no use
// for it: the pipe's reader sees the end of it once the sender is gone.
func TestAdminClosesPassedFDs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the child changes ids")
	}
	d := start(t, "", server.Config{})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if st, msg := runSender(t, d.AdminSocketPath(), ids{}, ids{}, w); st != wire.StatusOK {
		t.Fatalf("bump with an fd: %v %q", st, msg)
	}
	w.Close()
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the daemon kept the fd it was sent: read %d, %v", n, err)
	}
	if g := d.status(t).Generation; g != 1 {
		t.Fatalf("generation %d", g)
	}
}

// A frame sent in parts: on both kinds of socket, the parts are joined
// whatever the pause between them, within --frame-timeout from the frame's
// first byte; each frame has a clock of its own; an idle connection has
// none; and a frame trickled in slower than that is dropped with its
// connection (PROTOCOL.md, "Frames"). Each socket has a daemon of its own,
// so that the trickled frame's clock is its only timer (the first in the
// loop's heap: the one a wrong test of "no clock yet" would take for none).
func TestFrameInParts(t *testing.T) {
	const timeout = time.Second
	for _, sock := range []struct {
		name string
		dial func(*daemon, *testing.T) *net.UnixConn
		req  []byte // a request with a payload, answered at once
	}{
		{"member", (*daemon).dial, wire.Append(nil, wire.Header{Op: wire.OpWaitWatchers, ID: 1}, wire.U32(0))},
		{"admin", (*daemon).dialAdmin, wire.Append(nil, wire.Header{Op: wire.OpGet, ID: 1}, named("", nil))},
	} {
		t.Run(sock.name, func(t *testing.T) {
			t.Parallel()
			d := start(t, "", server.Config{FrameTimeout: timeout})
			write := func(c net.Conn, b []byte) {
				t.Helper()
				if _, err := c.Write(b); err != nil {
					t.Fatal(err)
				}
			}
			answered := func(c net.Conn, what string) {
				t.Helper()
				if f := recv(t, c); f.Status != wire.StatusOK || f.ID != 1 {
					t.Fatalf("%s: %+v %q", what, f.Header, f.Payload)
				}
			}
			req := sock.req

			// The second frame starts in the read that ends the first: it
			// gets a clock of its own, not what is left of the first's.
			c := sock.dial(d, t)
			write(c, req[:wire.HeaderSize])
			time.Sleep(timeout * 7 / 10)
			write(c, append(bytes.Clone(req[wire.HeaderSize:]), req[:wire.HeaderSize]...))
			answered(c, "the first frame")
			time.Sleep(timeout * 7 / 10)
			write(c, req[wire.HeaderSize:])
			answered(c, "the second frame, 1.4 frame timeouts after the first began")

			// Idle, after whole frames: no clock.
			time.Sleep(timeout * 3 / 2)
			write(c, req)
			answered(c, "a request after an idle pause")

			// A byte every 0.2 frame timeouts: the frame is not complete
			// in time, and the connection is closed unanswered.
			slow := sock.dial(d, t)
			go func() {
				for i := range req {
					if _, err := slow.Write(req[i : i+1]); err != nil {
						return
					}
					time.Sleep(timeout / 5)
				}
			}()
			slow.SetReadDeadline(time.Now().Add(time.Duration(len(req)+10) * timeout / 5))
			if f, err := wire.ReadFrame(slow, wire.MaxReplyPayload); err == nil {
				t.Fatalf("a frame trickled in over %d frame timeouts was answered: %+v", len(req)/5, f.Header)
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("a frame trickled in too slowly: the connection is still open")
			}
		})
	}
}
