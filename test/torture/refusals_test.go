package torture

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/wire"
	"golang.org/x/sys/unix"
)

// refTry is one privileged request a hostile peer tries: op with payload
// on the socket at Sock (a fresh connection), or on the admin connection
// it was handed as fd 3 when Sock is empty. Want is the refusal it must
// get: a result code, or at connect an errno (the socket's permissions,
// or a socket not there to reach).
type refTry struct {
	Name    string  `json:"name"`
	Sock    string  `json:"sock,omitempty"`
	Op      wire.Op `json:"op"`
	Payload []byte  `json:"payload"`
	Want    string  `json:"want"`
}

// refResult is what a try got: the reply's code, or the errno at connect,
// and for a status that was answered whether it listed processes.
type refResult struct {
	Name string `json:"name"`
	Got  string `json:"got"`
	Msg  string `json:"msg,omitempty"`
}

// What a try must get. A status on a scope's socket is answered, but
// without the processes behind it ("withheld").
const (
	refPermission = "permission denied"
	refUnknownOp  = "unknown op"
	refBadRequest = "bad request"
	refWithheld   = "withheld"
	refOK         = "ok" // the administrator's control run
)

// refChild is the hostile peer: it makes the tries of GENID_TORTURE_TRIES
// and prints what each got, a JSON line each. In a modelled container
// (GENID_TORTURE_CONTAINER=SCOPE_DIR:MOUNT:RUN_DIR, in a mount namespace
// of its own) it first sees only its scope's directory, at MOUNT, and
// nothing of RUN_DIR, as the OCI hook sets a container up.
func refChild() error {
	if ctr := os.Getenv("GENID_TORTURE_CONTAINER"); ctr != "" {
		p := strings.Split(ctr, ":")
		if err := unix.Mount(p[0], p[1], "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", p[0], err)
		}
		if err := unix.Mount("tmpfs", p[2], "tmpfs", 0, "mode=0755"); err != nil {
			return fmt.Errorf("hide %s: %w", p[2], err)
		}
	}
	var tries []refTry
	if err := json.Unmarshal([]byte(os.Getenv("GENID_TORTURE_TRIES")), &tries); err != nil {
		return err
	}
	var fd3 net.Conn
	enc := json.NewEncoder(os.Stdout)
	for i, tr := range tries {
		c := fd3
		if tr.Sock != "" {
			var err error
			if c, err = bDial(tr.Sock); err != nil {
				enc.Encode(refResult{Name: tr.Name, Got: bErrno(err)})
				continue
			}
		} else if c == nil {
			var err error
			if fd3, err = net.FileConn(os.NewFile(3, "admin")); err != nil {
				return err
			}
			c = fd3
		}
		f, err := bCall(c, uint32(i+1), tr.Op, tr.Payload)
		if tr.Sock != "" {
			c.Close()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", tr.Name, err)
		}
		r := refResult{Name: tr.Name, Got: genid.Code(f.Status).String()}
		if f.Status != 0 {
			r.Msg = string(f.Payload)
		} else if tr.Op == wire.OpStatus && tr.Want == refWithheld {
			if strings.Contains(string(f.Payload), "watcher_list") || strings.Contains(string(f.Payload), `"pid"`) {
				r.Got, r.Msg = "processes listed", string(f.Payload)
			} else {
				r.Got = refWithheld
			}
		}
		enc.Encode(r)
	}
	return nil
}

// refSendAndExit writes the tries of GENID_TORTURE_TRIES on fd 3, all at
// once, and exits without reading: the daemon, stopped meanwhile, checks
// them once their sender is gone.
func refSendAndExit() error {
	var tries []refTry
	if err := json.Unmarshal([]byte(os.Getenv("GENID_TORTURE_TRIES")), &tries); err != nil {
		return err
	}
	var b []byte
	for i, tr := range tries {
		b = wire.Append(b, wire.Header{Op: tr.Op, ID: uint32(i + 1)}, tr.Payload)
	}
	_, err := os.NewFile(3, "admin").Write(b)
	return err
}

