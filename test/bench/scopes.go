package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/wire"
)

// The scopes figures: does a daemon with many idle container scopes serve
// one of them as fast as a daemon with that scope alone? Two daemons run
// side by side, one with the scope alone ("one") and one with it among
// scopesMany ("many"), each scope with scopesWatchers watchers; their
// rounds are interleaved, so the machine's drift hits both alike.
const (
	scopesMany     = 1000
	scopesWatchers = 10
	scopeName      = "c0" // the scope bumped and restored
)

// scopeBed is one daemon of the comparison.
type scopeBed struct {
	d      *daemon
	ctl    int     // admin connection that bumps
	own    *helper // the watchers of scopeName
	others *helper // the watchers of every other scope (nil for "one")
	gen    uint32  // scopeName's generation, from the last reply
	id     uint32
}

// adminCall sends one admin request about scope name and returns its reply.
func (sb *scopeBed) adminCall(op wire.Op, name string, payload []byte) (wire.Frame, error) {
	sb.id++
	return rawCall(sb.ctl, op, sb.id, append(wire.AppendName(nil, name), payload...))
}

// newScopeBed starts a daemon with n container scopes (scopeName first,
// bound to process owner), each with scopesWatchers watchers held by
// waiters helpers.
func newScopeBed(b *bench, n, owner int) (sb *scopeBed, err error) {
	d, err := startDaemon(b.genidctl)
	if err != nil {
		return nil, err
	}
	sb = &scopeBed{d: d, ctl: -1}
	defer func() {
		if err != nil {
			err = d.failed(err)
			sb.stop()
		}
	}()
	if sb.ctl, err = dialRaw(d.adminSock()); err != nil {
		return sb, err
	}
	if err := sb.createScopes(n, owner); err != nil {
		return sb, err
	}
	own, others, err := scopeWatchers(d, n)
	if err != nil {
		return sb, err
	}
	if sb.own, err = startHelper(b.waiters, "genid", len(own), own); err != nil {
		closeAll(others)
		return sb, err
	}
	if len(others) > 0 {
		if sb.others, err = startHelper(b.waiters, "genid", len(others), others); err != nil {
			return sb, err
		}
		if err = sb.others.ready(); err != nil {
			return sb, err
		}
	}
	return sb, nil
}

// createScopes makes n container scopes, scopeName first, bound to process
// owner if not 0.
func (sb *scopeBed) createScopes(n, owner int) error {
	for i := range n {
		req := wire.ScopeCreate{}
		if i == 0 {
			req.PID = uint32(owner)
		}
		if _, err := sb.adminCall(wire.OpScopeCreate, scopeNameOf(i), req.Encode()); err != nil {
			return fmt.Errorf("scope %d: %w", i, err)
		}
	}
	return nil
}

// scopeWatchers connects scopesWatchers watchers to each of the n scopes:
// own are scopeName's, others the other scopes'.
func scopeWatchers(d *daemon, n int) (own, others []int, err error) {
	for i := range n {
		fds, err := watchersAt(filepath.Join(d.dir, "scopes", scopeNameOf(i), "genid.sock"), scopesWatchers)
		if err != nil {
			closeAll(own)
			closeAll(others)
			return nil, nil, fmt.Errorf("scope %d: %w", i, err)
		}
		if i == 0 {
			own = fds
		} else {
			others = append(others, fds...)
		}
	}
	return own, others, nil
}

