package server

// Counts is what the daemon counts against its limits: the external
// tests' view of it.
type Counts struct {
	Users      int // users with a connection or a watcher
	Conns      int // on the scopes' sockets
	Watchers   int
	AdminConns int
}

// Counts returns what the daemon counts now.
func (s *Server) Counts() (c Counts, err error) {
	err = s.do(func() {
		c = Counts{Users: len(s.users), Conns: s.total.conns, Watchers: s.total.watchers, AdminConns: s.adminConns}
	})
	return c, err
}

// OwnerWatched tells whether the daemon watches scope name's process.
func (s *Server) OwnerWatched(name string) (watched bool, err error) {
	err = s.do(func() {
		if st := s.scopes[name]; st != nil {
			watched = st.pidfd >= 0
		}
	})
	return watched, err
}
