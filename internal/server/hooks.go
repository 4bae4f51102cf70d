package server

import (
	"slices"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/hooks"
)

// maxPendingHooks bounds the bumps whose hooks wait to run: past it, a
// bump's hooks are skipped (and its entry says so). A VM restore queues one
// run per scope, so it is above the most scopes by default.
const maxPendingHooks = 2 * DefaultMaxScopes

// hookJob is one bump's run of the hooks.
type hookJob struct {
	seq  uint64
	bump hooks.Bump
}

// atFDCWD is AT_FDCWD as a system call's argument.
var atFDCWD = uintptr(^uint(0) - 99) // -100

// hooksPresent tells whether the hooks directory is there, with a raw
// system call (sys.go): without it, a bump wakes no worker at all.
func (s *Server) hooksPresent() bool {
	if s.cfg.HooksDir == "" {
		return false
	}
	p, err := unix.BytePtrFromString(s.cfg.HooksDir)
	if err != nil {
		return false
	}
	var st unix.Stat_t
	_, _, errno := unix.RawSyscall6(unix.SYS_NEWFSTATAT, atFDCWD, uintptr(unsafe.Pointer(p)), uintptr(unsafe.Pointer(&st)), 0, 0, 0)
	return errno == 0
}

// runHooks hands a bump's hooks to the worker, which runs them off the
// loop: the bump neither waits for them nor fails with them.
func (s *Server) runHooks(st *scopeState, e *genid.HistoryEntry) {
	if e.Hooks != genid.HooksPending {
		return // no hooks directory
	}
	if s.obs.hooks == nil {
		s.obs.hooks = make(chan hookJob, maxPendingHooks)
		s.bg.Go(s.hookWorker)
	}
	job := hookJob{seq: e.Seq, bump: hooks.Bump{Scope: st.name, Previous: e.Previous, Generation: e.Generation,
		Reason: e.Reason, RunDir: s.cfg.RunDir, Seq: e.Seq}}
	select {
	case s.obs.hooks <- job:
	default:
		e.Hooks = genid.HooksSkipped
		s.persist(e)
		s.obs.metrics.hookRan("", "skipped")
		s.log.Warn("hooks skipped: too many bumps wait for theirs", "scope", st.label(), "seq", e.Seq, "pending", maxPendingHooks)
	}
}

// hookWorker runs the queued bumps' hooks, one bump after the other, until
// the daemon stops (a hook running then is killed).
func (s *Server) hookWorker() {
	owners := []uint32{0, s.euid}
	for {
		select {
		case job := <-s.obs.hooks:
			results := s.runHookDir(job, owners)
			s.loop.post(func() { s.hooksDone(job, results) })
		case <-s.bgCtx.Done():
			return
		}
	}
}

// runHookDir runs the hooks of the directory for one bump, in lexical
// order, each bounded by the hook timeout. Runs on the worker.
func (s *Server) runHookDir(job hookJob, owners []uint32) []genid.HookResult {
	list, refused, err := hooks.List(s.cfg.HooksDir, owners)
	if err != nil {
		s.log.Error("hooks not run", "dir", s.cfg.HooksDir, "seq", job.seq, "err", err)
		return []genid.HookResult{{Name: s.cfg.HooksDir, Exit: -1, Error: err.Error()}}
	}
	results := refused
	for _, h := range list {
		res, out := hooks.Run(s.bgCtx, h, job.bump, s.cfg.HookTimeout)
		results = append(results, res)
		attrs := []any{"hook", h.Name, "scope", scopeLabel(job.bump.Scope), "seq", job.seq, "generation", job.bump.Generation,
			"exit", res.Exit, "took", time.Duration(res.DurationNS)}
		if res.Error != "" {
			attrs = append(attrs, "err", res.Error)
		}
		if res.OK() {
			s.log.Info("hook ran", attrs...)
			if len(out) > 0 {
				s.log.Debug("hook output", "hook", h.Name, "seq", job.seq, "output", string(out))
			}
			continue
		}
		s.log.Warn("hook failed", append(attrs, "output", string(out))...)
	}
	// Refused hooks first in the list: back in the directory's order.
	slices.SortStableFunc(results, func(a, b genid.HookResult) int { return strings.Compare(a.Name, b.Name) })
	return results
}

// hooksDone records a bump's hook results in its entry. Runs on the loop.
func (s *Server) hooksDone(job hookJob, results []genid.HookResult) {
	for _, r := range results {
		s.obs.metrics.hookRan(r.Name, hookOutcome(r))
	}
	e := s.obs.ring.Get(job.seq)
	if e == nil {
		return
	}
	e.Hooks, e.HookResults = genid.HooksDone, results
	s.persist(e)
}

// hookOutcome is a hook result's label in the metrics.
func hookOutcome(r genid.HookResult) string {
	switch {
	case r.OK():
		return "ok"
	case r.TimedOut:
		return "timeout"
	case r.Exit < 0 && r.DurationNS == 0:
		return "not_run" // refused, or it could not start
	}
	return "failed"
}

// scopeLabel names a scope in logs, as scopeState.label does.
func scopeLabel(name string) string {
	if name == "" {
		return "host"
	}
	return name
}
