package server

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/genid-project/genid/internal/wire"
)

// handle answers one request. Errors become error replies; only the
// connection's own failures end it.
func (s *Server) handle(c *conn, f wire.Frame, priv bool) {
	if c.admin {
		s.handleAdmin(c, f, priv)
		return
	}
	s.handleMember(c, f)
}

// handleMember answers a request on a scope's own socket: what a watcher of
// that scope needs, and nothing of any other scope.
func (s *Server) handleMember(c *conn, f wire.Frame) {
	st := c.scope
	switch f.Op {
	case wire.OpGet:
		if noPayload(c, f) {
			c.reply(f.Header, wire.U32(st.core.Generation()))
		}

	case wire.OpWatch:
		if !noPayload(c, f) {
			return
		}
		if c.watcher != nil {
			c.reply(f.Header, wire.U32(c.watcher.Acked()))
			return
		}
		s.register(c, f.Header, nil, 0)

	case wire.OpAttach:
		a, err := wire.ParsePair(f.Payload)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("attach: %v: %w", err, errBadRequest))
			return
		}
		flags, acked := a.A, a.B
		switch {
		case flags&^(wire.FlagWatcher|wire.FlagRestored) != 0:
			c.replyErr(f.Header, fmt.Errorf("attach: unknown flags %#x: %w", flags, errBadRequest))
		case c.watcher != nil:
			c.replyErr(f.Header, fmt.Errorf("attach: the connection is a watcher already: %w", errBadRequest))
		case flags&wire.FlagRestored != 0 && !st.restoring():
			c.replyErr(f.Header, fmt.Errorf("attach: no restore of this scope is under way (only a restore may attach restored connections): %w", errPermission))
		case flags&wire.FlagWatcher != 0:
			s.register(c, f.Header, &acked, flags&wire.FlagRestored)
		default:
			c.reply(f.Header, wire.U32(st.core.Generation()))
			if flags&wire.FlagRestored != 0 {
				c.event(st.core.Generation(), wire.FlagRestored)
			}
		}

	case wire.OpAck:
		a, err := wire.ParseAck(f.Payload)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("ack: %v: %w", err, errBadRequest))
			return
		}
		if c.watcher == nil {
			c.replyErr(f.Header, fmt.Errorf("ack: register with watch first: %w", errNotWatcher))
			return
		}
		ch, err := st.core.Ack(c.watcher, a.Gen)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("ack: %w", err))
			return
		}
		if a.Flags&wire.FlagQuiet == 0 {
			c.reply(f.Header, nil)
		}
		s.apply(st, ch)

	case wire.OpOutdated:
		if noPayload(c, f) {
			c.reply(f.Header, wire.U32(uint32(st.core.Outdated())))
		}

	case wire.OpWaitWatchers:
		ms, err := wire.ParseU32(f.Payload)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("wait-watchers: %v: %w", err, errBadRequest))
			return
		}
		s.startWait(c, st, f.Header, time.Duration(ms)*time.Millisecond)

	case wire.OpStatus:
		if noPayload(c, f) {
			s.replyJSON(c, f.Header, s.status(st, false))
		}

	case wire.OpBump, wire.OpQueryPeer:
		c.replyErr(f.Header, fmt.Errorf("%s: only on the admin socket %s: %w", f.Op, s.AdminSocketPath(), errPermission))

	case wire.OpScopeCreate, wire.OpScopeRemove, wire.OpScopes, wire.OpRestore, wire.OpHistory, wire.OpMetrics:
		c.replyStatus(f.Header, wire.StatusUnknownOp, fmt.Sprintf("%s: only on the admin socket %s", f.Op, s.AdminSocketPath()))

	default:
		c.replyStatus(f.Header, wire.StatusUnknownOp, fmt.Sprintf("unknown op %d", f.Op))
	}
}

