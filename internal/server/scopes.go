package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/scope"
	"github.com/genid-project/genid/internal/slots"
	"github.com/genid-project/genid/internal/wire"
)

// The run directory (see docs/scopes.md):
//
//	RUN_DIR/generation, vmclock,       the host scope: pages (pages.go)
//	        genid.sock                 and socket
//	RUN_DIR/admin.sock                 the administrators' socket
//	RUN_DIR/scopes/         (0700)     reachable by root only...
//	RUN_DIR/scopes/NAME/    (0755)     ...and a container sees only this,
//	    generation, vmclock,           bind-mounted at /run/genid
//	    genid.sock
//	RUN_DIR/state/owners    (0700 dir) who each scope belongs to: a
//	                        slot each (package slots), its meta as JSON
//
// Earlier versions kept a scope's meta in RUN_DIR/state/NAME.json, a file
// (a page of the run dir's tmpfs) each: readMeta moves one it finds into
// the owners.
const (
	scopesDir  = "scopes"
	stateDir   = "state"
	ownersFile = "owners"
)

// scopeState is one scope as the daemon serves it: the state machine, its
// page, its socket, and the process it belongs to.
type scopeState struct {
	name  string // "" for the host scope
	dir   string
	dirfd int
	core  *scope.Scope[*conn]
	page  *pages
	sock  string
	lfd   int
	kept  bool // the socket's file is its maker's (socket activation): left when the daemon stops
	use   usage

	meta    scopeMeta
	pidfd   int // of meta.PID, noFD if none
	removed bool

	restorer     *conn // the admin connection restoring it, if any
	restoreTimer timer

	obs scopeObs // its last bump's barrier (history.go)
}

// scopeMeta is what the daemon keeps of a scope besides its page, across
// its own restarts.
type scopeMeta struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// PID, if not 0, is the process the scope belongs to (a container's
	// init): the scope goes when it ends. PIDStart (its start time, from
	// /proc/PID/stat) tells it from a later process with the same pid.
	PID      int    `json:"pid,omitempty"`
	PIDStart uint64 `json:"pid_start,omitempty"`
	// Restored is set on a scope a restore created.
	Restored bool `json:"restored,omitempty"`
}

// label names a scope in logs.
func (st *scopeState) label() string {
	if st.name == "" {
		return "host"
	}
	return st.name
}

func (st *scopeState) restoring() bool { return st.restorer != nil }

// ownerWatched tells whether the daemon holds a pidfd of the scope's
// process: it has one, and it has not seen it end.
func (st *scopeState) ownerWatched() bool { return st.pidfd != noFD }

// openPage opens (creating it if missing) the page of a scope whose
// directory is open as dirfd, resuming from its value. Its lock proves that
// no other daemon serves the scope.
func (s *Server) openPage(name, dir string, dirfd int) (*scopeState, error) {
	st := &scopeState{name: name, dir: dir, dirfd: dirfd, lfd: noFD, pidfd: noFD,
		sock: filepath.Join(dir, genid.SocketFile)}
	st.restoreTimer = newTimer(timerRestore, nil, st)
	pg, err := openPages(dirfd, dir)
	if err != nil {
		return nil, err
	}
	st.page = pg
	st.core = scope.New[*conn](pg.Load())
	if err := s.raiseToFloor(st); err != nil {
		pg.Close()
		return nil, err
	}
	return st, nil
}

// listenScope binds a scope's socket. The page's lock proves no other
// daemon serves the scope, so a socket left by a crashed daemon can go.
func (s *Server) listenScope(st *scopeState) error {
	if err := unix.Unlinkat(st.dirfd, genid.SocketFile, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("stale socket %s: %w", st.sock, err)
	}
	var err error
	if st.lfd, err = listen(st.sock, 0o666, noGroup, false); err != nil {
		return fmt.Errorf("listen %s: %w", st.sock, err)
	}
	return nil
}

// openScope opens a scope's page and binds its socket.
func (s *Server) openScope(name, dir string, dirfd int) (*scopeState, error) {
	st, err := s.openPage(name, dir, dirfd)
	if err != nil {
		return nil, err
	}
	if err := s.listenScope(st); err != nil {
		st.page.Close()
		return nil, err
	}
	return st, nil
}

