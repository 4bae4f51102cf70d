package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/proctest"
)

// The crash case's shape: bumpers and watchers that run through every
// round, kills within crashStormMax of the storm's start, and every wait
// of a round bounded by crashBound.
const (
	crashBumpers   = 3
	crashWatchers  = 4
	crashStormMax  = 40 * time.Millisecond
	crashBound     = 10 * time.Second
	crashStartKill = 10 // every crashStartKill-th round also kills a daemon while it starts
)

// TestCrash kills the daemon with SIGKILL at random moments of a storm of
// bumps from several clients and of watchers acking, and restarts it: no
// generation seen before the kill (a bump's reply, the page, a watcher's
// Wait) is above the generation after the restart, and every watcher
// comes back and sees the next bump.
func TestCrash(t *testing.T) { crashCase(t, "crash", false) }

// TestCrashRunDirRemoved is TestCrash with the run dir removed after each
// kill: the state dir's floor alone carries the generation over.
func TestCrashRunDirRemoved(t *testing.T) { crashCase(t, "crash-rundir-removed", true) }

// crashObs is one generation a client saw: a bump's reply, a reading of
// the page, a watcher's Wait.
type crashObs struct {
	kind string
	gen  uint32
}

type crashRig struct {
	t              *testing.T
	bin            string
	runDir, state  string
	d              *proctest.Daemon
	admin          *genid.Admin // the checker's
	watchers       []*crashWatcher
	mu             sync.Mutex
	obs            []crashObs // since the last check
	watcherAcks    atomic.Int64
	rounds         int // done
	startKills     int
	restartMax     time.Duration
	restartSum     time.Duration
	reconnectMax   time.Duration
	bumpsAcked     int64
	bumpsFailed    int64
	backwards      int
	lost           int
	watchersMissed int
}

type crashWatcher struct {
	c    *genid.Client
	w    *genid.Watcher
	seen atomic.Uint32 // the highest generation its Wait returned
	errs atomic.Int64  // Waits that failed while the test ran
}

func crashCase(t *testing.T, name string, removeRunDir bool) {
	rounds := size(20, 1000)
	what := "run dir kept"
	if removeRunDir {
		what = "run dir removed after each kill"
	}
	row := record(t, Row{
		Case:  name,
		Tried: fmt.Sprintf("%d kill -9 of the daemon amid bumps (%d clients) and acks (%d watchers), %s", rounds, crashBumpers, crashWatchers, what),
		Held:  "0 generations backwards, 0 acked bumps lost, every watcher back at the next bump",
	})
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	r := &crashRig{t: t, bin: genidctlPath(t), runDir: tortureRunDir(t), state: t.TempDir()}
	r.d = r.start()
	t.Cleanup(func() { r.d.Kill(syscall.SIGKILL) })
	var err error
	if r.admin, err = genid.OpenAdmin(r.runDir); err != nil {
		t.Fatal(err)
	}
	defer r.admin.Close()
	if _, err := r.generation(); err != nil {
		t.Fatal(err)
	}

	ctx, stopWatchers := context.WithCancel(context.Background())
	var wwg sync.WaitGroup
	defer func() {
		stopWatchers()
		wwg.Wait()
		for _, cw := range r.watchers {
			cw.w.Close()
			cw.c.Close()
		}
	}()
	for range crashWatchers {
		cw := &crashWatcher{}
		if cw.c, err = genid.Open(r.runDir); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, crashBound)
		cw.w, err = cw.c.Watch(wctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		r.watchers = append(r.watchers, cw)
		wwg.Go(func() { r.watch(ctx, cw) })
	}

	defer r.report(row)
	for round := range rounds {
		r.storm(time.Duration(rng.Int64N(int64(crashStormMax))))
		if removeRunDir {
			if err := os.RemoveAll(r.runDir); err != nil {
				t.Fatal(err)
			}
		}
		if round%crashStartKill == crashStartKill/2 {
			r.killWhileStarting(time.Duration(rng.Int64N(int64(15 * time.Millisecond))))
		}
		r.restartAndCheck()
		r.rounds++
		if t.Failed() {
			break
		}
		if (round+1)%100 == 0 {
			t.Logf("round %d: %d bumps acked, %d backwards, %d lost, %d watchers missed", round+1, r.bumpsAcked, r.backwards, r.lost, r.watchersMissed)
		}
	}
}

