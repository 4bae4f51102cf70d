package criu

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/servertest"
)

// tortureRow is test/torture's Row, as JSON: `make torture` runs the
// restore cycles here, in the test bed, and adds their row to its table
// (-torture.include).
type tortureRow struct {
	Case     string             `json:"case"`
	Tried    string             `json:"tried"`
	Held     string             `json:"held"`
	Failures int                `json:"failures"`
	Passed   bool               `json:"passed"`
	Seconds  float64            `json:"seconds"`
	Figures  map[string]float64 `json:"figures,omitempty"`
	Full     bool               `json:"full"`
}

// cycleWatchers is how many watchers the cycled container runs.
const cycleWatchers = 3

// The torture suite's restore cycles (issue 20, A.5): one runc container
// with three watchers, a reader of the mapped page and one of
// /dev/vmclock0 is checkpointed and restored GENID_TORTURE_CYCLES times
// (3 unless told; `make torture` asks for 100), each time from the
// checkpoint just taken. Each restore moves the container's scope one past
// its record, so the processes inside see as many distinct generations as
// there were cycles; each time every watcher is re-attached, sees the new
// generation and acks it (the scope's barrier clears), and both readers
// see it. With GENID_TORTURE_ROW=FILE, the outcome goes to FILE as a row of
// test/torture's table.
func TestRestoreCycles(t *testing.T) {
	n := 3
	if s := os.Getenv("GENID_TORTURE_CYCLES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("GENID_TORTURE_CYCLES=%q: want a count", s)
		}
		n = v
	}
	start := time.Now()
	done, failures := 0, 0
	var perCycle []time.Duration
	var seen int
	t.Cleanup(func() {
		path := os.Getenv("GENID_TORTURE_ROW")
		if path == "" {
			return
		}
		var slowest, sum time.Duration
		for _, d := range perCycle {
			slowest = max(slowest, d)
			sum += d
		}
		row := tortureRow{
			Case:     "restore-cycles",
			Tried:    fmt.Sprintf("%d runc checkpoint+restore cycles of a container with %d watchers, an mmap reader, a thread asleep on the page and a vmclock reader (test bed)", n, cycleWatchers),
			Held:     fmt.Sprintf("%d cycles restored, %d distinct generations seen inside, every watcher re-attached and acked each time", done, seen),
			Failures: failures + n - done,
			Seconds:  time.Since(start).Seconds(),
			Figures: map[string]float64{
				"cycles": float64(done), "generations_seen": float64(seen),
				"slowest_cycle_s": slowest.Seconds(), "mean_cycle_s": sum.Seconds() / float64(max(len(perCycle), 1)),
			},
			Full: n >= 100,
		}
		row.Passed = !t.Failed() && row.Failures == 0
		b, _ := json.MarshalIndent([]tortureRow{row}, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Errorf("GENID_TORTURE_ROW: %v", err)
		}
	})

	h := newHost(t, "cycles")
	h.start(0)
	c := newCycledContainer(t, h)
	for i := range n {
		began := time.Now()
		if !restoreCycle(t, h, c, i) {
			failures++
		}
		done++
		perCycle = append(perCycle, time.Since(began))
	}

	// What the processes inside saw: every generation. seen is the
	// fewest any of them saw.
	seen = n
	for _, f := range []string{"mmap.out", "pagewait.out", "watch0.out", "watch1.out", "watch2.out"} {
		gens := map[string]bool{}
		for _, l := range lines(filepath.Join(c.out, f)) {
			gens[l] = true
		}
		got := 0
		for g := 1; g <= n; g++ {
			if gens[strconv.Itoa(g)] {
				got++
			}
		}
		if got != n {
			t.Errorf("%s saw %d of the %d generations", f, got, n)
		}
		seen = min(seen, got)
	}
	t.Logf("%d cycles in %v", n, time.Since(start).Round(time.Second))
}

// Restore cycles under exhaustion (issue 20, A.3's restore): one
// unprivileged peer holds every watcher and connection the daemon-wide
// limits leave outside the reserve, never acking, and takes whatever
// frees up; the container's watchers, let go at each checkpoint, are
// re-attached at each restore from the reserve, and the container's
// barrier clears whatever the peer does.
func TestRestoreCyclesUnderFlood(t *testing.T) {
	h := newHost(t, "cycles-flood")
	h.args = []string{"--max-conns", "400", "--max-watchers", "100", "--reserve", "10",
		"--max-conns-per-user", "1000", "--max-watchers-per-user", "1000"}
	h.start(0)
	c := newCycledContainer(t, h)

	held := startFlood(t, h)
	// 100 watchers, 10 kept in reserve, 3 the container's.
	servertest.WaitFor(t, "the flood to take all it may", func() bool { return held.Load() == 87 })
	for i := range 2 {
		restoreCycle(t, h, c, i)
		servertest.WaitFor(t, "the flood to take the checkpointed watchers' places", func() bool { return held.Load() >= 90 })
		if n := held.Load(); n != 90 {
			t.Fatalf("cycle %d: the flood holds %d watchers, want the 90 outside the reserve", i, n)
		}
	}
}

