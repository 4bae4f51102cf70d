package server

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/history"
	"github.com/genid-project/genid/internal/scope"
	"github.com/genid-project/genid/internal/wire"
)

// What the daemon tells of its bumps: each is an entry of the history (the
// last history.DefaultSize, kept in RUN_DIR/state/history.jsonl across
// restarts), a log line with the same fields, and the metrics
// (metrics.go); the hooks run for it (hooks.go) and their outcome joins the
// entry. The loop owns all of it.

// historyFile is the history's file, in the state directory.
const historyFile = "history.jsonl"

// Who asked for a bump (genid.HistoryEntry.By).
const (
	byAdmin   = "admin"
	byRestore = "restore"
	byDaemon  = "daemon"
)

// cause is why a scope is bumped.
type cause struct {
	reason  string
	by      string // byAdmin, byRestore, byDaemon
	who     peer
	all     bool // one of the bumps of every scope
	restore *genid.RestoreInfo
}

// daemonCause is a bump the daemon's own caller asks for: a backend.
func (s *Server) daemonCause(reason string, all bool) cause {
	return cause{reason: reason, by: byDaemon, who: peer{pid: os.Getpid(), uid: s.euid}, all: all}
}

// observer is the history, its file, the metrics and the hooks' queue.
type observer struct {
	ring    *history.Ring
	file    *historyStore // nil if the history is kept in memory only
	metrics *metrics
	hooks   chan hookJob // to the hooks' worker; nil until it runs
}

// scopeObs is a scope's open barrier: the bump whose outdated watchers
// have not all acked yet.
type scopeObs struct {
	open  bool
	seq   uint64
	start time.Time // monotonic
}

// observeInit reads the history a previous daemon left and keeps its
// file. Neither can fail the daemon: without them, the history starts
// empty or is kept in memory only, and the log says why.
func (s *Server) observeInit() {
	s.obs = observer{ring: history.New(history.DefaultSize), metrics: newMetrics(s)}
	fd, err := unix.Openat(s.statefd, historyFile, unix.O_RDWR|unix.O_CREAT|unix.O_APPEND|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		s.log.Warn("history kept in memory only", "file", historyFile, "err", err)
		return
	}
	f := os.NewFile(uintptr(fd), historyFile)
	ring, lines, bad, err := history.Read(f, history.DefaultSize)
	if err != nil {
		s.log.Warn("history file unreadable: kept in memory only", "err", err)
		f.Close()
		return
	}
	if bad > 0 {
		s.log.Warn("history: lines skipped", "lines", bad)
	}
	s.obs.ring = ring
	s.obs.file = newHistoryStore(s.statefd, f, lines)
	// What the previous daemon left open, it cannot finish now.
	for _, e := range ring.List(func(e *genid.HistoryEntry) bool {
		return e.Barrier == genid.BarrierPending || e.Hooks == genid.HooksPending
	}, 0) {
		p := ring.Get(e.Seq)
		if p.Barrier == genid.BarrierPending {
			p.Barrier = genid.BarrierLost
		}
		if p.Hooks == genid.HooksPending {
			p.Hooks = genid.HooksLost
		}
		s.persist(p)
	}
	if ring.Len() > 0 {
		s.log.Info("history resumed", "entries", ring.Len(), "last", ring.Last())
	}
}

// observeClose writes what the history file still lacks and closes it.
func (s *Server) observeClose() {
	if f := s.obs.file; f != nil {
		s.writeHistory(s.loop.now())
		f.file.Close()
		s.obs.file = nil
	}
}

// recordBump makes the history entry of a bump that succeeded, before its
// change is applied: it closes the barrier of the scope's previous bump
// (superseded) and opens this one's. It returns the entry.
func (s *Server) recordBump(st *scopeState, prev uint32, ch scope.Change[*conn], min uint32, why cause) *genid.HistoryEntry {
	if st.obs.open {
		s.endBarrier(st, genid.BarrierSuperseded)
	}
	outdated := st.core.Outdated()
	e := genid.HistoryEntry{
		Time: s.clock(), Scope: st.name, Previous: prev, Generation: ch.Gen,
		Reason: why.reason, By: why.by, PID: why.who.pid, UID: why.who.uid,
		Min: min, AllScopes: why.all, Restore: why.restore,
		Outdated: outdated, Barrier: genid.BarrierCleared,
	}
	if outdated > 0 {
		e.Barrier = genid.BarrierPending
	}
	if s.hooksPresent() {
		e.Hooks = genid.HooksPending
	}
	seq := s.obs.ring.Add(e)
	if outdated > 0 {
		st.obs = scopeObs{open: true, seq: seq, start: time.Now()}
	}
	s.obs.metrics.bumped(st, why)
	ent := s.obs.ring.Get(seq)
	s.persist(ent)
	return ent
}

