package server

import (
	"fmt"
	"strconv"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/scope"
	"github.com/genid-project/genid/internal/wire"
)

// restoreWindow bounds how long a restore may keep a scope open to restored
// attachments, should its connection not close.
const restoreWindow = 10 * time.Minute

// restoreSession is what a restore (the CRIU plugin, on an admin
// connection) is doing: the scopes it restores. While it lasts, restored
// watchers may attach to them (attach with FlagRestored), using the
// reserve. It ends with its connection.
type restoreSession struct {
	scopes []*scopeState
}

func (r *restoreSession) drop(st *scopeState) {
	for i, x := range r.scopes {
		if x == st {
			r.scopes = append(r.scopes[:i], r.scopes[i+1:]...)
			return
		}
	}
}

// restore serves OpRestore: give the restored tasks their scope, past the
// generation the checkpoint recorded, before any of them runs.
//
// With a pid (the restored tasks' root), the scope is the one that process
// already belongs to (an OCI hook of the restoring runtime made it), else a
// new one bound to it, named after the recorded scope (hint) if that name
// is free. So a restore can only ever move its own tasks' scope: a crafted
// record names no other. Without a pid it restores host processes: the
// host scope (hint must then be empty).
//
// The first restore of a connection needs an administrator; it opens a
// session on the connection, and the connection's later restore requests
// need none: the restored tasks' root may be in a user namespace by then,
// sending with its mapped uid.
func (s *Server) restore(c *conn, h wire.Header, hint string, req wire.Restore, priv bool) {
	if req.Flags&wire.FlagBegin != 0 {
		if hint != "" || req.PID != 0 || req.Flags != wire.FlagBegin || req.ImagesDir != "" {
			c.replyErr(h, fmt.Errorf("restore: begin names no scope, pid or generation: %w", errBadRequest))
			return
		}
		if c.restore == nil {
			c.restore = &restoreSession{}
		}
		c.reply(h, wire.AppendName(wire.U32(0), ""))
		return
	}
	var st *scopeState
	switch {
	case req.PID == 0 && hint != "":
		c.replyErr(h, fmt.Errorf("restore: scope %q needs the restored tasks' pid: %w", hint, errBadRequest))
		return
	case req.PID == 0:
		st = s.root
	default:
		st = s.scopeOf(int(req.PID), hint)
		if old := s.scopes[hint]; st == nil && old != nil && old.meta.PID != 0 && !ownerAlive(old) && !old.restoring() {
			// The checkpointed container's own scope, its process gone:
			// the restored one takes its name.
			s.removeScope(old, fmt.Sprintf("its process %d ended", old.meta.PID))
		}
		if st == nil {
			var err error
			st, err = s.newScope(s.freeName(hint), int(req.PID), true)
			if err != nil {
				c.replyErr(h, fmt.Errorf("restore: %w", err))
				return
			}
			s.log.Info("scope created for restored tasks", "scope", st.name, "pid", req.PID, "recorded_scope", hint)
		}
	}
	min := uint32(0)
	info := &genid.RestoreInfo{RecordedScope: hint, TasksPID: int(req.PID), ImagesDir: req.ImagesDir}
	if req.Flags&wire.FlagAvoid != 0 {
		if req.Avoid == ^uint32(0) {
			c.replyErr(h, fmt.Errorf("restore: the recorded generation is the maximum: nothing is past it: %w", scope.ErrOverflow))
			return
		}
		min = req.Avoid + 1
		info.RecordedGeneration = &req.Avoid
	}
	gen, err := s.bump(st, min, cause{reason: "criu-restore", by: byRestore, who: c.peer, restore: info})
	if err != nil {
		c.replyErr(h, fmt.Errorf("restore: %w", err))
		return
	}
	if c.restore == nil {
		c.restore = &restoreSession{}
	}
	if st.restorer != c {
		if st.restorer != nil {
			st.restorer.restore.drop(st)
		}
		st.restorer = c
		c.restore.scopes = append(c.restore.scopes, st)
	}
	s.loop.timers.set(&st.restoreTimer, s.loop.now()+restoreWindow)
	c.reply(h, wire.AppendName(wire.U32(gen), st.name))
}

// scopeOf returns the scope that process pid belongs to, if any. The
// scope named hint (the one recorded at checkpoint) is looked at first: a
// container restored under its old name has it again, and the others are
// many on a busy host.
func (s *Server) scopeOf(pid int, hint string) *scopeState {
	if st := s.scopes[hint]; st != nil && st.meta.PID == pid && ownerAlive(st) {
		return st
	}
	for _, st := range s.scopes {
		if st.meta.PID == pid && ownerAlive(st) {
			return st
		}
	}
	return nil
}

// freeName returns hint if no scope has it, else hint with the first free
// number appended ("name-2", ...). A restore without a recorded scope
// name is called "restored".
func (s *Server) freeName(hint string) string {
	if hint == "" {
		hint = "restored"
	}
	if s.scopes[hint] == nil {
		return hint
	}
	for i := 2; ; i++ {
		suffix := "-" + strconv.Itoa(i)
		name := hint
		if len(name)+len(suffix) > wire.MaxName {
			name = name[:wire.MaxName-len(suffix)]
		}
		if s.scopes[name+suffix] == nil {
			return name + suffix
		}
	}
}

// endRestore ends the restore session of a connection that closed.
func (s *Server) endRestore(c *conn) {
	for _, st := range c.restore.scopes {
		st.restorer = nil
		s.loop.timers.stop(&st.restoreTimer)
		if !st.ownerWatched() && st.meta.PID != 0 {
			// Its old owner ended during the restore.
			s.removeScope(st, "its process ended")
		}
	}
	c.restore = nil
}

// restoreExpired ends a restore that outlived restoreWindow.
func (s *Server) restoreExpired(st *scopeState) {
	if r := st.restorer; r != nil {
		s.log.Warn("restore did not finish in time: no more restored attachments", "scope", st.label(), "window", restoreWindow)
		r.restore.drop(st)
		st.restorer = nil
	}
}