// serveScope adds a scope's socket (and its process) to the loop.
func (s *Server) serveScope(st *scopeState) error {
	if err := s.loop.watch(st.lfd, special{kind: specialListen, scope: st}); err != nil {
		return err
	}
	if st.ownerWatched() {
		if err := s.loop.watch(st.pidfd, special{kind: specialPidfd, scope: st}); err != nil {
			s.loop.unwatch(st.lfd)
			return err
		}
	}
	s.scopes[st.name] = st
	return nil
}

// loadScopes serves the scopes a previous daemon left. One whose process
// ended meanwhile is removed.
func (s *Server) loadScopes() error {
	ents, err := os.ReadDir(filepath.Join(s.cfg.RunDir, scopesDir))
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if wire.CheckName(name) != nil || !e.IsDir() {
			s.log.Warn("not a scope: left alone", "path", filepath.Join(s.cfg.RunDir, scopesDir, name))
			continue
		}
		meta, err := s.readMeta(name)
		if err != nil {
			s.log.Warn("scope without its state: served without an owner", "scope", name, "err", err)
			meta = scopeMeta{Name: name, Created: time.Now()}
		}
		st, err := s.openScopeDir(name, meta)
		if err != nil {
			return fmt.Errorf("scope %s: %w", name, err)
		}
		if meta.PID != 0 && !st.ownerWatched() {
			s.log.Info("scope's process ended while no daemon ran", "scope", name, "pid", meta.PID)
			s.destroy(st)
			continue
		}
		if err := s.serveScope(st); err != nil {
			s.destroy(st)
			return err
		}
		s.log.Info("scope resumed", "scope", name, "generation", st.core.Generation(), "pid", meta.PID)
	}
	return nil
}

// openScopeDir opens scope name's directory (creating it) and the scope,
// and its process's pidfd if it is still the same process.
func (s *Server) openScopeDir(name string, meta scopeMeta) (*scopeState, error) {
	dir := filepath.Join(s.cfg.RunDir, scopesDir, name)
	dirfd, err := openDir(s.scopesfd, name, 0o755)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	st, err := s.openScope(name, dir, dirfd)
	if err != nil {
		unix.Close(dirfd)
		return nil, err
	}
	st.meta = meta
	if meta.PID != 0 {
		st.pidfd = openOwner(meta.PID, meta.PIDStart)
	}
	return st, nil
}

// createScope creates a scope: 0 or the given start, and if pid is given,
// the process it belongs to.
func (s *Server) createScope(name string, req wire.ScopeCreate) (uint32, error) {
	if name == "" {
		return 0, fmt.Errorf("the host scope always exists: %w", errExists)
	}
	if old := s.scopes[name]; old != nil && old.meta.PID != 0 && !ownerAlive(old) {
		// Its container ended, and the daemon has not seen it yet: a
		// container of the same name (a runc restore) takes the name.
		s.removeScope(old, fmt.Sprintf("its process %d ended", old.meta.PID))
	}
	if old := s.scopes[name]; old != nil {
		if req.Flags&wire.FlagExistOK == 0 {
			return 0, errExists
		}
		if req.PID != 0 && old.meta.PID != 0 && old.meta.PID != int(req.PID) {
			return 0, fmt.Errorf("it belongs to process %d, not %d: %w", old.meta.PID, req.PID, errExists)
		}
		if req.PID != 0 && old.meta.PID == 0 {
			if err := s.bindOwner(old, int(req.PID)); err != nil {
				return 0, err
			}
		}
		return old.core.Generation(), nil
	}
	if len(s.scopes)-1 >= s.cfg.MaxScopes {
		return 0, fmt.Errorf("%d scopes: %w", s.cfg.MaxScopes, errLimit)
	}
	start := uint32(0)
	if req.Flags&wire.FlagStart != 0 {
		if req.Start > scope.Max {
			return 0, fmt.Errorf("start %d: above %d, where no restore could bump it: %w", req.Start, uint32(scope.Max), scope.ErrOverflow)
		}
		start = req.Start
	}
	st, err := s.newScope(name, int(req.PID), false)
	if err != nil {
		return 0, err
	}
	if start > 0 {
		s.store(st, start)
		st.core = scope.New[*conn](start)
	}
	s.log.Info("scope created", "scope", name, "generation", start, "pid", req.PID)
	return start, nil
}

