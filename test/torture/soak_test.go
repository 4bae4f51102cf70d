package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/proctest"
)

// The soak's shape: concurrent bumpers and churners, every wait bounded
// by soakBound, and how far the daemon's descriptors and goroutines may
// stay above their baseline once every watcher is gone.
const (
	soakBumpers     = 8
	soakChurners    = 4
	soakOpeners     = 32
	soakBound       = 60 * time.Second
	soakFdSlack     = 4
	soakGoroutSlack = 16
	soakRSSSlack    = 64 << 20 // bytes above the baseline: a Go heap gives memory back lazily
)

// TestSoak holds watchers over many scopes under churn (watchers closed and
// new ones registered in their place) while the host and container scopes
// are bumped, each bump acked by the scope's orchestrator and followed by a
// barrier wait on the scope (the admin's, a member's or the
// orchestrator's, in turn): every
// barrier returns, every live watcher ends at its scope's last generation,
// and once they are gone the daemon's descriptors and goroutines are back
// at their baseline, its memory within a loose bound.
func TestSoak(t *testing.T) {
	nWatchers, nScopes, nBumps := size(500, 10000), size(10, 100), size(500, 10000)
	nChurn := nWatchers
	row := record(t, Row{
		Case: "soak",
		Tried: fmt.Sprintf("%d watchers over %d scopes (host and containers), %d closed and replaced, %d bumps each with a barrier wait (3 ways)",
			nWatchers, nScopes, nChurn, nBumps),
		Held: "every barrier returned, every watcher at its scope's last generation, daemon fds and goroutines back at baseline",
	})
	raiseNofile(t, uint64(nWatchers+1024)) // on either side of the sockets
	bin := genidctlPath(t)
	runDir := tortureRunDir(t)
	d := proctest.Spawn(t, bin, runDir, daemonArgv(runDir, t.TempDir())...)
	s := &soak{t: t, runDir: runDir}
	defer s.closeAll()
	var err error
	if s.admin, err = genid.OpenAdmin(runDir); err != nil {
		t.Fatal(err)
	}
	defer s.admin.Close()
	defer s.closeClients()
	s.makeScopes(nScopes)

	base := s.metrics()
	t.Logf("baseline: %v", base)
	s.openWatchers(nWatchers)
	peak := s.metrics()
	t.Logf("%d watchers: %v", nWatchers, peak)

	var wg sync.WaitGroup
	var bumpIdx atomic.Int64
	for range soakBumpers {
		// A connection has one barrier wait at a time: a bumper has its
		// own admin connection, and holds the scope it bumps (whose
		// member client it may use).
		a, err := genid.OpenAdmin(runDir)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer a.Close()
			for i := bumpIdx.Add(1) - 1; i < int64(nBumps) && !t.Failed(); i = bumpIdx.Add(1) - 1 {
				s.bumpAndWait(a, int(i%int64(nScopes)), int(i/int64(nScopes)%soakBarriers))
			}
		})
	}
	var churnIdx atomic.Int64
	for c := range soakChurners {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			for churnIdx.Add(1) <= int64(nChurn) && !t.Failed() {
				s.churn(rng.IntN(nWatchers))
			}
		})
	}
	wg.Wait()
	s.checkEnd()
	held := s.metrics()
	t.Logf("after the bumps: %v", held)

	s.closeAll()
	end := s.waitBaseline(base)
	t.Logf("all watchers closed: %v", end)

	fds, gor, rss := "process_open_fds", "go_goroutines", "process_resident_memory_bytes"
	row.Figures = map[string]float64{
		"watchers": float64(nWatchers), "scopes": float64(nScopes), "bumps": float64(s.bumps.Load()),
		"churned": float64(s.churned.Load()), "barrier_waits": float64(s.barriers.Load()),
		"watcher_acks": float64(s.acks.Load()),
		"fds_base":     base[fds], "fds_peak": peak[fds], "fds_end": end[fds],
		"goroutines_base": base[gor], "goroutines_peak": peak[gor], "goroutines_end": end[gor],
		"rss_mib_base": base[rss] / (1 << 20), "rss_mib_peak": max(peak[rss], held[rss]) / (1 << 20), "rss_mib_end": end[rss] / (1 << 20),
	}
	row.Failures = int(s.failures.Load())
	if end[fds] > base[fds]+soakFdSlack {
		row.Failures++
		t.Errorf("daemon fds %v after every watcher closed, baseline %v", end[fds], base[fds])
	}
	if end[gor] > base[gor]+soakGoroutSlack {
		row.Failures++
		t.Errorf("daemon goroutines %v after every watcher closed, baseline %v", end[gor], base[gor])
	}
	if end[rss] > base[rss]+soakRSSSlack {
		row.Failures++
		t.Errorf("daemon RSS %.0f MiB after every watcher closed, baseline %.0f MiB", end[rss]/(1<<20), base[rss]/(1<<20))
	}
	if d.Dead() {
		t.Errorf("daemon exited:\n%s", d.Log)
	}
}

