package main

import (
	"encoding/binary"
	"fmt"
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
	// fileRSS is the growth of the daemon's file-backed RSS from creating
	// the scopes: the pages it maps.
	fileRSS int64
}

// adminCall sends one admin request about scope name and returns its reply.
func (sb *scopeBed) adminCall(op wire.Op, name string, payload []byte) (wire.Frame, error) {
	sb.id++
	return rawCall(sb.ctl, op, sb.id, append(wire.AppendName(nil, name), payload...))
}

// newScopeBed starts a daemon with n container scopes (scopeName first,
// bound to process owner), each with scopesWatchers watchers held by
// waiters helpers. rss receives the daemon's RSS before the scopes, after
// them, and after their watchers.
func newScopeBed(b *bench, n, owner int, rss *[3]int64) (sb *scopeBed, err error) {
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
	// Warm up what the first scope initialises once, not per scope.
	if _, err = sb.adminCall(wire.OpScopeCreate, "warm-up", wire.ScopeCreate{}.Encode()); err == nil {
		_, err = sb.adminCall(wire.OpScopeRemove, "warm-up", nil)
	}
	if err != nil {
		return sb, err
	}
	time.Sleep(300 * time.Millisecond)
	file0 := d.status("RssFile:")
	rss[0] = d.rss()
	for i := range n {
		req := wire.ScopeCreate{}
		if i == 0 {
			req.PID = uint32(owner)
		}
		if _, err := sb.adminCall(wire.OpScopeCreate, scopeNameOf(i), req.Encode()); err != nil {
			return sb, fmt.Errorf("scope %d: %w", i, err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	rss[1] = d.rss()
	sb.fileRSS = d.status("RssFile:") - file0
	var own, others []int
	for i := range n {
		fds, err := watchersAt(filepath.Join(d.dir, "scopes", scopeNameOf(i), "genid.sock"), scopesWatchers)
		if err != nil {
			closeAll(own)
			closeAll(others)
			return sb, fmt.Errorf("scope %d: %w", i, err)
		}
		if i == 0 {
			own = fds
		} else {
			others = append(others, fds...)
		}
	}
	time.Sleep(300 * time.Millisecond)
	rss[2] = d.rss()
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
	var rssOne, rssMany [3]int64
	one, err := newScopeBed(b, 1, pid, &rssOne)
	if err != nil {
		return fmt.Errorf("one scope: %w", err)
	}
	defer one.stop()
	many, err := newScopeBed(b, scopesMany, pid, &rssMany)
	if err != nil {
		return fmt.Errorf("%d scopes: %w", scopesMany, err)
	}
	defer many.stop()
	perScope := float64(rssMany[1]-rssMany[0]) / scopesMany
	perWatched := float64(rssMany[2]-rssMany[0]) / scopesMany
	rep.Facts[fmt.Sprintf("scopes: daemon RSS per scope with its %d idle watchers, %d scopes (bytes)", scopesWatchers, scopesMany)] = int64(perWatched)
	rep.Facts[fmt.Sprintf("scopes: of the daemon's RSS per idle scope, its mapped files (the generation, VMClock and floor pages) (bytes), %d scopes", scopesMany)] = many.fileRSS / scopesMany
	others0 := many.others.switches()

	rounds := b.runs(400) // cheap, and the 1.05 target needs a narrow interval
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
	mem := Row{Name: fmt.Sprintf("scopes: daemon memory per idle scope, %d scopes", scopesMany),
		Figure: Stat{Unit: "bytes", Median: perScope, P99: perScope, N: 1, Samples: []float64{perScope}},
		Note:   "daemon RSS growth from creating the scopes (their mapped pages included), / scopes"}
	rep.add(mem.goal("≤ 16 KiB", perScope <= 16<<10))
	return nil
}
