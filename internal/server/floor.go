package server

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/genid-project/genid/internal/floor"
	"github.com/genid-project/genid/internal/scope"
	"github.com/genid-project/genid/internal/wire"
)

// The state dir (package floor, docs/state.md): what the run dir must not
// take with it. Each scope's generation is stored in its floor before its
// page, and a scope resumes at the higher of the two; a container scope
// the run dir lost is served again while its process runs. The backends'
// marks are kept there too.

// openFloor opens the run dir's state in cfg.StateDir, if there is one,
// and tells whether this daemon is the boot's first to serve the run dir:
// pageExisted is whether the host scope's page was there before it.
func (s *Server) openFloor(pageExisted bool) error {
	s.floors = map[string]*floor.Scope{}
	s.fresh = !pageExisted
	if s.cfg.StateDir == "" {
		return nil
	}
	boot, err := floor.BootID(s.cfg.BootIDPath)
	if s.cfg.BootID != "" {
		boot, err = floor.ParseBootID(s.cfg.BootID)
	}
	if err != nil {
		return err
	}
	if s.floor, err = floor.Open(s.cfg.StateDir, s.cfg.RunDir, boot); err != nil {
		return err
	}
	s.fresh = s.fresh && s.floor.Fresh()
	s.marks = s.floor.Marks()
	s.log.Info("state", "dir", s.floor.Dir(), "new_boot", s.floor.Fresh(), "first_daemon_of_boot", s.fresh)
	return nil
}

// raiseToFloor opens scope st's floor and resumes the scope at the higher
// of its page and its floor; the floor is raised to the page in turn (a
// state dir lost, a run dir kept). No floor of st is open: a new scope
// that failed let its floor go (removeLeftover), and an old one that
// failed to open failed the daemon's start.
func (s *Server) raiseToFloor(st *scopeState) error {
	if s.floor == nil {
		return nil
	}
	var f *floor.Scope
	if st.name == "" {
		f = s.floor.Host()
	} else {
		var err error
		if f, err = s.floor.Scope(st.name); err != nil {
			return err
		}
	}
	s.floors[st.name] = f
	gen := st.page.Load()
	if fl := f.Load(); fl > gen {
		s.log.Warn("the page is below the scope's floor: resuming at the floor", "scope", st.label(), "page", gen, "floor", fl)
		gen = fl
		st.page.Store(gen)
		st.core = scope.New[*conn](gen)
	}
	f.Store(gen)
	return nil
}

// store makes gen scope st's generation: the floor first, then the page,
// so that no one can have read a generation the floor does not hold.
func (s *Server) store(st *scopeState, gen uint32) {
	s.floors[st.name].Store(gen)
	st.page.Store(gen)
}

// dropFloor forgets the floor of container scope name: the scope ended.
func (s *Server) dropFloor(name string) {
	if s.floor == nil || name == "" {
		return
	}
	if f := s.floors[name]; f != nil {
		f.Close()
		delete(s.floors, name)
	}
	s.floor.Remove(name)
}

// recordMeta keeps a container scope's meta in its floor's record, so
// that the scope can be served again should the run dir lose it.
func (s *Server) recordMeta(m scopeMeta) error {
	if s.floor == nil {
		return nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.floor.SetMeta(m.Name, b)
}

// resumeFromFloor serves again the container scopes that the state knows
// and the run dir lost (it was removed), at their floors, while their
// processes run; forgets those whose processes ended; and records the meta
// of the scopes the run dir kept, where the state lacks it.
func (s *Server) resumeFromFloor() error {
	if s.floor == nil {
		return nil
	}
	recs, err := s.floor.Records()
	if err != nil {
		return fmt.Errorf("state %s: %w", s.floor.Dir(), err)
	}
	for _, r := range recs {
		if st := s.scopes[r.Name]; st != nil {
			if r.Meta == nil {
				if err := s.recordMeta(st.meta); err != nil {
					return err
				}
			}
			continue
		}
		if wire.CheckName(r.Name) != nil {
			s.log.Warn("not a scope's floor: removed", "name", r.Name)
			s.floor.Remove(r.Name)
			continue
		}
		var meta scopeMeta
		if r.Meta == nil || json.Unmarshal(r.Meta, &meta) != nil || meta.Name != r.Name {
			s.log.Warn("scope's floor without its owner: served without an owner", "scope", r.Name)
			meta = scopeMeta{Name: r.Name, Created: time.Now()}
		}
		st, err := s.openScopeDir(r.Name, meta)
		if err == nil && meta.PID != 0 && !st.ownerWatched() {
			s.log.Info("scope's process ended while no daemon ran", "scope", r.Name, "pid", meta.PID)
			s.destroy(st) // its files, and its floor
			continue
		}
		if err == nil {
			if err = s.writeMeta(meta); err == nil {
				err = s.serveScope(st)
			}
			if err != nil {
				s.destroy(st)
			}
		}
		if err != nil {
			return fmt.Errorf("scope %s: %w", r.Name, err)
		}
		s.log.Warn("scope the run dir had lost: served again at its floor", "scope", r.Name,
			"generation", st.core.Generation(), "pid", meta.PID)
	}
	return nil
}

// Lookback returns what the backends need to look back at what happened
// while no daemon ran: their marks as the boot's last daemon left them, by
// backend name, and whether this daemon is the first of the boot to serve
// the run dir (no one can have read a generation before it).
func (s *Server) Lookback() (marks map[string]json.RawMessage, first bool) {
	return s.marks, s.fresh
}

// SaveMark keeps backend name's mark for the next daemon of the boot. The
// backends' goroutine that handles their events calls it after their bump;
// once the daemon is stopping, the mark is kept until the bumps still
// posted have run (shutdown), so that no mark outruns its bump.
func (s *Server) SaveMark(name string, mark json.RawMessage) {
	if s.floor == nil || mark == nil {
		return
	}
	if s.bgCtx.Err() != nil {
		s.markMu.Lock()
		if s.pendingMarks == nil {
			s.pendingMarks = map[string]json.RawMessage{}
		}
		s.pendingMarks[name] = mark
		s.markMu.Unlock()
		return
	}
	if err := s.floor.SetMark(name, mark); err != nil {
		s.log.Warn("backend's mark not kept: the next daemon will look back further", "backend", name, "err", err)
	}
}

// saveFinalMarks writes the marks kept while stopping; shutdown calls it
// once the posted bumps have run.
func (s *Server) saveFinalMarks() {
	s.markMu.Lock()
	defer s.markMu.Unlock()
	for name, mark := range s.pendingMarks {
		if err := s.floor.SetMark(name, mark); err != nil {
			s.log.Warn("backend's mark not kept: the next daemon will look back further", "backend", name, "err", err)
		}
	}
	s.pendingMarks = nil
}

// closeFloors closes the floors and the state; their files keep their
// values.
func (s *Server) closeFloors() {
	for name, f := range s.floors {
		f.Close()
		delete(s.floors, name)
	}
	if s.floor != nil {
		if err := s.floor.Close(); err != nil {
			s.log.Warn("state close", "err", err)
		}
	}
}