// logBump logs a bump with its entry's fields.
func (s *Server) logBump(st *scopeState, e *genid.HistoryEntry) {
	attrs := []any{"scope", st.label(), "seq", e.Seq, "previous", e.Previous, "generation", e.Generation,
		"reason", e.Reason, "by", e.By, "pid", e.PID, "uid", e.UID, "outdated", e.Outdated}
	if e.Min != 0 {
		attrs = append(attrs, "min", e.Min)
	}
	if e.AllScopes {
		attrs = append(attrs, "all_scopes", true)
	}
	if r := e.Restore; r != nil {
		attrs = append(attrs, "recorded_scope", r.RecordedScope, "tasks_pid", r.TasksPID)
		if r.ImagesDir != "" {
			attrs = append(attrs, "images_dir", r.ImagesDir)
		}
		if r.RecordedGeneration != nil {
			attrs = append(attrs, "recorded_generation", *r.RecordedGeneration)
		}
	}
	s.log.Info("bumped", attrs...)
}

// barrierCheck ends st's open barrier once no watcher is outdated: apply
// calls it after every change. Watchers that go because their scope or the
// daemon does clear nothing.
func (s *Server) barrierCheck(st *scopeState) {
	if st.obs.open && st.core.Outdated() == 0 && !st.removed && !s.loop.stopping.Load() {
		s.endBarrier(st, genid.BarrierCleared)
	}
}

// endBarrier closes st's open barrier: cleared, superseded or removed.
func (s *Server) endBarrier(st *scopeState, how string) {
	o := st.obs
	st.obs = scopeObs{}
	took := time.Since(o.start)
	if how == genid.BarrierCleared {
		s.obs.metrics.barrier(st, took)
		s.log.Info("barrier cleared", "scope", st.label(), "seq", o.seq, "generation", st.core.Generation(), "took", took)
	} else {
		s.log.Debug("barrier not cleared", "scope", st.label(), "seq", o.seq, "how", how, "after", took)
	}
	e := s.obs.ring.Get(o.seq)
	if e == nil {
		return
	}
	e.Barrier = how
	if how == genid.BarrierCleared {
		e.BarrierNS = int64(took)
	}
	s.persist(e)
}

// scopeGone forgets what is observed of a scope that was removed; its
// entries stay in the history.
func (s *Server) scopeGone(st *scopeState) {
	if st.obs.open {
		s.endBarrier(st, genid.BarrierRemoved)
	}
	s.obs.metrics.forget(st)
}

// persist has e's latest state written to the history's file, once the
// loop has served the events at hand (historyStore).
func (s *Server) persist(e *genid.HistoryEntry) {
	f := s.obs.file
	if f == nil {
		return
	}
	at := f.mark(e.Seq, s.loop.now())
	if f.timer.idx < 0 {
		s.loop.timers.set(&f.timer, at)
	}
}

// writeHistory writes the history's changes to its file: the timer's work.
// A file that cannot be written is told in the log once; the history is
// then kept in memory.
func (s *Server) writeHistory(now time.Duration) {
	f := s.obs.file
	if err := f.write(s.obs.ring, now); err != nil && !f.failed {
		f.failed = true
		s.log.Warn("history file not written: kept in memory", "err", err)
	}
}

// historyList is OpHistory: name's entries (every scope's with
// FlagEveryScope), the latest max, oldest first.
func (s *Server) historyList(name string, req wire.History) ([]genid.HistoryEntry, error) {
	if req.Flags&wire.FlagEveryScope != 0 {
		if name != "" {
			return nil, fmt.Errorf("history: every scope, or scope %q: %w", name, errBadRequest)
		}
		return s.obs.ring.List(nil, int(req.Max)), nil
	}
	// A removed scope's bumps are still told: no check that it exists.
	return s.obs.ring.List(func(e *genid.HistoryEntry) bool { return e.Scope == name }, int(req.Max)), nil
}
