// Package floor keeps, outside the run dir, what the daemon must not lose
// with it for the rest of a boot: each scope's floor (the highest
// generation it handed out, below which it never resumes) and the
// backends' marks (what they accounted for, from where the next daemon of
// the boot looks back). See docs/state.md.
//
// The run dir is the view that clients map; the state dir is the record.
// Removing the run dir, or a daemon's crash, loses neither. A new boot
// starts again from nothing: the state is tied to the boot id, and a state
// of another boot is wiped at open. Nothing is fsync'd: what a write left
// in the page cache outlives the daemon, and only a crash of the machine,
// which is a new boot, loses it.
//
// A state dir serves many run dirs, each in a directory of its own, named
// after the run dir's path:
//
//	STATE_DIR/                  default /var/lib/genid
//	  RUNKEY/          (0700)   16 hex digits of the sha256 of the run dir's path
//	    boot           {"boot_id", "run_dir"}: whose record this is
//	    host           the host scope's floor: a page, u32 at offset 0
//	    floors         the container scopes' floors and owners (Record.Meta),
//	                   a slot each (package slots: the floor its value)
//	    marks.json     the backends' marks
//
// Earlier versions kept a container scope's floor and owner in files of
// their own, scopes/NAME.floor (a page, as host) and scopes/NAME.owner:
// Open moves them into the table.
package floor

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/page"
	"github.com/genid-project/genid/internal/slots"
)

// BootIDPath is where the kernel tells the boot's id.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

// Files of a run dir's state.
const (
	bootFile  = "boot"
	hostFile  = "host"
	marksFile = "marks.json"
	tableFile = "floors"
	// An earlier version's files of a container scope, in scopesDir.
	scopesDir   = "scopes"
	floorSuffix = ".floor"
	metaSuffix  = ".owner"
)

// MaxMeta is the longest meta SetMeta keeps, in bytes.
const MaxMeta = slots.MaxData

// ErrLocked means another daemon holds this run dir's state.
var ErrLocked = errors.New("another daemon holds this run dir's state")

// Store is one run dir's state.
type Store struct {
	dir   string // STATE_DIR/RUNKEY
	dirfd int
	host  *page.Writer // its lock is the store's
	fresh bool

	tmu  sync.RWMutex      // the table; a floor's store or load reads it
	tab  *slots.File       // the container scopes'; nil once closed
	held map[string]*Scope // the floors Scope opened and did not close

	mu    sync.Mutex // marks, and their file
	marks map[string]json.RawMessage
}

// bootRecord is the content of the boot file.
type bootRecord struct {
	BootID string `json:"boot_id"`
	RunDir string `json:"run_dir"`
}

// Key names the directory of runDir's state in a state dir.
func Key(runDir string) string {
	sum := sha256.Sum256([]byte(runDir))
	return hex.EncodeToString(sum[:8])
}

