package server

import (
	"github.com/genid-project/genid/internal/scope"
)

// apply carries out what a change of st's state machine left to do, in the
// order scope.Change gives: the page first, so that whoever is told can
// read the new generation; then the events; then the waits that ended.
func (s *Server) apply(st *scopeState, ch scope.Change[*conn]) {
	if ch.Bumped {
		s.store(st, ch.Gen)
	}
	for _, c := range ch.Notify {
		c.event(ch.Gen, 0)
	}
	for _, e := range ch.Ended {
		s.answerWait(e.Owner, e.Err)
	}
	s.barrierCheck(st)
}

// bump bumps one scope on behalf of whoever why names (an administrator, a
// restore, a backend: the daemon itself). The bump is recorded in the
// history and the log, and its hooks are queued: they run later, off the
// loop.
func (s *Server) bump(st *scopeState, min uint32, why cause) (uint32, error) {
	prev := st.core.Generation()
	ch, err := st.core.Bump(min, why.reason, s.clock())
	if err != nil {
		s.log.Error("bump refused", "scope", st.label(), "min", min, "reason", why.reason, "by", why.by, "pid", why.who.pid, "uid", why.who.uid, "err", err)
		return 0, err
	}
	e := s.recordBump(st, prev, ch, min, why)
	s.apply(st, ch)
	s.logBump(st, e)
	s.runHooks(st, e)
	return ch.Gen, nil
}

// bumpAll bumps every scope by at least one: what a VM restore does, since
// every process's memory was duplicated. A scope at its maximum is logged
// and left.
func (s *Server) bumpAll(why cause) {
	why.all = true
	for _, st := range s.scopeOrder() {
		s.bump(st, 0, why)
	}
}