// handleAdmin answers a request on the admin socket. Each names its scope
// first; each needs an administrator (priv: every byte of the request came
// from one), except the restore steps of a restore this connection began.
func (s *Server) handleAdmin(c *conn, f wire.Frame, priv bool) {
	name, p, err := wire.ParseName(f.Payload)
	if err != nil {
		c.replyErr(f.Header, fmt.Errorf("%s: %v: %w", f.Op, err, errBadRequest))
		return
	}
	if !priv && !(f.Op == wire.OpRestore && c.restore != nil) {
		s.log.Warn("admin request refused", "op", f.Op.String(), "scope", name, "pid", c.peer.pid, "uid", c.peer.uid)
		c.replyErr(f.Header, fmt.Errorf("%s: the sender is not an administrator of this daemon (root%s): %w", f.Op, s.adminGroupText(), errPermission))
		return
	}
	switch f.Op {
	case wire.OpScopeCreate:
		req, err := wire.ParseScopeCreate(p)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("scope-create: %v: %w", err, errBadRequest))
			return
		}
		gen, err := s.createScope(name, req)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("scope-create %s: %w", name, err))
			return
		}
		c.reply(f.Header, wire.U32(gen))
		return
	case wire.OpScopes:
		if name != "" || len(p) != 0 {
			c.replyErr(f.Header, fmt.Errorf("scopes: takes no scope and no payload: %w", errBadRequest))
			return
		}
		s.replyJSON(c, f.Header, s.scopeList())
		return
	case wire.OpRestore:
		req, err := wire.ParseRestore(p)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("restore: %v: %w", err, errBadRequest))
			return
		}
		s.restore(c, f.Header, name, req, priv)
		return
	case wire.OpHistory:
		req, err := wire.ParseHistory(p)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("history: %v: %w", err, errBadRequest))
			return
		}
		list, err := s.historyList(name, req)
		if err != nil {
			c.replyErr(f.Header, err)
			return
		}
		s.replyJSON(c, f.Header, list)
		return
	case wire.OpMetrics:
		if name != "" || len(p) != 0 {
			c.replyErr(f.Header, fmt.Errorf("metrics: takes no scope and no payload: %w", errBadRequest))
			return
		}
		text, err := s.metricsText()
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("metrics: %v: %w", err, errInternal))
			return
		}
		c.reply(f.Header, text)
		return
	case wire.OpQueryPeer:
		ino, err := wire.ParseInode(p)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("query-peer: %v: %w", err, errBadRequest))
			return
		}
		s.queryPeer(c, f.Header, ino)
		return
	case wire.OpBump:
		b, err := wire.ParseBump(p)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("bump: %v: %w", err, errBadRequest))
			return
		}
		if b.Flags&wire.FlagAllScopes != 0 {
			if name != "" {
				c.replyErr(f.Header, fmt.Errorf("bump: every scope, or scope %q: %w", name, errBadRequest))
				return
			}
			s.bumpAll(cause{reason: reasonOr(b.Reason), by: byAdmin, who: c.peer})
			c.reply(f.Header, wire.U32(s.root.core.Generation()))
			return
		}
	}

	st := s.scopes[name]
	if st == nil {
		c.replyErr(f.Header, fmt.Errorf("%s: no scope %q: %w", f.Op, name, errNotFound))
		return
	}
	switch f.Op {
	case wire.OpGet:
		if len(p) != 0 {
			c.replyErr(f.Header, badPayload(f.Op, p))
			return
		}
		c.reply(f.Header, wire.U32(st.core.Generation()))
	case wire.OpOutdated:
		if len(p) != 0 {
			c.replyErr(f.Header, badPayload(f.Op, p))
			return
		}
		c.reply(f.Header, wire.U32(uint32(st.core.Outdated())))
	case wire.OpWaitWatchers:
		ms, err := wire.ParseU32(p)
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("wait-watchers: %v: %w", err, errBadRequest))
			return
		}
		s.startWait(c, st, f.Header, time.Duration(ms)*time.Millisecond)
	case wire.OpBump:
		b, _ := wire.ParseBump(p)
		gen, err := s.bump(st, b.Min, cause{reason: reasonOr(b.Reason), by: byAdmin, who: c.peer})
		if err != nil {
			c.replyErr(f.Header, fmt.Errorf("bump: %w", err))
			return
		}
		c.reply(f.Header, wire.U32(gen))
	case wire.OpStatus:
		if len(p) != 0 {
			c.replyErr(f.Header, badPayload(f.Op, p))
			return
		}
		s.replyJSON(c, f.Header, s.status(st, true))
	case wire.OpScopeRemove:
		if len(p) != 0 {
			c.replyErr(f.Header, badPayload(f.Op, p))
			return
		}
		if err := s.removeScope(st, "removed by an administrator"); err != nil {
			c.replyErr(f.Header, fmt.Errorf("scope-remove %s: %w", name, err))
			return
		}
		c.reply(f.Header, nil)
	case wire.OpWatch, wire.OpAck, wire.OpAttach:
		c.replyStatus(f.Header, wire.StatusUnknownOp, fmt.Sprintf("%s: not on the admin socket: watch a scope on its own socket", f.Op))
	default:
		c.replyStatus(f.Header, wire.StatusUnknownOp, fmt.Sprintf("unknown op %d", f.Op))
	}
}

// register makes a member connection a watcher of its scope, within the
// limits, and replies with the generation before any event: the first
// frame a client reads after watch or attach is that reply (the CRIU plugin
// relies on it).
func (s *Server) register(c *conn, h wire.Header, acked *uint32, restored uint32) {
	st := c.scope
	if err := s.admitWatcher(c, restored != 0); err != nil {
		c.replyErr(h, fmt.Errorf("%s: %w", h.Op, err))
		return
	}
	w, ch := st.core.Watch(c, c.peer.pid, acked)
	c.watcher = w
	c.reply(h, wire.U32(ch.Gen))
	if restored != 0 {
		s.log.Info("connection restored", "scope", st.name, "pid", c.peer.pid, "acked", w.Acked(), "generation", ch.Gen)
		if len(ch.Notify) == 0 {
			// Up to date, but it must resend what it had in flight.
			c.event(ch.Gen, restored)
		} else {
			c.dueFlags |= restored
		}
	}
	s.apply(st, ch)
}

func noPayload(c *conn, f wire.Frame) bool {
	if len(f.Payload) != 0 {
		c.replyErr(f.Header, badPayload(f.Op, f.Payload))
		return false
	}
	return true
}

func badPayload(op wire.Op, p []byte) error {
	return fmt.Errorf("%s: unexpected payload of %d bytes: %w", op, len(p), errBadRequest)
}

func reasonOr(r string) string {
	if r == "" {
		return "manual"
	}
	return r
}

// replyJSON sends v as a JSON reply.
func (s *Server) replyJSON(c *conn, h wire.Header, v any) {
	js, err := json.Marshal(v)
	if err != nil {
		c.replyErr(h, fmt.Errorf("%s: %v: %w", h.Op, err, errInternal))
		return
	}
	c.reply(h, js)
}