// refAdminTries are the administrator's requests on the admin socket
// (every one of them): about the host's scope, about scope other, and
// query-peer of the connection whose socket's inode is ino.
func refAdminTries(other string, ino uint64) []refTry {
	named := func(name string, p []byte) []byte { return append(wire.AppendName(nil, name), p...) }
	return []refTry{
		{Name: "bump", Op: wire.OpBump, Payload: named("", wire.Bump{Reason: "hostile"}.Encode())},
		{Name: "bump every scope", Op: wire.OpBump, Payload: named("", wire.Bump{Flags: wire.FlagAllScopes, Reason: "hostile"}.Encode())},
		{Name: "bump another scope", Op: wire.OpBump, Payload: named(other, wire.Bump{Reason: "hostile"}.Encode())},
		{Name: "scope-create", Op: wire.OpScopeCreate, Payload: named("hostile", wire.ScopeCreate{}.Encode())},
		{Name: "scopes", Op: wire.OpScopes, Payload: named("", nil)},
		{Name: "query-peer", Op: wire.OpQueryPeer, Payload: named("", binary.LittleEndian.AppendUint64(nil, ino))},
		{Name: "restore", Op: wire.OpRestore, Payload: named("", wire.U32s(0, 0, 0))},
		{Name: "restore begin", Op: wire.OpRestore, Payload: named("", wire.U32s(wire.FlagBegin, 0, 0))},
		{Name: "history", Op: wire.OpHistory, Payload: named("", wire.U32s(wire.FlagEveryScope, 0))},
		{Name: "metrics", Op: wire.OpMetrics, Payload: named("", nil)},
		{Name: "wait-watchers of another scope", Op: wire.OpWaitWatchers, Payload: named(other, wire.U32(1))},
		{Name: "status of another scope", Op: wire.OpStatus, Payload: named(other, nil)},
		{Name: "status with pids", Op: wire.OpStatus, Payload: named("", nil)},
		{Name: "get of another scope", Op: wire.OpGet, Payload: named(other, nil)},
		{Name: "outdated of another scope", Op: wire.OpOutdated, Payload: named(other, nil)},
		{Name: "scope-remove", Op: wire.OpScopeRemove, Payload: named(other, nil)}, // last: the control run removes it
	}
}

// refMemberTries are the privileged requests a member can send on its
// scope's socket at sock: each refused, and its status withheld.
func refMemberTries(sock, other string, ino uint64) []refTry {
	ts := []refTry{
		{Name: "bump on a scope socket", Op: wire.OpBump, Payload: wire.Bump{Reason: "hostile"}.Encode(), Want: refPermission},
		{Name: "query-peer on a scope socket", Op: wire.OpQueryPeer, Payload: binary.LittleEndian.AppendUint64(nil, ino), Want: refPermission},
		{Name: "restored attach, no restore under way", Op: wire.OpAttach, Payload: wire.U32s(wire.FlagWatcher|wire.FlagRestored, 0), Want: refPermission},
		{Name: "wait-watchers naming another scope", Op: wire.OpWaitWatchers, Payload: append(wire.AppendName(nil, other), wire.U32(1)...), Want: refBadRequest},
		{Name: "status with pids on a scope socket", Op: wire.OpStatus, Want: refWithheld},
	}
	for _, a := range refAdminTries(other, ino) {
		switch a.Op {
		case wire.OpScopeCreate, wire.OpScopeRemove, wire.OpScopes, wire.OpRestore, wire.OpHistory, wire.OpMetrics:
			a.Name += " on a scope socket"
			a.Want = refUnknownOp
			ts = append(ts, a)
		}
	}
	for i := range ts {
		ts[i].Sock = sock
	}
	return ts
}

// refOn sets sock and want on tries.
func refOn(tries []refTry, sock, want string) []refTry {
	out := append([]refTry(nil), tries...)
	for i := range out {
		out[i].Sock, out[i].Want = sock, want
	}
	return out
}

// refConnect is a try that must not get through the connect to sock: the
// socket's permissions refuse it (EACCES), or it is not there (ENOENT).
func refConnect(name, sock, errno string) refTry {
	return refTry{Name: name, Sock: sock, Op: wire.OpGet, Payload: wire.AppendName(nil, ""), Want: errno}
}