// report fills the case's row, also when a round stopped the case.
func (r *crashRig) report(row *Row) {
	t := r.t
	t.Helper()
	var watcherErrs int64
	for _, cw := range r.watchers {
		watcherErrs += cw.errs.Load()
	}
	row.Failures = r.backwards + r.lost + r.watchersMissed + int(watcherErrs)
	row.Figures = map[string]float64{
		"rounds":               float64(r.rounds),
		"kills_while_start":    float64(r.startKills),
		"bumps_acked":          float64(r.bumpsAcked),
		"bumps_failed":         float64(r.bumpsFailed),
		"watcher_acks":         float64(r.watcherAcks.Load()),
		"restart_ms_max":       durMs(r.restartMax),
		"restart_ms_mean":      durMs(r.restartSum) / float64(max(r.rounds, 1)),
		"watchers_back_ms_max": durMs(r.reconnectMax),
		"backwards":            float64(r.backwards),
		"acked_bumps_lost":     float64(r.lost),
		"watchers_missed":      float64(r.watchersMissed),
		"watcher_errors":       float64(watcherErrs),
	}
	if row.Failures > 0 {
		t.Errorf("%d generations backwards, %d acked bumps lost, %d watchers missed the next bump, %d watcher errors", r.backwards, r.lost, r.watchersMissed, watcherErrs)
	}
}

// durMs is d in milliseconds, for a figure.
func durMs(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// start starts a daemon (proctest.Start returns at once where a killed
// daemon left its socket file: generation waits until it serves).
func (r *crashRig) start() *proctest.Daemon {
	r.t.Helper()
	d, err := proctest.Start(exec.Command(r.bin, daemonArgv(r.runDir, r.state)...), r.runDir)
	if err != nil {
		r.t.Fatal(err)
	}
	return d
}

// generation asks the daemon for the host generation until it answers,
// for at most crashBound.
func (r *crashRig) generation() (uint32, error) {
	deadline := time.Now().Add(crashBound)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), crashBound)
		g, err := r.admin.Generation(ctx, "")
		cancel()
		if err == nil || time.Now().After(deadline) || !errors.Is(err, genid.ErrUnreachable) {
			return g, err
		}
		if r.d.Dead() {
			return 0, fmt.Errorf("daemon exited: %s", r.d.Log)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (r *crashRig) observe(kind string, g uint32) {
	r.mu.Lock()
	r.obs = append(r.obs, crashObs{kind, g})
	r.mu.Unlock()
}

// watch waits and acks, round after round: the client reconnects and
// registers again by itself after each restart.
func (r *crashRig) watch(ctx context.Context, cw *crashWatcher) {
	for ctx.Err() == nil {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		g, err := cw.w.Wait(wctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				cw.errs.Add(1)
				r.t.Logf("watcher: %v", err)
			}
			continue
		}
		r.observe("watch", g)
		if g > cw.seen.Load() {
			cw.seen.Store(g)
		}
		actx, cancel := context.WithTimeout(ctx, crashBound)
		// A newer generation (ErrStale) or a dead daemon (ErrUnreachable,
		// then the ack goes with the next registration) is the storm's.
		if cw.w.Ack(actx, g) == nil {
			r.watcherAcks.Add(1)
		}
		cancel()
	}
}

// storm bumps from crashBumpers clients, reading the page after each
// bump, and kills the daemon after d. It returns once every bumper has
// stopped, with what they saw recorded.
func (r *crashRig) storm(d time.Duration) {
	page, err := genid.Open(r.runDir)
	if err != nil {
		r.t.Fatal(err)
	}
	defer page.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stop atomic.Bool
	var acked, failed atomic.Int64
	var wg sync.WaitGroup
	for i := range crashBumpers {
		wg.Go(func() {
			a, err := genid.OpenAdmin(r.runDir)
			if err != nil {
				r.t.Error(err)
				return
			}
			defer a.Close()
			for !stop.Load() {
				g, err := a.Bump(ctx, "", 0, fmt.Sprintf("torture-%d", i))
				if err != nil {
					failed.Add(1)
					continue
				}
				acked.Add(1)
				r.observe("bump", g)
				r.observe("page", page.Generation())
			}
		})
	}
	time.Sleep(d)
	r.d.Kill(syscall.SIGKILL)
	// Calls under way end with the connection; a bumper that started one
	// since would wait for a socket that refuses: cut it short.
	stop.Store(true)
	cut := time.AfterFunc(50*time.Millisecond, cancel)
	wg.Wait()
	cut.Stop()
	r.observe("page", page.Generation())
	r.bumpsAcked += acked.Load()
	r.bumpsFailed += failed.Load()
}