// newScope makes a new scope at generation 0 and serves it. A leftover of
// the same name on disk (a daemon that crashed while removing it) is
// removed first.
func (s *Server) newScope(name string, pid int, restored bool) (*scopeState, error) {
	meta := scopeMeta{Name: name, Created: s.clock(), PID: pid, Restored: restored}
	pidfd := noFD
	if pid != 0 {
		start, err := procStart(pid)
		if err != nil {
			return nil, fmt.Errorf("process %d: %v: %w", pid, err, errNotFound)
		}
		meta.PIDStart = start
		if pidfd = openOwner(pid, start); pidfd == noFD {
			return nil, fmt.Errorf("process %d ended: %w", pid, errNotFound)
		}
	}
	s.removeLeftover(name)
	st, err := s.openScopeDir(name, scopeMeta{})
	if err != nil {
		closeFD(pidfd)
		s.removeLeftover(name) // a new scope leaves nothing behind
		return nil, err
	}
	st.core = scope.New[*conn](0)
	s.store(st, 0)
	st.meta, st.pidfd = meta, pidfd
	if err := s.writeMeta(meta); err != nil {
		s.destroy(st)
		return nil, err
	}
	if err := s.serveScope(st); err != nil {
		s.destroy(st)
		return nil, err
	}
	return st, nil
}

// bindOwner makes a scope belong to process pid: it goes when pid ends.
func (s *Server) bindOwner(st *scopeState, pid int) error {
	start, err := procStart(pid)
	if err != nil {
		return fmt.Errorf("process %d: %v: %w", pid, err, errNotFound)
	}
	fd := openOwner(pid, start)
	if fd == noFD {
		return fmt.Errorf("process %d ended: %w", pid, errNotFound)
	}
	meta := st.meta
	meta.PID, meta.PIDStart = pid, start
	if err := s.writeMeta(meta); err != nil {
		unix.Close(fd)
		return err
	}
	if err := s.loop.watch(fd, special{kind: specialPidfd, scope: st}); err != nil {
		unix.Close(fd)
		return err
	}
	st.meta, st.pidfd = meta, fd
	return nil
}

