package server

import "fmt"

// Limits. Every connection and every watcher counts against the whole
// daemon, its scope (a container's scope, not the host's) and its user (by
// the uid it connected with; root is not limited per user). The last
// Reserve of the daemon-wide limits is kept for those who must not be
// locked out when a peer takes everything else: root's connections on the
// host's socket, and the watchers a restore re-attaches. The admin socket
// has a pool of its own.
type usage struct{ conns, watchers int }

// privileged tells whether c may use the reserve: root on the host scope's
// socket. (A container's root, in a user namespace or not, is a member of
// its scope, bounded by the scope's limits.)
func (s *Server) privileged(c *conn) bool {
	return c.peer.uid == 0 && c.scope == s.root
}

// admitConn counts a new connection, or refuses it.
func (s *Server) admitConn(c *conn) error {
	cfg := &s.cfg
	if c.admin {
		if s.adminConns >= cfg.MaxAdminConns {
			return fmt.Errorf("admin socket: %d connections: %w", cfg.MaxAdminConns, errLimit)
		}
		s.adminConns++
		return nil
	}
	max := cfg.MaxConns
	if !s.privileged(c) {
		max -= cfg.ReserveConns
	}
	if s.total.conns >= max {
		return fmt.Errorf("%d connections (the rest is reserved): %w", s.total.conns, errLimit)
	}
	u := s.users[c.peer.uid]
	if c.peer.uid != 0 && u != nil && u.conns >= cfg.MaxConnsPerUser {
		return fmt.Errorf("uid %d has %d connections: %w", c.peer.uid, u.conns, errLimit)
	}
	st := c.scope
	if st != s.root && st.use.conns >= cfg.MaxConnsPerScope {
		return fmt.Errorf("scope %s has %d connections: %w", st.name, st.use.conns, errLimit)
	}
	if st.removed {
		return fmt.Errorf("scope %s is being removed: %w", st.name, errNotFound)
	}
	if u == nil {
		u = &usage{}
		s.users[c.peer.uid] = u
	}
	u.conns++
	st.use.conns++
	s.total.conns++
	return nil
}

// releaseConn uncounts a connection (its watcher was uncounted already).
func (s *Server) releaseConn(c *conn) {
	if c.admin {
		s.adminConns--
		return
	}
	s.total.conns--
	c.scope.use.conns--
	if u := s.users[c.peer.uid]; u != nil {
		if u.conns--; u.conns == 0 && u.watchers == 0 {
			delete(s.users, c.peer.uid)
		}
	}
}

// admitWatcher counts a member becoming a watcher, or refuses it. A
// restored watcher of a scope being restored may use the reserve.
func (s *Server) admitWatcher(c *conn, restored bool) error {
	cfg := &s.cfg
	max := cfg.MaxWatchers
	if !s.privileged(c) && !(restored && c.scope.restoring()) {
		max -= cfg.ReserveWatchers
	}
	if s.total.watchers >= max {
		return fmt.Errorf("%d watchers (the rest is reserved): %w", s.total.watchers, errLimit)
	}
	u := s.users[c.peer.uid]
	if c.peer.uid != 0 && u.watchers >= cfg.MaxWatchersPerUser {
		return fmt.Errorf("uid %d has %d watchers: %w", c.peer.uid, u.watchers, errLimit)
	}
	st := c.scope
	if st != s.root && st.use.watchers >= cfg.MaxWatchersPerScope {
		return fmt.Errorf("scope %s has %d watchers: %w", st.name, st.use.watchers, errLimit)
	}
	u.watchers++
	st.use.watchers++
	s.total.watchers++
	return nil
}

// releaseWatcher uncounts a watcher.
func (s *Server) releaseWatcher(c *conn) {
	s.total.watchers--
	c.scope.use.watchers--
	if u := s.users[c.peer.uid]; u != nil {
		u.watchers--
	}
}
