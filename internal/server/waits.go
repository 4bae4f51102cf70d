package server

import (
	"errors"
	"fmt"
	"time"

	"github.com/genid-project/genid/internal/scope"
	"github.com/genid-project/genid/internal/wire"
)

// A wait-watchers is answered when its scope says so (a Change ends it),
// when its timeout passes (a loop timer), or never if its connection goes
// first. No goroutine waits, and nothing is woken on every ack.

// startWait serves a wait-watchers on st for c: one at a time per
// connection. A copy of the pending one (its id) is the same request, sent
// again by a client after a restore (PROTOCOL.md, "restored"): the one
// reply answers both.
func (s *Server) startWait(c *conn, st *scopeState, h wire.Header, timeout time.Duration) {
	if c.wait != nil && c.wait.h.ID == h.ID && c.wait.scope == st {
		return
	}
	if c.wait != nil {
		c.replyErr(h, fmt.Errorf("wait-watchers: one at a time per connection: %w", errLimit))
		return
	}
	var self *scope.Watcher[*conn]
	if st == c.scope {
		self = c.watcher
	}
	c.wait = &pendingWait{scope: st, h: h, timeout: timeout}
	c.wait.timer = newTimer(timerWait, c, st)
	ch, err := st.core.Wait(c, self)
	if err != nil {
		c.wait = nil
		c.replyErr(h, fmt.Errorf("wait-watchers: %w", err))
		return
	}
	if len(ch.Ended) == 0 && timeout > 0 {
		s.loop.timers.set(&c.wait.timer, s.loop.now()+timeout)
	}
	s.apply(st, ch)
}

// answerWait answers c's pending wait with err (nil: no watcher outdated).
func (s *Server) answerWait(c *conn, err error) {
	w := c.wait
	if w == nil {
		return
	}
	c.wait = nil
	s.loop.timers.stop(&w.timer)
	if errors.Is(err, scope.ErrInterrupted) {
		err = fmt.Errorf("wait-watchers: %w", err)
	}
	if err != nil {
		c.replyErr(w.h, err)
		return
	}
	c.reply(w.h, nil)
}

// waitTimedOut answers c's wait, whose timeout passed.
func (s *Server) waitTimedOut(c *conn) {
	w := c.wait
	if w == nil || !w.scope.core.CancelWait(c) {
		return
	}
	s.answerWait(c, fmt.Errorf("wait-watchers: %d outdated after %v: %w", w.scope.core.Outdated(), w.timeout, errTimeout))
}

// dropWait forgets the wait of a connection that is closing, or whose scope
// is going.
func (s *Server) dropWait(c *conn) {
	if w := c.wait; w != nil {
		w.scope.core.CancelWait(c)
		s.loop.timers.stop(&w.timer)
		c.wait = nil
	}
}