// killWhileStarting starts a daemon and kills it after d, whether it has
// made its socket or not.
func (r *crashRig) killWhileStarting(d time.Duration) {
	cmd := exec.Command(r.bin, daemonArgv(r.runDir, r.state)...)
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	time.Sleep(d)
	cmd.Process.Kill()
	cmd.Wait()
	r.startKills++
}

// restartAndCheck starts the daemon again and checks the round: nothing
// seen is above the generation it resumes at; then a bump reaches every
// watcher, and they all ack it.
func (r *crashRig) restartAndCheck() {
	t := r.t
	t0 := time.Now()
	r.d = r.start()
	after, err := r.generation()
	if err != nil {
		t.Fatalf("after restart: %v\n%s", err, r.d.Log)
	}
	took := time.Since(t0)
	r.restartMax = max(r.restartMax, took)
	r.restartSum += took
	page, err := genid.Open(r.runDir)
	if err != nil {
		t.Fatal(err)
	}
	r.observe("page", page.Generation())
	page.Close()

	r.mu.Lock()
	obs := r.obs
	r.obs = nil
	r.mu.Unlock()
	for _, o := range obs {
		if o.gen <= after {
			continue
		}
		if o.kind == "bump" {
			r.lost++
		} else {
			r.backwards++
		}
		if r.lost+r.backwards <= 5 {
			t.Errorf("%s saw %d, the restarted daemon is at %d", o.kind, o.gen, after)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), crashBound)
	defer cancel()
	g, err := r.admin.Bump(ctx, "", 0, "torture-check")
	if err != nil {
		t.Fatalf("bump after restart: %v", err)
	}
	r.observe("bump", g)
	if g != after+1 {
		t.Errorf("bump after restart at %d: %d", after, g)
	}
	missed := false
	for _, cw := range r.watchers {
		for cw.seen.Load() < g && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		if cw.seen.Load() < g {
			r.watchersMissed++
			missed = true
			t.Errorf("a watcher is at %d %v after the restart, the bump at %d", cw.seen.Load(), crashBound, g)
		}
	}
	// Each is registered with the new daemon and acked.
	ctx, cancel = context.WithTimeout(context.Background(), crashBound)
	defer cancel()
	var last string
	for {
		st, err := r.admin.Status(ctx, "")
		if err == nil && st.Watchers == crashWatchers && st.Outdated == 0 {
			break
		}
		if err == nil {
			last = fmt.Sprintf("%d watchers, %d outdated", st.Watchers, st.Outdated)
		}
		if ctx.Err() != nil {
			if !missed {
				r.watchersMissed++
			}
			missed = true
			t.Errorf("%v after the restart, want %d watchers, none outdated: %s (%v)", crashBound, crashWatchers, last, err)
			break
		}
		time.Sleep(time.Millisecond)
	}
	if missed {
		r.explain()
	}
	r.reconnectMax = max(r.reconnectMax, time.Since(t0))
	ctx, cancel = context.WithTimeout(context.Background(), crashBound)
	defer cancel()
	if err := r.admin.WaitWatchers(ctx, "", crashBound); err != nil {
		t.Errorf("wait-watchers after restart: %v", err)
	}
}

// explain logs what the watchers and the daemon think, and where the
// test's goroutines are, when a watcher missed a bump.
func (r *crashRig) explain() {
	t := r.t
	for i, cw := range r.watchers {
		g, err := cw.w.TryWait()
		t.Logf("watcher %d: seen %d, acked %d, TryWait %d %v", i, cw.seen.Load(), cw.w.Acked(), g, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), crashBound)
	defer cancel()
	st, err := r.admin.Status(ctx, "")
	t.Logf("daemon's status: %+v %v", st, err)
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	t.Logf("goroutines:\n%s", b.String())
	t.Logf("daemon log:\n%s", logTail([]byte(r.d.Log.String()), 60))
}