// scopeMemory starts a daemon in a memory cgroup of its own (hostmem.go),
// its run dir on a tmpfs and its state dir on the temporary directory's
// file system, makes n idle container scopes, then gives each
// scopesWatchers idle watchers, and returns what one scope costs the
// machine: bare, and with its watchers. Without a memory cgroup, only what
// is seen from outside the kernel is counted (RSS and files): cg says
// which.
func scopeMemory(b *bench, n int) (bare, watched memSample, cg bool, err error) {
	// The run dir on a tmpfs of its own, as /run is: its files' pages
	// are shmem, its directories take none.
	tmp, err := os.MkdirTemp("", "genid-bench-run-")
	if err != nil {
		return bare, watched, false, err
	}
	defer os.Remove(tmp)
	if err := unix.Mount("tmpfs", tmp, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return bare, watched, false, fmt.Errorf("tmpfs for the run dir: %w", err)
	}
	defer unix.Unmount(tmp, unix.MNT_DETACH)
	d, err := startDaemonIn(tmp, b.genidctl)
	if err != nil {
		return bare, watched, false, err
	}
	sb := &scopeBed{d: d, ctl: -1}
	mc, err := newMemcg(d.pid())
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: scopes: %v: kernel memory not counted\n", err)
	}
	defer func() {
		sb.stop()
		mc.remove() // once its process has gone
	}()
	if sb.ctl, err = dialRaw(d.adminSock()); err != nil {
		return bare, watched, false, err
	}
	// Warm up what the first scope initialises once, not per scope.
	if _, err = sb.adminCall(wire.OpScopeCreate, "warm-up", wire.ScopeCreate{}.Encode()); err == nil {
		_, err = sb.adminCall(wire.OpScopeRemove, "warm-up", nil)
	}
	// A cgroup's statistics are flushed at least every 2 s.
	const settle = 2500 * time.Millisecond
	var s [3]memSample
	sample := func(i int) {
		if err == nil {
			time.Sleep(settle)
			s[i], err = d.memory(mc)
		}
	}
	sample(0)
	if err == nil {
		err = sb.createScopes(n, 0)
	}
	sample(1)
	var own, others []int
	if err == nil {
		own, others, err = scopeWatchers(d, n)
		defer closeAll(own)
		defer closeAll(others)
	}
	sample(2)
	if err != nil {
		return bare, watched, false, d.failed(err)
	}
	return s[1].sub(s[0]).div(int64(n)), s[2].sub(s[0]).div(int64(n)), mc != nil, nil
}

func scopeNameOf(i int) string {
	if i == 0 {
		return scopeName
	}
	return fmt.Sprintf("c%d", i)
}