// Open opens (creating it) the state of runDir, an absolute path, in
// stateDir, and locks it for as long as it is open: a second daemon of the
// same run dir fails with ErrLocked. bootID is the boot's id (see BootID):
// a state of another boot is wiped, and the store is then Fresh.
func Open(stateDir, runDir, bootID string) (*Store, error) {
	if bootID == "" {
		return nil, errors.New("state: no boot id")
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	top, err := openDir(unix.AT_FDCWD, stateDir, 0)
	if err != nil {
		return nil, fmt.Errorf("state dir %s: %w", stateDir, err)
	}
	defer unix.Close(top)
	key := Key(runDir)
	s := &Store{dir: filepath.Join(stateDir, key), dirfd: -1}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if s.dirfd, err = openDir(top, key, 0o700); err != nil {
		return nil, fmt.Errorf("state of %s: %s: %w", runDir, s.dir, err)
	}
	if s.host, err = page.CreateAt(s.dirfd, hostFile, filepath.Join(s.dir, hostFile)); err != nil {
		if errors.Is(err, page.ErrLocked) {
			return nil, fmt.Errorf("state of %s: %s: %w", runDir, s.dir, ErrLocked)
		}
		return nil, fmt.Errorf("state of %s: %w", runDir, err)
	}
	var rec bootRecord
	if b, err := s.read(bootFile); err == nil {
		json.Unmarshal(b, &rec) // a record that cannot be read is another boot's
	}
	if rec.BootID != bootID {
		// Another boot's (or none): its floors and marks mean nothing now.
		if err := s.wipe(); err != nil {
			return nil, fmt.Errorf("state of %s: %w", runDir, err)
		}
		b, _ := json.Marshal(bootRecord{BootID: bootID, RunDir: runDir})
		if err := s.write(s.dirfd, bootFile, b); err != nil {
			return nil, fmt.Errorf("state of %s: %w", runDir, err)
		}
		s.fresh = true
	}
	s.held = map[string]*Scope{}
	if s.tab, err = slots.Open(s.dirfd, tableFile, filepath.Join(s.dir, tableFile)); err != nil {
		return nil, fmt.Errorf("state of %s: %w", runDir, err)
	}
	if err := s.migrate(); err != nil {
		return nil, fmt.Errorf("state of %s: %w", runDir, err)
	}
	if s.fresh {
		removeOtherBoots(top, key, bootID)
	}
	s.marks = map[string]json.RawMessage{}
	if b, err := s.read(marksFile); err == nil {
		if err := json.Unmarshal(b, &s.marks); err != nil {
			s.marks = map[string]json.RawMessage{} // lost: as if none
		}
	}
	ok = true
	return s, nil
}

// BootID reads the boot's id from path (BootIDPath, or a file laid out
// like it).
func BootID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	if id, err := ParseBootID(string(b)); err == nil {
		return id, nil
	}
	id := strings.TrimSpace(string(b)) // not the kernel's: a test's file
	if id == "" {
		return "", fmt.Errorf("boot id: %s is empty", path)
	}
	return id, nil
}

// ParseBootID returns the boot id s in the kernel's form (a UUID with
// dashes, lower case), whether s has the dashes or not: systemd's %b
// specifier gives the 32 hex digits alone, and one boot must have one name
// whoever started the daemon. Anything but a UUID is an error.
func ParseBootID(s string) (string, error) {
	hex := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), "-", ""))
	if len(hex) != 32 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("boot id %q: not a UUID", strings.TrimSpace(s))
	}
	return hex[:8] + "-" + hex[8:12] + "-" + hex[12:16] + "-" + hex[16:20] + "-" + hex[20:], nil
}

