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
}

// bump bumps one scope on behalf of who (an administrator, a restore, a
// backend: the daemon itself).
func (s *Server) bump(st *scopeState, min uint32, reason string, who peer) (uint32, error) {
	ch, err := st.core.Bump(min, reason, s.clock())
	if err != nil {
		s.log.Error("bump refused", "scope", st.name, "min", min, "reason", reason, "err", err)
		return 0, err
	}
	s.apply(st, ch)
	s.log.Info("bumped", "scope", st.label(), "generation", ch.Gen, "min", min, "reason", reason, "pid", who.pid, "uid", who.uid)
	return ch.Gen, nil
}

// bumpAll bumps every scope by at least one: what a VM restore does, since
// every process's memory was duplicated. A scope at its maximum is logged
// and left.
func (s *Server) bumpAll(reason string, who peer) {
	for _, st := range s.scopeOrder() {
		s.bump(st, 0, reason, who)
	}
}