// The torture suite's refusals (issue 20, A.4): every privileged request,
// from every kind of peer that must not be served, is refused, each with
// its documented code: an unprivileged user; root of a user namespace an
// unprivileged user made; another container's root (root in a mount
// namespace that has only its own scope's directory, as the OCI hook sets
// it up); a set-user-ID root and a file-capability copy of the peer run by
// an unprivileged user; an unprivileged process handed root's connection
// to the admin socket; and one that sends on it and exits before the
// daemon (stopped meanwhile) checks what it sent. Then nothing moved, and
// the same requests from root are served: the refusals are the daemon's
// judgement, not malformed requests.
func TestRefusals(t *testing.T) {
	row := record(t, Row{Case: "refusals"})
	d, dir := bDaemon(t)
	admin, err := genid.OpenAdmin(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := t.Context()
	for _, s := range []string{"ctr-a", "ctr-b"} {
		if _, err := admin.CreateScope(ctx, s, genid.ScopeOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Bump(ctx, "ctr-b", 7, "setup"); err != nil {
		t.Fatal(err)
	}
	// A watcher of the host whose connection query-peer asks about.
	watcher, err := bDial(filepath.Join(dir, genid.SocketFile))
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	if f, err := bCall(watcher, 1, wire.OpWatch, nil); err != nil || f.Status != 0 {
		t.Fatalf("watch: %v %v", f.Header, err)
	}
	var st syscall.Stat_t
	wf, _ := watcher.(*net.UnixConn).File()
	syscall.Fstat(int(wf.Fd()), &st)
	wf.Close()
	ino := st.Ino

	self := bSelf(t)
	hostSock := filepath.Join(dir, genid.SocketFile)
	adminSock := filepath.Join(dir, genid.AdminSocketFile)
	bSock := filepath.Join(dir, "scopes", "ctr-b", genid.SocketFile)
	adminTries := refAdminTries("ctr-b", ino)
	outsider := append([]refTry{
		refConnect("connect to the admin socket", adminSock, "EACCES"),
		refConnect("connect to another scope's socket by its host path", bSock, "EACCES"),
	}, refMemberTries(hostSock, "ctr-b", ino)...)

	type source struct {
		key   string // in the figures' names
		name  string
		tries []refTry
		cmd   func(env string) *exec.Cmd
	}
	nobody := func(exe string) func(string) *exec.Cmd {
		return func(env string) *exec.Cmd {
			cmd := bHostile(exe, "tries", env)
			cmd.SysProcAttr = bCred(bUIDNobody)
			return cmd
		}
	}
	suid, fcap := refPrivilegedCopies(t, self)
	ctrMount := filepath.Join(bDir(t), "run-genid")
	os.Mkdir(ctrMount, 0o755)
	ctrSock := filepath.Join(ctrMount, genid.SocketFile)
	sources := []source{
		{"unprivileged", "unprivileged user", outsider, nobody(self)},
		{"userns_root", "root of an unprivileged user's user namespace", outsider, func(env string) *exec.Cmd {
			cmd := exec.Command("unshare", "--user", "--map-root-user", self)
			cmd.Env = append(os.Environ(), bHostileEnv+"=tries", env)
			cmd.SysProcAttr = bCred(bUIDNobody)
			return cmd
		}},
		{"other_container_root", "another container's root", append([]refTry{
			refConnect("connect to the admin socket", adminSock, "ENOENT"),
			refConnect("connect to the host's socket", hostSock, "ENOENT"),
			refConnect("connect to another scope's socket", bSock, "ENOENT"),
		}, refMemberTries(ctrSock, "ctr-b", ino)...), func(env string) *exec.Cmd {
			cmd := bHostile(self, "tries", env,
				"GENID_TORTURE_CONTAINER="+filepath.Join(dir, "scopes", "ctr-a")+":"+ctrMount+":"+dir)
			cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
			return cmd
		}},
		{"setuid", "set-user-ID root program run by an unprivileged user", refOn(adminTries, adminSock, refPermission), nobody(suid)},
		{"filecap", "file-capability program run by an unprivileged user", refOn(adminTries, adminSock, refPermission), nobody(fcap)},
	}

	var (
		tried, refused int
		byCode         = map[string]int{}
		figures        = map[string]float64{}
		wrong          []string
	)
	tally := func(key, src string, tries []refTry, results []refResult) {
		if len(results) != len(tries) {
			t.Errorf("%s: %d results of %d tries", src, len(results), len(tries))
		}
		n := 0
		for i, r := range results {
			tried++
			if i < len(tries) && r.Name == tries[i].Name && r.Got == tries[i].Want {
				refused++
				n++
				byCode[r.Got]++
				continue
			}
			wrong = append(wrong, fmt.Sprintf("%s: %s: got %s %q", src, r.Name, r.Got, r.Msg))
		}
		figures["tried_"+key] = float64(len(tries))
		figures["refused_"+key] = float64(n)
		t.Logf("%s: %d of %d refused", src, n, len(tries))
	}
	for _, s := range sources {
		env, _ := json.Marshal(s.tries)
		tally(s.key, s.name, s.tries, bJSONLines[refResult](t, bRun(t, s.cmd("GENID_TORTURE_TRIES="+string(env)))))
	}

	// root's own connection to the admin socket, handed to nobody.
	handed := refOn(adminTries, "", refPermission)
	env, _ := json.Marshal(handed)
	conn, file := refAdminConn(t, adminSock)
	cmd := bHostile(self, "tries", "GENID_TORTURE_TRIES="+string(env))
	cmd.SysProcAttr, cmd.ExtraFiles = bCred(bUIDNobody), []*os.File{file}
	tally("handed_fd", "root's admin connection handed to an unprivileged process", handed, bJSONLines[refResult](t, bRun(t, cmd)))
	conn.Close()
	file.Close()

	// Sent on it by nobody, who is gone when the daemon looks.
	conn, file = refAdminConn(t, adminSock)
	cmd = bHostile(self, "send-exit", "GENID_TORTURE_TRIES="+string(env))
	cmd.SysProcAttr, cmd.ExtraFiles = bCred(bUIDNobody), []*os.File{file}
	d.Cmd.Process.Signal(syscall.SIGSTOP)
	bRun(t, cmd)
	file.Close()
	d.Cmd.Process.Signal(syscall.SIGCONT)
	tally("gone_sender", "unprivileged sender gone before the check", handed, refReplies(t, conn, handed))
	conn.Close()

	// Nothing moved.
	for scope, want := range map[string]uint32{"": 0, "ctr-a": 0, "ctr-b": 7} {
		if g, err := admin.Generation(ctx, scope); err != nil || g != want {
			t.Errorf("scope %q: generation %d %v after the refusals, want %d", scope, g, err, want)
		}
	}
	scopes, err := admin.Scopes(ctx)
	if err != nil || len(scopes) != 3 {
		t.Errorf("scopes after the refusals: %+v %v, want the host's, ctr-a and ctr-b", scopes, err)
	}
	if n := strings.Count(d.Log.String(), "admin request refused"); n == 0 {
		t.Errorf("the daemon logged no refused admin request")
	}

	// The same requests from root are served.
	control := refOn(adminTries, adminSock, refOK)
	control[10].Want = refOK // wait-watchers of ctr-b: no watcher there, so no one outdated
	env, _ = json.Marshal(control)
	served := 0
	for _, r := range bJSONLines[refResult](t, bRun(t, bHostile(self, "tries", "GENID_TORTURE_TRIES="+string(env)))) {
		if r.Got == refOK {
			served++
		} else {
			t.Errorf("root's %s: %s %q", r.Name, r.Got, r.Msg)
		}
	}
	figures["root_control_served"] = float64(served)

	for _, w := range wrong {
		t.Error("not refused as it must be: " + w)
	}
	codes := make([]string, 0, len(byCode))
	for c, n := range byCode {
		codes = append(codes, fmt.Sprintf("%d %s", n, c))
		figures["code_"+strings.ReplaceAll(c, " ", "_")] = float64(n)
	}
	sort.Strings(codes)
	figures["tried"], figures["refused"] = float64(tried), float64(refused)
	row.Tried = fmt.Sprintf("%d privileged requests from 7 kinds of peer (unprivileged, userns root, another container's root, "+
		"set-user-ID, file capabilities, a handed root admin fd, a sender gone before the check)", tried)
	row.Held = fmt.Sprintf("%d refused (%.0f%%): %s; root's same %d requests served",
		refused, 100*float64(refused)/float64(max(tried, 1)), strings.Join(codes, ", "), served)
	row.Failures, row.Figures = tried-refused, figures
}

// refPrivilegedCopies makes a set-user-ID root copy and a copy with file
// capabilities (enough to connect to the admin socket, and CRIU's) of exe.
func refPrivilegedCopies(t *testing.T, exe string) (suid, fcap string) {
	t.Helper()
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(exe)
	suid, fcap = filepath.Join(dir, "hostile-setuid"), filepath.Join(dir, "hostile-filecap")
	for _, p := range []string{suid, fcap} {
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(suid, os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	caps, err := cap.FromText("cap_dac_override,cap_sys_admin,cap_checkpoint_restore=ep")
	if err != nil {
		t.Fatal(err)
	}
	if err := caps.SetFile(fcap); err != nil {
		t.Fatalf("file capabilities on %s: %v", fcap, err)
	}
	return suid, fcap
}

// refAdminConn is root's connection to the admin socket, and a copy of it
// to hand to a child.
func refAdminConn(t *testing.T, sock string) (net.Conn, *os.File) {
	t.Helper()
	c, err := bDial(sock)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.(*net.UnixConn).File()
	if err != nil {
		t.Fatal(err)
	}
	return c, f
}

// refReplies reads the replies to tries, sent by another with ids 1...
func refReplies(t *testing.T, c net.Conn, tries []refTry) []refResult {
	t.Helper()
	got := map[uint32]wire.Frame{}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(got) < len(tries) {
		f, err := wire.ReadFrame(c, wire.MaxReplyPayload)
		if err != nil {
			t.Fatalf("replies to the gone sender's requests: %v (%d of %d)", err, len(got), len(tries))
		}
		if f.ID != 0 {
			got[f.ID] = f
		}
	}
	var rs []refResult
	for i, tr := range tries {
		f := got[uint32(i+1)]
		rs = append(rs, refResult{Name: tr.Name, Got: genid.Code(f.Status).String(), Msg: string(f.Payload)})
	}
	return rs
}
