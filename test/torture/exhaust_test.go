package torture

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/wire"
)

// exhReport is what the hostile peer took and what it was told.
type exhReport struct {
	AdminConnect   string `json:"admin_connect"`   // its try to reach the admin socket
	ScopeCreate    string `json:"scope_create"`    // its scope-create on its own socket
	Pipelined      int    `json:"pipelined"`       // connections it pipelined requests on, never reading
	PipelinedBytes int    `json:"pipelined_bytes"` // what it wrote on them before its writes blocked
	Blocked        int    `json:"blocked"`         // of them, those whose writes blocked
	Partials       int    `json:"partials"`        // frames it started and never finished
	PartialsClosed int    `json:"partials_closed"` // connections the daemon closed for them
	Watchers       int    `json:"watchers"`        // watchers it holds, never acking
	WatchRefusal   string `json:"watch_refusal"`   // what its next watch got
	Conns          int    `json:"conns"`           // connections it holds at the end
	ConnsRefused   int    `json:"conns_refused"`   // connections the daemon closed at once
}

// exhHostile is a peer that takes all it can of the daemon's socket
// GENID_TORTURE_SOCK: connections, watchers that never ack, memory
// (requests pipelined on connections it never reads, frames it never
// finishes), and tries to make scopes, there and on the admin socket
// GENID_TORTURE_ADMIN if set. It reports what it got, then holds it all
// until its stdin closes.
func exhHostile() error {
	sock := os.Getenv("GENID_TORTURE_SOCK")
	pipes, _ := strconv.Atoi(os.Getenv("GENID_TORTURE_PIPES"))
	partials, _ := strconv.Atoi(os.Getenv("GENID_TORTURE_PARTIALS"))
	var rep exhReport
	var held []net.Conn
	// served is a new connection the daemon serves, or nil once it closes
	// them at once: its limit.
	served := func() net.Conn {
		c, err := bDial(sock)
		if err != nil {
			rep.ConnsRefused++
			return nil
		}
		if f, err := bCall(c, 1, wire.OpGet, nil); err != nil || f.Status != 0 {
			c.Close()
			rep.ConnsRefused++
			return nil
		}
		held = append(held, c)
		return c
	}

	// Scopes: the admin socket is not its to reach; its own socket makes
	// none.
	if admin := os.Getenv("GENID_TORTURE_ADMIN"); admin == "" {
		rep.AdminConnect = "not tried"
	} else if c, err := bDial(admin); err != nil {
		rep.AdminConnect = bErrno(err)
	} else {
		c.Close()
		rep.AdminConnect = "connected"
	}
	c := served()
	if c == nil {
		return errors.New("not even one connection")
	}
	f, err := bCall(c, 1, wire.OpScopeCreate, append(wire.AppendName(nil, "hostile"), wire.ScopeCreate{}.Encode()...))
	if err != nil {
		return err
	}
	rep.ScopeCreate = genid.Code(f.Status).String()

	// Memory: requests whose replies it never reads, until its writes
	// block; and frames it starts and never finishes.
	batch := make([]byte, 0, 1000*wire.HeaderSize)
	for i := range 1000 {
		batch = wire.Append(batch, wire.Header{Op: wire.OpGet, ID: uint32(i + 2)}, nil)
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for range pipes {
		c := served()
		if c == nil {
			break
		}
		rep.Pipelined++
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			for {
				n, err := c.Write(batch)
				mu.Lock()
				rep.PipelinedBytes += n
				if errors.Is(err, os.ErrDeadlineExceeded) {
					rep.Blocked++
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	var started []net.Conn
	for range partials {
		c := served()
		if c == nil {
			break
		}
		var h [wire.HeaderSize]byte
		wire.PutHeader(h[:], wire.Header{Op: wire.OpGet, ID: 9, Len: 4})
		c.Write(append(h[:], 0, 0)) // two bytes of four
		started = append(started, c)
		rep.Partials++
	}

	// Watchers, never acking, until refused.
	for {
		c := served()
		if c == nil {
			rep.WatchRefusal = "connection refused"
			break
		}
		f, err := bCall(c, 2, wire.OpWatch, nil)
		if err != nil {
			return err
		}
		if f.Status != 0 {
			rep.WatchRefusal = genid.Code(f.Status).String()
			break
		}
		rep.Watchers++
	}

	// The daemon hangs up on the unfinished frames; it takes those
	// connections back too, and the rest, until refused.
	for _, c := range started {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.Copy(io.Discard, c); err == nil {
			rep.PartialsClosed++
		}
		c.Close()
	}
	open := map[net.Conn]bool{}
	for _, c := range held {
		open[c] = true
	}
	for _, c := range started {
		delete(open, c)
	}
	for served() != nil {
		open[held[len(held)-1]] = true
	}
	rep.Conns = len(open)
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		return err
	}
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// The torture suite's resource exhaustion (issue 20, A.3): one
// unprivileged peer (nobody) takes every connection and watcher it may on
// the host's socket, never acks, pipelines requests it never reads the
// answers of, starts frames it never finishes, and tries to make scopes;
// a container's root (whom no per-user limit binds) does the same on its
// scope's socket. Meanwhile: their takings stop at their limits (nobody's
// per user, the container's per scope); another unprivileged user
// still gets and watches; a container scope's watchers see its bumps and
// its barrier clears; root's bump is served and seen; the host's barrier,
// held by the peer's watchers, times out naming them rather than hanging;
// a restore through the admin socket (the CRIU plugin's request; a real
// CRIU restore under such a flood is test/criu's TestRestoreUnderFlood
// and TestRestoreCyclesUnderFlood)
// gives a new scope and attaches its restored watcher. The daemon's memory
// stays within what its limits allow, and once the peer is gone its fds
// return to where they were.
func TestExhaustion(t *testing.T) {
	row := record(t, Row{Case: "exhaustion"})
	maxConns, maxWatchers := size(64, 4096), size(32, 2048)
	pipes, partials := size(8, 64), size(4, 64)
	const maxFrame = 4096
	d, dir := bDaemon(t, "--max-conns-per-user", strconv.Itoa(maxConns), "--max-watchers-per-user", strconv.Itoa(maxWatchers),
		"--max-conns-per-scope", strconv.Itoa(maxConns), "--max-watchers-per-scope", strconv.Itoa(maxWatchers),
		"--max-frame", strconv.Itoa(maxFrame), "--frame-timeout", "1s")
	bin := genidctlPath(t)
	admin, err := genid.OpenAdmin(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	for _, name := range []string{"ctr", "evil"} {
		if _, err := admin.CreateScope(ctx, name, genid.ScopeOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Status(ctx, ""); err != nil { // the admin connection is counted in the baseline
		t.Fatal(err)
	}
	base := bProcOf(d.Pid())

	// The peers take all they can: nobody on the host's socket, and a
	// container's root (not limited per user) on its scope's.
	self := bSelf(t)
	env := []string{"GENID_TORTURE_PIPES=" + strconv.Itoa(pipes), "GENID_TORTURE_PARTIALS=" + strconv.Itoa(partials)}
	hostile, rep := exhStart(t, self, bCred(bUIDNobody), append(env,
		"GENID_TORTURE_SOCK="+filepath.Join(dir, genid.SocketFile), "GENID_TORTURE_ADMIN="+filepath.Join(dir, genid.AdminSocketFile))...)
	evil, evilRep := exhStart(t, self, nil, append(env, "GENID_TORTURE_SOCK="+filepath.Join(dir, "scopes", "evil", genid.SocketFile))...)
	during := bProcOf(d.Pid())
	t.Logf("nobody took %+v", rep)
	t.Logf("the container's root took %+v", evilRep)
	failures := 0
	check := func(ok bool, format string, args ...any) {
		t.Helper()
		if !ok {
			failures++
			t.Errorf(format, args...)
		}
	}
	check(rep.AdminConnect == "EACCES", "the peer's connect to the admin socket: %s, want EACCES", rep.AdminConnect)
	check(rep.ScopeCreate == "unknown op", "the peer's scope-create: %s, want unknown op", rep.ScopeCreate)
	check(rep.Conns == maxConns && rep.ConnsRefused > 0, "the peer holds %d connections (%d refused), want its limit %d", rep.Conns, rep.ConnsRefused, maxConns)
	check(rep.Watchers == maxWatchers && rep.WatchRefusal == "limit reached", "the peer holds %d watchers, then %s; want its limit %d, then limit reached", rep.Watchers, rep.WatchRefusal, maxWatchers)
	check(evilRep.ScopeCreate == "unknown op", "the container root's scope-create: %s, want unknown op", evilRep.ScopeCreate)
	check(evilRep.Conns == maxConns && evilRep.ConnsRefused > 0, "the container's root holds %d connections (%d refused), want its scope's limit %d",
		evilRep.Conns, evilRep.ConnsRefused, maxConns)
	check(evilRep.Watchers == maxWatchers && evilRep.WatchRefusal == "limit reached", "the container's root holds %d watchers, then %s; want its scope's limit %d, then limit reached",
		evilRep.Watchers, evilRep.WatchRefusal, maxWatchers)
	for _, r := range []exhReport{rep, evilRep} {
		check(r.Blocked == pipes, "%d of a peer's %d pipelining connections blocked its writes, want all", r.Blocked, pipes)
		check(r.PartialsClosed == partials, "the daemon hung up on %d of a peer's %d unfinished frames", r.PartialsClosed, partials)
	}
	// What the peer's connections may cost the daemon at most: a frame
	// being read, the 4 KiB of replies it lets pile up before it stops
	// reading (the rest waits in the kernel's socket buffers), and the
	// connection's own state; and the Go runtime's own growth.
	boundKiB := 2*maxConns*(maxFrame/1024+4+8) + 16*1024
	check(during.RSSKiB-base.RSSKiB <= boundKiB, "the daemon's RSS grew from %d to %d KiB, more than its limits allow (%d KiB)", base.RSSKiB, during.RSSKiB, boundKiB)

	// Another unprivileged user is served.
	other := exec.Command(bin, "--run-dir", dir, "watch")
	other.SysProcAttr = bCred(bUIDOther)
	otherOut, _ := other.StdoutPipe()
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	otherLines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(otherOut)
		for sc.Scan() {
			otherLines <- sc.Text()
		}
		close(otherLines)
	}()
	nextLine := func() string {
		select {
		case l := <-otherLines:
			return l
		case <-time.After(10 * time.Second):
			return "(nothing in 10 s)"
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for st, err := admin.Status(ctx, ""); st == nil || st.Watchers < maxWatchers+1; st, err = admin.Status(ctx, "") {
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("another user's watcher was not registered in 10 s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	get := exec.Command(bin, "--run-dir", dir, "get")
	get.SysProcAttr = bCred(bUIDOther)
	out, err := get.Output()
	check(err == nil && strings.TrimSpace(string(out)) == "0", "another user's get: %v %q", err, out)

	// A container scope: its watchers see its bumps, its barrier clears.
	ctrClient, err := genid.Open(filepath.Join(dir, "scopes", "ctr"))
	if err != nil {
		t.Fatal(err)
	}
	defer ctrClient.Close()
	var wg sync.WaitGroup
	seen := make(chan uint32, 3)
	var ctrWatchers []*genid.Watcher
	for range 3 {
		w, err := ctrClient.Watch(ctx)
		if err != nil {
			t.Fatalf("a container's watcher: %v", err)
		}
		ctrWatchers = append(ctrWatchers, w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := w.Wait(ctx)
			if err == nil {
				err = w.Ack(ctx, g)
			}
			if err != nil {
				t.Errorf("a container's watcher: %v", err)
			}
			seen <- g
		}()
	}
	for st, err := admin.Status(ctx, "ctr"); err == nil && st.Watchers < 3; st, err = admin.Status(ctx, "ctr") {
		time.Sleep(10 * time.Millisecond)
	}
	if g, err := admin.Bump(ctx, "ctr", 0, "under exhaustion"); err != nil || g != 1 {
		t.Fatalf("bump of the container's scope: %d %v", g, err)
	}
	wg.Wait()
	for range 3 {
		check(<-seen == 1, "a container's watcher did not see its bump")
	}
	check(admin.WaitWatchers(ctx, "ctr", 10*time.Second) == nil, "the container's barrier did not clear")

	// root's bump of the host is served and seen; the host's barrier is
	// held by the peer's watchers, and says so in time.
	g, err := admin.Bump(ctx, "", 0, "under exhaustion")
	check(err == nil && g == 1, "root's bump of the host: %d %v", g, err)
	check(nextLine() == "1", "another user's watcher did not see root's bump")
	err = admin.WaitWatchers(ctx, "", time.Second)
	check(errors.Is(err, genid.ErrTimeout), "the host's barrier, held by the peer: %v, want a timeout", err)
	if st, err := admin.Status(ctx, ""); err == nil {
		outdated := 0
		for _, w := range st.WatcherList {
			if w.Outdated && w.UID == bUIDNobody {
				outdated++
			}
		}
		check(outdated == maxWatchers && st.Outdated == maxWatchers, "the host's outdated watchers: %d, %d of them the peer's; want the peer's %d", st.Outdated, outdated, maxWatchers)
	}

	// A restore: a new scope for the restored tasks, past the record, and
	// its restored watcher attached.
	tasks := exec.Command("sleep", "600")
	if err := tasks.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tasks.Process.Kill(); tasks.Wait() })
	restorer, err := genid.OpenAdmin(dir) // the plugin's connection: the restore lasts as long
	if err != nil {
		t.Fatal(err)
	}
	rec := uint32(5)
	rg, name, err := restorer.Restore(ctx, "restored", &rec, tasks.Process.Pid)
	check(err == nil && rg > 5, "a restore under exhaustion: %d %q %v", rg, name, err)
	if err == nil {
		c, err := bDial(filepath.Join(dir, "scopes", name, genid.SocketFile))
		if err != nil {
			t.Fatal(err)
		}
		f, err := bCall(c, 1, wire.OpAttach, wire.U32s(wire.FlagWatcher|wire.FlagRestored, 5))
		check(err == nil && f.Status == 0, "the restored watcher's attach: %+v %v", f.Header, err)
		c.Close()
	}
	restorer.Close()

	// The peers go: the host's barrier clears. Once the others are gone
	// too (the restored tasks' scope with them), the daemon holds what it
	// held before.
	hostile.Process.Kill()
	hostile.Wait()
	evil.Process.Kill()
	evil.Wait()
	err = admin.WaitWatchers(ctx, "", 10*time.Second)
	check(err == nil, "the host's barrier once the peer is gone: %v", err)
	other.Process.Kill()
	other.Wait()
	ctrClient.Close()
	for _, w := range ctrWatchers {
		w.Close()
	}
	tasks.Process.Kill()
	tasks.Wait()
	var after bProc
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		after = bProcOf(d.Pid())
		if after.FDs <= base.FDs || time.Now().After(deadline) {
			break
		}
	}
	check(after.FDs == base.FDs, "the daemon holds %d fds once the peer and the others are gone, %d before:\n%v\nbefore:\n%v",
		after.FDs, base.FDs, after.Links, base.Links)
	t.Logf("daemon: before %d KiB RSS, %d fds; during %d KiB, %d fds; after %d KiB, %d fds",
		base.RSSKiB, base.FDs, during.RSSKiB, during.FDs, after.RSSKiB, after.FDs)

	row.Tried = fmt.Sprintf("one unprivileged peer takes %d connections and %d watchers that never ack, pipelines %d KiB on %d connections it never reads, "+
		"leaves %d frames unfinished, tries to make scopes; a container's root does the same in its scope", rep.Conns, rep.Watchers, rep.PipelinedBytes/1024, rep.Pipelined, rep.Partials)
	row.Held = fmt.Sprintf("stopped at their limits; another user, a container scope (bump, barrier), root's bump and a restore served; "+
		"daemon RSS %d -> %d -> %d KiB, fds %d -> %d -> %d", base.RSSKiB, during.RSSKiB, after.RSSKiB, base.FDs, during.FDs, after.FDs)
	row.Failures = failures
	row.Figures = map[string]float64{
		"peer_conns": float64(rep.Conns), "peer_watchers": float64(rep.Watchers), "peer_pipelined_kib": float64(rep.PipelinedBytes / 1024),
		"container_root_conns": float64(evilRep.Conns), "container_root_watchers": float64(evilRep.Watchers),
		"rss_kib_before": float64(base.RSSKiB), "rss_kib_during": float64(during.RSSKiB), "rss_kib_after": float64(after.RSSKiB),
		"fds_before": float64(base.FDs), "fds_during": float64(during.FDs), "fds_after": float64(after.FDs),
	}
}

// exhStart starts the hostile peer (exhHostile) at exe as cred (nil: as
// root) with env, and returns once it reports what it took. It holds it
// until killed.
func exhStart(t *testing.T, exe string, cred *syscall.SysProcAttr, env ...string) (*exec.Cmd, exhReport) {
	t.Helper()
	cmd := bHostile(exe, "exhaust", env...)
	cmd.SysProcAttr = cred
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if _, err := cmd.StdinPipe(); err != nil { // held open: the peer holds on until killed
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// A peer that never has its fill (no limit stops it) fails in time.
	timer := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	var rep exhReport
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &rep)
	}
	if !timer.Stop() || err != nil {
		t.Fatalf("a hostile peer reported nothing (failed, or killed after 2 minutes): %v\n%s", err, stderr.String())
	}
	return cmd, rep
}