// newCycledContainer runs a container with cycleWatchers watchers, a
// reader of the mapped page, a thread asleep on it (pagewait) and a reader
// of /dev/vmclock0, at generation 0.
func newCycledContainer(t *testing.T, h *host) *container {
	t.Helper()
	c := newContainer(t, h)
	script := "GENID_TEST_HELPER=mmap-reader OUT=/out/mmap.out genid-test >/out/mmap.err 2>&1 & " +
		"vmclockread /dev/vmclock0 watch >/out/vmclock.out 2>/out/vmclock.err & " +
		"pagewait /dev/sysgenid >/out/pagewait.out 2>/out/pagewait.err & "
	for i := range cycleWatchers {
		script += fmt.Sprintf("genidctl watch >/out/watch%d.out 2>/out/watch%d.err & ", i, i)
	}
	script += "while :; do sleep 1; done"
	editSpec(t, filepath.Join(c.bundle, "config.json"), func(s map[string]any) {
		s["process"].(map[string]any)["args"] = []string{"sh", "-c", script}
	})
	runcDetached(t, c.bundle, c.env, "run", "-d", c.id)
	t.Cleanup(func() { runBounded(exec.Command("runc", "delete", "-f", c.id), commandTimeout) })
	checkCgroup(t, c.id)
	servertest.WaitFor(t, "the container's watchers", func() bool { return c.scopeStatus().Watchers == cycleWatchers })
	waitLine(t, filepath.Join(c.out, "mmap.out"), "0")
	waitLine(t, filepath.Join(c.out, "pagewait.out"), "0")
	return c
}

// restoreCycle checkpoints c and restores it from that checkpoint, its
// cycle number i, and tells whether all held (cycleHeld).
func restoreCycle(t *testing.T, h *host, c *container, i int) bool {
	t.Helper()
	work, err := os.MkdirTemp("/tmp", "cycle-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work) // 100 cycles' images would fill the bed's /tmp
	images := filepath.Join(work, "ckpt")
	runcLogged(t, c.bundle, c.env, filepath.Join(work, "dump"), "checkpoint", "--image-path", images)(c.id)
	runcLogged(t, c.bundle, c.env, filepath.Join(work, "restore"), "restore", "-d", "--image-path", images)(c.id)
	return cycleHeld(t, h, c, i, uint32(i+1))
}

// cycleHeld checks the container after its restore number i: its scope is
// at want, by a restore; every watcher was re-attached by the restore, saw
// want and acked it; both readers of the pages saw it.
func cycleHeld(t *testing.T, h *host, c *container, i int, want uint32) bool {
	t.Helper()
	st := c.scopeStatus()
	if st.Generation != want || st.LastBump == nil || st.LastBump.Reason != "criu-restore" {
		t.Errorf("cycle %d: scope %+v, want generation %d by criu-restore", i, st, want)
		return false
	}
	w := strconv.Itoa(int(want))
	for j := range cycleWatchers {
		waitLine(t, filepath.Join(c.out, fmt.Sprintf("watch%d.out", j)), w)
	}
	waitLine(t, filepath.Join(c.out, "mmap.out"), w)
	waitLine(t, filepath.Join(c.out, "pagewait.out"), w)
	waitLine(t, filepath.Join(c.out, "vmclock.out"), "counter "+w)
	if _, err := h.ctl("wait-watchers", "--scope", c.id, "--timeout", "15s"); err != nil {
		t.Errorf("cycle %d: the scope's barrier: %v", i, err)
		return false
	}
	st = c.scopeStatus()
	if st.Watchers != cycleWatchers || st.Outdated != 0 {
		t.Errorf("cycle %d: %d watchers, %d outdated; want %d re-attached and acked", i, st.Watchers, st.Outdated, cycleWatchers)
		return false
	}
	for _, wl := range st.WatcherList {
		if wl.Acked != want {
			t.Errorf("cycle %d: watcher %+v, want acked %d", i, wl, want)
			return false
		}
	}
	// Re-attached by the restore, each on its own connection, not
	// connected anew.
	restored := 0
	for _, l := range strings.Split(h.log.String(), "\n") {
		if strings.Contains(l, `msg="connection restored" scope=`+c.id+" ") {
			restored++
		}
	}
	if restored != cycleWatchers*(i+1) {
		t.Errorf("cycle %d: %d connections restored in all, want %d a cycle", i, restored, cycleWatchers)
		return false
	}
	return true
}