// watchersAt connects n watchers to the socket at path, each registered.
func watchersAt(path string, n int) ([]int, error) {
	fds := make([]int, 0, n)
	for range n {
		fd, err := dialRaw(path)
		if err == nil {
			if _, err = rawCall(fd, wire.OpWatch, 1, nil); err == nil {
				err = bound(fd, 0) // the helper blocks on it
			}
			if err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("watcher %d: %w", len(fds), err)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

func (sb *scopeBed) stop() {
	if sb.own != nil {
		sb.own.stop()
	}
	if sb.others != nil {
		sb.others.stop()
	}
	if sb.ctl >= 0 {
		unix.Close(sb.ctl)
	}
	sb.d.stop()
}

// bump times a bump of scopeName from the request to the last of its
// watchers' reads, in ms.
func (sb *scopeBed) bump() (float64, error) {
	if err := sb.own.ready(); err != nil {
		return 0, err
	}
	sb.id++
	frame := wire.Append(nil, wire.Header{Op: wire.OpBump, ID: sb.id},
		append(wire.AppendName(nil, scopeName), wire.Bump{Reason: "bench"}.Encode()...))
	t0 := mono()
	if err := writeAll(sb.ctl, frame); err != nil {
		return 0, err
	}
	t1, err := sb.own.done()
	if err != nil {
		return 0, err
	}
	f, err := rawFrame(sb.ctl)
	if err == nil && (f.Status != wire.StatusOK || len(f.Payload) < 4) {
		err = fmt.Errorf("%v: %s", f.Status, f.Payload)
	}
	if err != nil {
		return 0, fmt.Errorf("bump: %w", err)
	}
	sb.gen = binary.LittleEndian.Uint32(f.Payload)
	return ms(t1 - t0), nil
}

// restore times what the CRIU plugin asks of the daemon for a container
// restore: connect to the admin socket, open a restore, restore the
// container's scope past its recorded generation for the restored tasks'
// root (scopeName's owner, so the daemon finds the scope among the others
// by it), and the reply; in ms. The scope's watchers are then told, as on
// a real restore, outside the timing.
func (sb *scopeBed) restore(owner int) (float64, error) {
	if err := sb.own.ready(); err != nil {
		return 0, err
	}
	req := wire.Append(nil, wire.Header{Op: wire.OpRestore, ID: 1}, append(wire.AppendName(nil, ""), wire.Restore{Flags: wire.FlagBegin}.Encode()...))
	req = wire.Append(req, wire.Header{Op: wire.OpRestore, ID: 2}, append(wire.AppendName(nil, scopeName),
		wire.Restore{Flags: wire.FlagAvoid, Avoid: sb.gen, PID: uint32(owner)}.Encode()...))
	t0 := mono()
	fd, err := dialRaw(sb.d.adminSock())
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := writeAll(fd, req); err != nil {
		return 0, err
	}
	var f wire.Frame
	for f.ID != 2 {
		if f, err = rawFrame(fd); err == nil && f.Status != wire.StatusOK {
			err = fmt.Errorf("%v: %s", f.Status, f.Payload)
		}
		if err != nil {
			return 0, fmt.Errorf("restore: %w", err)
		}
	}
	t1 := mono()
	name, _, err := wire.ParseName(f.Payload[4:])
	if err != nil || name != scopeName {
		return 0, fmt.Errorf("restore: reply names scope %q (%v), want %s", name, err, scopeName)
	}
	sb.gen = binary.LittleEndian.Uint32(f.Payload)
	if _, err := sb.own.done(); err != nil {
		return 0, err
	}
	return ms(t1 - t0), nil
}

func (b *bench) scopes(rep *Report) error {
	if err := b.scopesTiming(rep); err != nil {
		return err
	}
	// Once the beds have gone: their watchers hold most of the bench's
	// file descriptors.
	return b.scopesMemory(rep)
}

// scopesTiming is the figures of bumps and restores of one scope among
// many, and of the other scopes' watchers they woke.
func (b *bench) scopesTiming(rep *Report) error {
	// The scope's owner: a process that lives as long as the figure, as a
	// container's init does.
	owner := exec.Command("sleep", "3600")
	if err := owner.Start(); err != nil {
		return err
	}
	defer func() {
		owner.Process.Kill()
		waitBounded(owner, 10*time.Second)
	}()
	pid := owner.Process.Pid
	one, err := newScopeBed(b, 1, pid)
	if err != nil {
		return fmt.Errorf("one scope: %w", err)
	}
	defer one.stop()
	many, err := newScopeBed(b, scopesMany, pid)
	if err != nil {
		return fmt.Errorf("%d scopes: %w", scopesMany, err)
	}
	defer many.stop()
	others0 := many.others.switches()

	// The 1.05 target needs a narrow interval: the ratio is near 1, and
	// the interval narrows only as the square root of the rounds.
	rounds := b.runs(2000)
	var bumpOne, bumpMany, restOne, restMany []float64
	for i := range rounds {
		beds := []*scopeBed{one, many}
		if i%2 == 1 { // alternate which goes first
			beds[0], beds[1] = many, one
		}
		for _, sb := range beds {
			bt, err := sb.bump()
			if err != nil {
				return sb.d.failed(err)
			}
			rt, err := sb.restore(pid)
			if err != nil {
				return sb.d.failed(err)
			}
			if sb == one {
				bumpOne, restOne = append(bumpOne, bt), append(restOne, rt)
			} else {
				bumpMany, restMany = append(bumpMany, bt), append(restMany, rt)
			}
		}
	}
	// A bump of one scope must wake no watcher of another: their threads,
	// blocked in read(), switch only if woken.
	woken := float64(many.others.switches() - others0)
	wakeRow := Row{Name: fmt.Sprintf("scopes: other scopes' watchers woken by %d bumps and %d restores of one, %d scopes × %d watchers", rounds, rounds, scopesMany, scopesWatchers),
		Figure: Stat{Unit: "wake-ups", Median: woken, P99: woken, N: 1, Samples: []float64{woken}},
		Note:   "context switches of the other scopes' watcher threads (blocked in read()) over every round"}
	rep.add(wakeRow.goal("0", woken == 0))

	bo, bm := summarise("ms", bumpOne), summarise("ms", bumpMany)
	br := compare(fmt.Sprintf("scopes: bump of one scope → its %d watchers read, %d scopes", scopesWatchers, scopesMany), bm, "1 scope", bo, true)
	br.RatioOf = fmt.Sprintf("%d scopes / 1 scope", scopesMany)
	rep.add(br.goalCI("≤ 1.1×, the interval's", 1.1, ratioCI(bumpMany, bumpOne)))
	ro, rm := summarise("ms", restOne), summarise("ms", restMany)
	rr := compare(fmt.Sprintf("scopes: container restore request (admin socket), %d scopes", scopesMany), rm, "1 scope", ro, true)
	rr.RatioOf = br.RatioOf
	rr.Note = "what CRIU's plugin asks at a container restore: connect, begin, restore the scope of the restored root's pid past its record, reply (not a CRIU run: the daemon's side of it)"
	rep.add(rr.goalCI("≤ 1.05×, the interval's", 1.05, ratioCI(restMany, restOne)))
	return nil
}

// scopesMemory is the figure of memory per idle scope, from fresh daemons
// (the beds above have run rounds of bumps and restores).
func (b *bench) scopesMemory(rep *Report) error {
	var per, daemon []float64
	var bares, watcheds []memSample
	counted := true
	for range b.runs(3) {
		bare, watched, cg, err := scopeMemory(b, scopesMany)
		if err != nil {
			return err
		}
		counted = counted && cg
		bares, watcheds = append(bares, bare), append(watcheds, watched)
		if cg {
			per = append(per, float64(bare.charged()))
		} else {
			per = append(per, float64(bare.rssAnon+bare.files))
		}
		daemon = append(daemon, float64(bare.rssAnon+bare.rssFile))
	}
	fact := func(what string, of func(memSample) int64) {
		var v []float64
		for i := range bares {
			v = append(v, float64(of(bares[i])))
		}
		rep.Facts[fmt.Sprintf("scopes: per idle scope, %d scopes: %s (bytes, median)", scopesMany, what)] = int64(summarise("", v).Median)
	}
	fact("charged to the daemon's memory cgroup: anonymous", func(s memSample) int64 { return s.anon })
	fact("charged to the daemon's memory cgroup: file pages (page cache, shmem)", func(s memSample) int64 { return s.file })
	fact("charged to the daemon's memory cgroup: kernel", func(s memSample) int64 { return s.kernel })
	fact("daemon RssAnon", func(s memSample) int64 { return s.rssAnon })
	fact("daemon RssFile+RssShmem (the pages it maps)", func(s memSample) int64 { return s.rssFile })
	fact("allocated bytes of the run dir's and state dir's files", func(s memSample) int64 { return s.files })
	var w []float64
	for _, s := range watcheds {
		w = append(w, float64(s.charged()))
	}
	// The kernel allocates the sock of the daemon's end of a connection
	// in the connecting process: the bench's cgroup is charged with it.
	rep.Facts[fmt.Sprintf("scopes: per scope with its %d idle watchers, %d scopes: charged to the daemon's memory cgroup, the socks of the daemon's ends of the connections not included (bytes, median)", scopesWatchers, scopesMany)] = int64(summarise("", w).Median)
	// The figure: the daemon's own memory, the pages it maps
	// included (its RSS).
	d := summarise("bytes", daemon)
	rep.add(Row{Name: fmt.Sprintf("scopes: daemon memory per idle scope, %d scopes", scopesMany), Figure: d,
		Note: "growth of the daemon's RSS (RssAnon, and RssFile+RssShmem: the pages it maps) from creating the scopes, / scopes; fresh daemons"}.
		goal("≤ 16 KiB", d.Median <= 16<<10))
	// And what the machine holds for a scope because of the daemon,
	// whoever it is charged to: context, since most of it is what a
	// container is given (two pages, a socket, their directory entries).
	st := summarise("bytes", per)
	what := "growth of what the daemon's memory cgroup is charged with from creating the scopes (its anonymous memory, the pages of the files it wrote, its kernel memory), / scopes"
	if !counted {
		what = "no memory cgroup: the daemon's RssAnon growth and the allocated bytes of its run dir's and state dir's files from creating the scopes, / scopes (kernel memory not counted)"
	}
	rep.Facts[fmt.Sprintf("scopes: memory per idle scope, %d scopes, counted whole: %s (bytes, median)", scopesMany, what)] = int64(st.Median)
	return nil
}