type soak struct {
	t       *testing.T
	runDir  string
	admin   *genid.Admin
	names   []string        // scope names, "" the host's
	clients []*genid.Client // one per scope
	// by scope: a watcher that acks each bump as it is made, then waits
	// for the others (a bumper's, under held)
	orchestrators []*genid.Watcher
	held          []sync.Mutex // by scope: a bumper's

	mu    sync.Mutex
	slots []*soakWatcher // by slot; slot i watches scope i % len(names)

	bumps, churned, barriers, acks, failures atomic.Int64
}

// soakWatcher is a registered watcher and the goroutine that waits and
// acks for it until it is closed.
type soakWatcher struct {
	scope  int
	w      *genid.Watcher
	acked  atomic.Uint32
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *soak) fail(format string, args ...any) {
	s.failures.Add(1)
	if s.failures.Load() <= 10 {
		s.t.Errorf(format, args...)
	}
}

// makeScopes makes n scopes, the host's and n-1 containers', a client of
// each, already connected, and its orchestrator, so the baseline counts
// their connections.
func (s *soak) makeScopes(n int) {
	t := s.t
	ctx, cancel := context.WithTimeout(context.Background(), soakBound)
	defer cancel()
	for i := range n {
		name, dir := "", s.runDir
		if i > 0 {
			name = fmt.Sprintf("soak%02d", i)
			if _, err := s.admin.CreateScope(ctx, name, genid.ScopeOptions{}); err != nil {
				t.Fatalf("create scope %s: %v", name, err)
			}
			dir = filepath.Join(s.runDir, "scopes", name)
		}
		c, err := genid.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		s.names, s.clients = append(s.names, name), append(s.clients, c)
		s.held = make([]sync.Mutex, len(s.names))
		if _, err := c.Outdated(ctx); err != nil {
			t.Fatalf("scope %q: %v", name, err)
		}
		w, err := c.Watch(ctx)
		if err != nil {
			t.Fatalf("scope %q: %v", name, err)
		}
		s.orchestrators = append(s.orchestrators, w)
	}
}

// metrics reads the daemon's own figures: go_goroutines, process_open_fds,
// process_resident_memory_bytes...
func (s *soak) metrics() map[string]float64 {
	ctx, cancel := context.WithTimeout(context.Background(), soakBound)
	defer cancel()
	b, err := s.admin.Metrics(ctx)
	if err != nil {
		s.t.Fatalf("metrics: %v", err)
	}
	m := promValues(b)
	out := map[string]float64{}
	for _, k := range []string{"process_open_fds", "go_goroutines", "process_resident_memory_bytes"} {
		v, ok := m[k]
		if !ok {
			s.t.Fatalf("metrics without %s:\n%s", k, b)
		}
		out[k] = v
	}
	return out
}

func (s *soak) openWatchers(n int) {
	s.slots = make([]*soakWatcher, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range soakOpeners {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n) && !s.t.Failed(); i = next.Add(1) - 1 {
				sw := s.watch(int(i) % len(s.names))
				s.mu.Lock()
				s.slots[i] = sw
				s.mu.Unlock()
			}
		})
	}
	wg.Wait()
	if s.t.Failed() {
		s.t.FailNow()
	}
}

// watch registers a watcher of scope and starts its loop: wait, ack,
// until closed. A watcher that cannot be made fails the case.
func (s *soak) watch(scope int) *soakWatcher {
	ctx, cancel := context.WithTimeout(context.Background(), soakBound)
	w, err := s.clients[scope].Watch(ctx)
	cancel()
	if err != nil {
		s.fail("watch scope %q: %v", s.names[scope], err)
		return nil
	}
	ctx, cancel = context.WithCancel(context.Background())
	sw := &soakWatcher{scope: scope, w: w, cancel: cancel, done: make(chan struct{})}
	sw.acked.Store(w.Acked())
	go func() {
		defer close(sw.done)
		for {
			g, err := w.Wait(ctx)
			if err != nil {
				if ctx.Err() == nil {
					s.fail("wait on scope %q: %v", s.names[scope], err)
				}
				return
			}
			actx, acancel := context.WithTimeout(ctx, soakBound)
			err = w.Ack(actx, g)
			acancel()
			switch {
			case err == nil:
				sw.acked.Store(g)
				s.acks.Add(1)
			case errors.Is(err, genid.ErrStale): // a newer one came: Wait returns it next
			case ctx.Err() == nil:
				s.fail("ack %d on scope %q: %v", g, s.names[scope], err)
				return
			default:
				return
			}
		}
	}()
	return sw
}

