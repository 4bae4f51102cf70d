package server

import (
	"cmp"
	"slices"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/version"
)

// status is a scope's state for OpStatus. Members see their scope's
// counts and last bump; an administrator also sees each watcher's process,
// and the host scope's status names the active backends.
func (s *Server) status(st *scopeState, admin bool) genid.Status {
	out := genid.Status{
		Scope:      st.name,
		Generation: st.core.Generation(),
		Watchers:   st.core.Len(),
		Outdated:   st.core.Outdated(),
	}
	if last := st.core.LastBump(); !last.Time.IsZero() {
		out.LastBump = &genid.BumpRecord{Generation: last.Generation, Reason: last.Reason, Time: last.Time}
	}
	if st == s.root {
		out.Backends = slices.Clone(s.backends)
		if out.Backends == nil {
			out.Backends = []string{}
		}
		out.Version = version.String()
	}
	if admin {
		out.WatcherList = make([]genid.WatcherInfo, 0, out.Watchers)
		for _, w := range st.core.Watchers() {
			c := w.Owner()
			out.WatcherList = append(out.WatcherList, genid.WatcherInfo{
				PID: w.PID(), UID: c.peer.uid, Acked: w.Acked(), Outdated: w.Acked() != out.Generation,
			})
		}
		slices.SortFunc(out.WatcherList, func(a, b genid.WatcherInfo) int { return cmp.Compare(a.PID, b.PID) })
	}
	return out
}

// scopeList is OpScopes: every scope's counts, the host's first.
func (s *Server) scopeList() []genid.ScopeInfo {
	var out []genid.ScopeInfo
	for _, st := range s.scopeOrder() {
		info := genid.ScopeInfo{Status: s.status(st, false), PID: st.meta.PID, Restored: st.meta.Restored}
		if st != s.root {
			info.Dir = st.dir
			info.Created = st.meta.Created
		}
		info.Backends, info.Version = nil, ""
		out = append(out, info)
	}
	return out
}