// removeOtherBoots removes, from the state dir top, the states of run dirs
// (other than key's) that belong to another boot and that no daemon holds:
// a run dir served in an earlier boot (a test's, say) and never again
// would leave its state for ever. Best effort.
func removeOtherBoots(top int, key, bootID string) {
	fd, err := unix.Openat(top, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	d := os.NewFile(uintptr(fd), "state dir")
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		if n == key || len(n) != len(key) || strings.Trim(n, "0123456789abcdef") != "" {
			continue
		}
		dirfd, err := unix.Openat(top, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		other := &Store{dirfd: dirfd}
		var rec bootRecord
		if b, err := other.read(bootFile); err == nil {
			json.Unmarshal(b, &rec)
		}
		// A daemon that holds it has the lock of its host floor.
		lock, lerr := unix.Openat(dirfd, hostFile, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if rec.BootID != bootID && rec.BootID != "" && lerr == nil && unix.Flock(lock, unix.LOCK_EX|unix.LOCK_NB) == nil {
			removeAllAt(dirfd)
			unix.Unlinkat(top, n, unix.AT_REMOVEDIR)
		}
		if lerr == nil {
			unix.Close(lock)
		}
		unix.Close(dirfd)
	}
}

// removeAllAt empties a run dir's state directory: its files, and those of
// an earlier version's scopes directory.
func removeAllAt(dirfd int) {
	if sfd, err := unix.Openat(dirfd, scopesDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
		emptyDir(sfd)
		unix.Close(sfd)
		unix.Unlinkat(dirfd, scopesDir, unix.AT_REMOVEDIR)
	}
	emptyDir(dirfd)
}

// emptyDir removes the files (not the directories) in dirfd.
func emptyDir(dirfd int) {
	names, _ := readNames(dirfd)
	for _, n := range names {
		unix.Unlinkat(dirfd, n, 0)
	}
}

// wipe removes another boot's floors and marks, the boot record first: a
// wipe cut short is done again at the next open.
func (s *Store) wipe() error {
	if err := unix.Unlinkat(s.dirfd, bootFile, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	if err := unix.Unlinkat(s.dirfd, tableFile, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	if sfd, err := unix.Openat(s.dirfd, scopesDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
		emptyDir(sfd)
		unix.Close(sfd)
		unix.Unlinkat(s.dirfd, scopesDir, unix.AT_REMOVEDIR)
	}
	unix.Unlinkat(s.dirfd, marksFile, 0)
	s.host.Set(0)
	return nil
}

// migrate moves the floors and owners that an earlier version kept in
// files of their own (scopes/NAME.floor, NAME.owner) into the table, and
// removes the files once their values are in it. A floor the table has
// too is kept at the higher of the two; a migration cut short is done
// again at the next open.
func (s *Store) migrate() error {
	sfd, err := unix.Openat(s.dirfd, scopesDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", scopesDir, err)
	}
	defer unix.Close(sfd)
	names, err := readNames(sfd)
	if err != nil {
		return fmt.Errorf("%s: %w", scopesDir, err)
	}
	for _, f := range names {
		name, ok := strings.CutSuffix(f, floorSuffix)
		if !ok || strings.HasPrefix(f, ".") || name == "" || len(name) > slots.MaxName {
			continue
		}
		b, err := readAt(sfd, f, 4)
		if err != nil {
			continue
		}
		i, ok := s.tab.Lookup(name)
		if !ok {
			if i, err = s.tab.Add(name); err != nil {
				return fmt.Errorf("floor of scope %s: %w", name, err)
			}
		}
		if len(b) == 4 {
			s.tab.Store(i, max(s.tab.Load(i), binary.NativeEndian.Uint32(b))) // as the page stored it
		}
		if m, err := readAt(sfd, name+metaSuffix, MaxMeta+1); err == nil && s.tab.Data(i) == nil && len(m) > 0 {
			if err := s.tab.SetData(i, m); err != nil {
				return fmt.Errorf("floor of scope %s: %w", name, err)
			}
		}
		unix.Unlinkat(sfd, name+metaSuffix, 0)
		unix.Unlinkat(sfd, f, 0)
	}
	emptyDir(sfd) // what is left cannot be a floor
	unix.Unlinkat(s.dirfd, scopesDir, unix.AT_REMOVEDIR)
	return nil
}

// readNames lists the names in the directory dirfd.
func readNames(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	d := os.NewFile(uintptr(fd), "dir")
	defer d.Close()
	return d.Readdirnames(-1)
}

// Dir is the run dir's state directory, for logs.
func (s *Store) Dir() string { return s.dir }

// Fresh tells whether the store had no record of this boot when it was
// opened: no daemon of the boot served the run dir with it before.
func (s *Store) Fresh() bool { return s.fresh }

// Host is the host scope's floor.
func (s *Store) Host() *Scope { return &Scope{w: s.host} }

// Close releases the store and its lock. The files keep their values; a
// floor still open keeps nothing more.
func (s *Store) Close() error {
	var errs []error
	s.tmu.Lock()
	if s.tab != nil {
		errs = append(errs, s.tab.Close())
		s.tab = nil
	}
	s.tmu.Unlock()
	if s.host != nil {
		errs = append(errs, s.host.Close())
		s.host = nil
	}
	if s.dirfd >= 0 {
		unix.Close(s.dirfd)
		s.dirfd = -1
	}
	return errors.Join(errs...)
}

// Scope is one scope's floor: the host's page, or a container scope's
// slot in the store's table. A nil *Scope is a floor that keeps nothing:
// that of a daemon without a state dir.
type Scope struct {
	w    *page.Writer // the host's
	s    *Store
	name string
	slot int // -1 once closed or removed
}

// Load returns the floor.
func (f *Scope) Load() uint32 {
	if f == nil {
		return 0
	}
	if f.w != nil {
		return f.w.Load()
	}
	f.s.tmu.RLock()
	defer f.s.tmu.RUnlock()
	if f.s.tab == nil || f.slot < 0 {
		return 0
	}
	return f.s.tab.Load(f.slot)
}

// Store records gen: call it before the generation becomes visible
// anywhere else. One atomic store to a shared mapping of the file, as for
// the page: no system call, and it outlives the daemon. A closed floor
// stores nothing.
func (f *Scope) Store(gen uint32) {
	if f == nil {
		return
	}
	if f.w != nil {
		f.w.Set(gen)
		return
	}
	f.s.tmu.RLock()
	defer f.s.tmu.RUnlock()
	if f.s.tab != nil && f.slot >= 0 {
		f.s.tab.Store(f.slot, gen)
	}
}

// Close lets a container scope's floor go (the host's is the store's); its
// record stays, for Scope to open again.
func (f *Scope) Close() {
	if f == nil || f.w != nil {
		return
	}
	f.s.tmu.Lock()
	defer f.s.tmu.Unlock()
	if f.s.held[f.name] == f {
		delete(f.s.held, f.name)
	}
	f.slot = -1
}

// Scope opens (creating it at 0) the floor of container scope name, which
// the caller checked (wire.CheckName) and serves alone: a floor open and
// not closed is not opened again.
func (s *Store) Scope(name string) (*Scope, error) {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	if s.tab == nil {
		return nil, fmt.Errorf("floor of scope %s: state closed", name)
	}
	if s.held[name] != nil {
		return nil, fmt.Errorf("floor of scope %s: already open", name)
	}
	i, ok := s.tab.Lookup(name)
	if !ok {
		var err error
		if i, err = s.tab.Add(name); err != nil {
			return nil, fmt.Errorf("floor of scope %s: %w", name, err)
		}
	}
	f := &Scope{s: s, name: name, slot: i}
	s.held[name] = f
	return f, nil
}

// SetMeta records what the daemon needs to serve scope name again should
// the run dir be lost (its owner): at most MaxMeta bytes.
func (s *Store) SetMeta(name string, meta []byte) error {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	if s.tab == nil {
		return fmt.Errorf("floor of scope %s: state closed", name)
	}
	i, ok := s.tab.Lookup(name)
	if !ok {
		var err error
		if i, err = s.tab.Add(name); err != nil {
			return fmt.Errorf("floor of scope %s: %w", name, err)
		}
	}
	if err := s.tab.SetData(i, meta); err != nil {
		return fmt.Errorf("floor of scope %s: %w", name, err)
	}
	return nil
}

// Remove forgets scope name: its floor and its meta. A scope of that name
// made later starts afresh; a floor of it still open keeps nothing more.
func (s *Store) Remove(name string) {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	if s.tab == nil {
		return
	}
	if f := s.held[name]; f != nil {
		f.slot = -1
		delete(s.held, name)
	}
	s.tab.Remove(name)
}

// Record is a container scope the state knows.
type Record struct {
	Name  string
	Floor uint32
	Meta  []byte // nil if none was recorded
}

// Records lists the container scopes the state knows, with their floors,
// by name.
func (s *Store) Records() ([]Record, error) {
	s.tmu.RLock()
	defer s.tmu.RUnlock()
	if s.tab == nil {
		return nil, errors.New("state closed")
	}
	out := make([]Record, 0, s.tab.Len())
	for name, i := range s.tab.Names() {
		out = append(out, Record{Name: name, Floor: s.tab.Load(i), Meta: s.tab.Data(i)})
	}
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Marks returns the backends' marks as the last daemon of the boot left
// them, by backend name.
func (s *Store) Marks() map[string]json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]json.RawMessage, len(s.marks))
	for k, v := range s.marks {
		out[k] = v
	}
	return out
}

// SetMark records backend name's mark, for the next daemon of the boot.
func (s *Store) SetMark(name string, mark json.RawMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirfd < 0 {
		return errors.New("state closed")
	}
	s.marks[name] = mark
	b, err := json.Marshal(s.marks)
	if err != nil {
		return err
	}
	return s.write(s.dirfd, marksFile, b)
}

func (s *Store) read(name string) ([]byte, error) { return readAt(s.dirfd, name, 1<<20) }

// readAt reads at most max bytes of file name in dirfd, not following a
// link.
func readAt(dirfd int, name string, max int64) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}

// write replaces file name in dirfd with b: a new file renamed over it, so
// a reader (the next daemon, after a crash) sees the old or the new.
func (s *Store) write(dirfd int, name string, b []byte) error {
	tmp := "." + name + ".tmp"
	fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), tmp)
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dirfd, tmp, dirfd, name)
	}
	if err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// openDir opens directory name in dirfd (creating it with mode, if mode is
// not 0) without following a link, and refuses one that is not this
// user's or that others may write to.
func openDir(dirfd int, name string, mode uint32) (int, error) {
	if mode != 0 {
		if err := unix.Mkdirat(dirfd, name, mode); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, err
		}
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("not owned by uid %d and writable only by it", os.Geteuid())
	}
	return fd, nil
}