func (sw *soakWatcher) close() {
	if sw == nil {
		return
	}
	sw.cancel()
	<-sw.done
	sw.w.Close()
}

// churn closes slot i's watcher and registers a new one of its scope.
func (s *soak) churn(i int) {
	s.mu.Lock()
	for s.slots[i] == nil { // another churner has it: take the next
		i = (i + 1) % len(s.slots)
	}
	old := s.slots[i]
	s.slots[i] = nil
	s.mu.Unlock()
	old.close()
	sw := s.watch(old.scope)
	s.mu.Lock()
	s.slots[i] = sw
	s.mu.Unlock()
	s.churned.Add(1)
}

// The three ways to wait until no watcher of a scope is outdated.
const (
	soakBarrierAdmin   = iota // Admin.WaitWatchers, on the admin socket
	soakBarrierMember         // Client.WaitWatchers, on the scope's own socket
	soakBarrierWatcher        // Watcher.WaitWatchers: an orchestrator that watches too
	soakBarriers
)

// bumpAndWait bumps scope; the scope's orchestrator, a watcher itself,
// takes the new generation and acks it; then a barrier waits until none
// of the scope's watchers is outdated, the way barrier says.
func (s *soak) bumpAndWait(a *genid.Admin, scope, barrier int) {
	s.held[scope].Lock()
	defer s.held[scope].Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), soakBound)
	defer cancel()
	name := s.names[scope]
	g, err := a.Bump(ctx, name, 0, "soak")
	if err != nil {
		s.fail("bump scope %q: %v", name, err)
		return
	}
	s.bumps.Add(1)
	orch := s.orchestrators[scope]
	if got, err := orch.Wait(ctx); err != nil || got != g {
		s.fail("the orchestrator of scope %q: Wait %d, %v after the bump to %d", name, got, err, g)
		return
	}
	if err := orch.Ack(ctx, g); err != nil {
		s.fail("the orchestrator of scope %q: ack %d: %v", name, g, err)
		return
	}
	switch barrier {
	case soakBarrierAdmin:
		err = a.WaitWatchers(ctx, name, soakBound)
	case soakBarrierMember:
		err = s.clients[scope].WaitWatchers(ctx, soakBound)
	default:
		err = orch.WaitWatchers(ctx, soakBound)
	}
	s.barriers.Add(1)
	if err != nil {
		s.fail("wait-watchers of scope %q (way %d): %v", name, barrier, err)
	}
}

// checkEnd checks that every live watcher acked its scope's last
// generation, and that the daemon counts them all and none outdated.
func (s *soak) checkEnd() {
	t := s.t
	ctx, cancel := context.WithTimeout(context.Background(), soakBound)
	defer cancel()
	last := make([]uint32, len(s.names))
	live := make([]int, len(s.names))
	for i, name := range s.names {
		g, err := s.admin.Generation(ctx, name)
		if err != nil {
			t.Fatalf("generation of %q: %v", name, err)
		}
		last[i] = g
	}
	behind := 0
	for _, sw := range s.slots {
		if sw == nil {
			continue
		}
		live[sw.scope]++
		for sw.acked.Load() != last[sw.scope] && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		if sw.acked.Load() != last[sw.scope] {
			behind++
		}
	}
	if behind > 0 {
		s.fail("%d watchers not at their scope's last generation %v after the last bump", behind, soakBound)
	}
	for i, name := range s.names {
		st, err := s.admin.Status(ctx, name)
		if err != nil {
			t.Fatalf("status of %q: %v", name, err)
		}
		live[i]++ // its orchestrator
		if st.Watchers != live[i] || st.Outdated != 0 || st.Generation != last[i] {
			s.fail("scope %q: %d watchers (%d live), %d outdated, at %d (last %d)", name, st.Watchers, live[i], st.Outdated, st.Generation, last[i])
		}
	}
}

// closeAll closes every watcher, once.
func (s *soak) closeAll() {
	s.mu.Lock()
	slots := s.slots
	s.slots = nil
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, sw := range slots {
		wg.Go(sw.close)
	}
	wg.Wait()
}

// waitBaseline waits, at most soakBound, until the daemon's descriptors
// and goroutines are back within their slack of base, and returns its
// figures then.
func (s *soak) waitBaseline(base map[string]float64) map[string]float64 {
	deadline := time.Now().Add(soakBound)
	for {
		m := s.metrics()
		if m["process_open_fds"] <= base["process_open_fds"]+soakFdSlack &&
			m["go_goroutines"] <= base["go_goroutines"]+soakGoroutSlack || time.Now().After(deadline) {
			return m
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *soak) closeClients() {
	for _, w := range s.orchestrators {
		w.Close()
	}
	for _, c := range s.clients {
		c.Close()
	}
}