// ownerAlive tells whether the process a scope belongs to still runs: its
// pidfd is readable once it has ended.
func ownerAlive(st *scopeState) bool {
	if !st.ownerWatched() {
		return false
	}
	fds := []unix.PollFd{{Fd: int32(st.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 0
}

// removeScope ends a scope: its members are disconnected, waits on it are
// answered, its files go. The host scope cannot be removed.
func (s *Server) removeScope(st *scopeState, why string) error {
	if st == s.root {
		return fmt.Errorf("the host scope cannot be removed: %w", errPermission)
	}
	st.removed = true
	for _, c := range s.loop.conns() {
		switch {
		case c.scope == st:
			s.loop.closeConn(c)
		case c.wait != nil && c.wait.scope == st:
			h := c.wait.h
			s.dropWait(c)
			c.replyErr(h, fmt.Errorf("wait-watchers: scope %s removed: %w", st.name, errNotFound))
		}
	}
	s.loop.unwatch(st.lfd)
	if st.ownerWatched() {
		s.loop.unwatch(st.pidfd)
	}
	delete(s.scopes, st.name)
	s.scopeGone(st)
	s.destroy(st)
	s.log.Info("scope removed", "scope", st.name, "why", why, "generation", st.core.Generation())
	return nil
}

// destroy closes a scope's files and removes them.
func (s *Server) destroy(st *scopeState) {
	s.loop.timers.stop(&st.restoreTimer)
	if st.restorer != nil {
		st.restorer.restore.drop(st)
		st.restorer = nil
	}
	closeFD(st.lfd)
	closeFD(st.pidfd)
	st.page.Close()
	unix.Unlinkat(st.dirfd, genid.SocketFile, 0)
	unlinkPages(st.dirfd)
	unix.Close(st.dirfd)
	if err := unix.Unlinkat(s.scopesfd, st.name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		s.log.Warn("scope directory left", "scope", st.name, "err", err)
	}
	s.dropMeta(st.name)
	s.dropFloor(st.name)
}

// removeLeftover removes what a scope of that name left on disk.
func (s *Server) removeLeftover(name string) {
	if dfd, err := unix.Openat(s.scopesfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
		unix.Unlinkat(dfd, genid.SocketFile, 0)
		unlinkPages(dfd)
		unix.Close(dfd)
		unix.Unlinkat(s.scopesfd, name, unix.AT_REMOVEDIR)
	}
	s.dropMeta(name)
	s.dropFloor(name)
}

// scopeOwnerGone removes a scope whose process ended.
func (s *Server) scopeOwnerGone(st *scopeState) {
	if st.restoring() {
		// The restored tasks died in the middle of their restore: the
		// scope goes when the restore ends (endRestore), not under it.
		s.loop.unwatch(st.pidfd)
		unix.Close(st.pidfd)
		st.pidfd = noFD
		return
	}
	s.removeScope(st, fmt.Sprintf("its process %d ended", st.meta.PID))
}

// scopeOrder lists the scopes, the host's first, then by name.
func (s *Server) scopeOrder() []*scopeState {
	out := []*scopeState{s.root}
	names := make([]string, 0, len(s.scopes))
	for n := range s.scopes {
		if n != "" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		out = append(out, s.scopes[n])
	}
	return out
}

// openOwners opens the run dir's file of the scopes' metas.
func (s *Server) openOwners() error {
	var err error
	s.owners, err = slots.Open(s.statefd, ownersFile, filepath.Join(s.cfg.RunDir, stateDir, ownersFile))
	return err
}

// writeMeta records a scope's meta in the run dir's owners and in its
// floor's record.
func (s *Server) writeMeta(m scopeMeta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	i, ok := s.owners.Lookup(m.Name)
	if !ok {
		i, err = s.owners.Add(m.Name)
	}
	if err == nil {
		err = s.owners.SetData(i, b)
	}
	if err != nil {
		return fmt.Errorf("scope state: %w", err)
	}
	return s.recordMeta(m)
}

// readMeta reads scope name's meta from the run dir's owners, or from the
// file of its own that an earlier version wrote, which it then moves into
// the owners.
func (s *Server) readMeta(name string) (scopeMeta, error) {
	var m scopeMeta
	if i, ok := s.owners.Lookup(name); ok {
		if err := json.Unmarshal(s.owners.Data(i), &m); err != nil {
			return scopeMeta{}, fmt.Errorf("owner of %s: %w", name, err)
		}
	} else {
		fd, err := unix.Openat(s.statefd, name+".json", unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return scopeMeta{}, err
		}
		f := os.NewFile(uintptr(fd), name+".json")
		err = json.NewDecoder(f).Decode(&m)
		f.Close()
		if err == nil && m.Name == name {
			err = s.writeMeta(m)
		}
		if err != nil {
			return scopeMeta{}, fmt.Errorf("%s.json: %w", name, err)
		}
		unix.Unlinkat(s.statefd, name+".json", 0)
	}
	if m.Name != name {
		return scopeMeta{}, fmt.Errorf("state of %q for %s", m.Name, name)
	}
	return m, nil
}

// dropMeta forgets scope name's meta (and an earlier version's file of
// it).
func (s *Server) dropMeta(name string) {
	if s.owners != nil {
		s.owners.Remove(name)
	}
	unix.Unlinkat(s.statefd, name+".json", 0)
}

// openOwner opens a pidfd of pid if it is still the process that started
// at start (so a pid reused since is not taken for it); noFD if not.
func openOwner(pid int, start uint64) int {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return noFD
	}
	// Checked after the pidfd is open: it pins the process, so the start
	// time read now is the pidfd's process's.
	if now, err := procStart(pid); err != nil || now != start {
		unix.Close(fd)
		return noFD
	}
	return fd
}

// procStart reads a process's start time, in clock ticks since boot: the
// 22nd field of /proc/PID/stat.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("stat: no comm")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("stat: short")
	}
	return strconv.ParseUint(f[19], 10, 64)
}
