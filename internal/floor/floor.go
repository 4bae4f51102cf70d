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
//	    marks.json     the backends' marks
//	    scopes/NAME.floor  a container scope's floor, as host
//	    scopes/NAME.owner  its owner, as the daemon gave it (Record.Meta)
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
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/page"
)

// BootIDPath is where the kernel tells the boot's id.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

// Files of a run dir's state.
const (
	bootFile    = "boot"
	hostFile    = "host"
	marksFile   = "marks.json"
	scopesDir   = "scopes"
	floorSuffix = ".floor" // a suffix each, so that no scope's name (which
	metaSuffix  = ".owner" // may hold dots) names another's file
)

// ErrLocked means another daemon holds this run dir's state.
var ErrLocked = errors.New("another daemon holds this run dir's state")

// Store is one run dir's state.
type Store struct {
	dir      string // STATE_DIR/RUNKEY
	dirfd    int
	scopesfd int
	host     *page.Writer // its lock is the store's
	fresh    bool

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
	s := &Store{dir: filepath.Join(stateDir, key), dirfd: -1, scopesfd: -1}
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
	if s.scopesfd, err = openDir(s.dirfd, scopesDir, 0o700); err != nil {
		return nil, fmt.Errorf("state of %s: %s: %w", runDir, scopesDir, err)
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
		other := &Store{dirfd: dirfd, scopesfd: -1}
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
// its scopes directory.
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
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	d := os.NewFile(uintptr(fd), "dir")
	names, _ := d.Readdirnames(-1)
	d.Close()
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
	names, err := s.list()
	if err != nil {
		return err
	}
	for _, n := range names {
		unix.Unlinkat(s.scopesfd, n, 0)
	}
	unix.Unlinkat(s.dirfd, marksFile, 0)
	s.host.Store(0)
	return nil
}

// Dir is the run dir's state directory, for logs.
func (s *Store) Dir() string { return s.dir }

// Fresh tells whether the store had no record of this boot when it was
// opened: no daemon of the boot served the run dir with it before.
func (s *Store) Fresh() bool { return s.fresh }

// Host is the host scope's floor.
func (s *Store) Host() *Scope { return &Scope{w: s.host, host: true} }

// Close releases the store and its lock. The files keep their values.
func (s *Store) Close() error {
	var err error
	if s.host != nil {
		err = s.host.Close()
		s.host = nil
	}
	for _, fd := range []*int{&s.scopesfd, &s.dirfd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	return err
}

// Scope is one scope's floor. A nil *Scope is a floor that keeps nothing:
// that of a daemon without a state dir.
type Scope struct {
	w    *page.Writer
	host bool
}

// Load returns the floor.
func (f *Scope) Load() uint32 {
	if f == nil {
		return 0
	}
	return f.w.Load()
}

// Store records gen: call it before the generation becomes visible
// anywhere else. One atomic store to a shared mapping of the file, as for
// the page: no system call, and it outlives the daemon.
func (f *Scope) Store(gen uint32) {
	if f != nil {
		f.w.Store(gen)
	}
}

// Close unmaps a container scope's floor (the host's is the store's).
func (f *Scope) Close() {
	if f != nil && !f.host {
		f.w.Close()
	}
}

// Scope opens (creating it at 0) the floor of container scope name, which
// the caller checked (wire.CheckName) and serves alone.
func (s *Store) Scope(name string) (*Scope, error) {
	w, err := page.CreateAt(s.scopesfd, name+floorSuffix, filepath.Join(s.dir, scopesDir, name+floorSuffix))
	if err != nil {
		return nil, fmt.Errorf("floor of scope %s: %w", name, err)
	}
	return &Scope{w: w}, nil
}

// SetMeta records what the daemon needs to serve scope name again should
// the run dir be lost (its owner).
func (s *Store) SetMeta(name string, meta []byte) error {
	if err := s.write(s.scopesfd, name+metaSuffix, meta); err != nil {
		return fmt.Errorf("floor of scope %s: %w", name, err)
	}
	return nil
}

// Remove forgets scope name: its floor and its meta. A scope of that name
// made later starts afresh.
func (s *Store) Remove(name string) {
	unix.Unlinkat(s.scopesfd, name+metaSuffix, 0)
	unix.Unlinkat(s.scopesfd, name+floorSuffix, 0)
}

// Record is a container scope the state knows.
type Record struct {
	Name  string
	Floor uint32
	Meta  []byte // nil if none was recorded
}

// Records lists the container scopes the state knows, with their floors.
// A floor held by the caller is read through its own mapping's file all
// the same: the values are those of the files.
func (s *Store) Records() ([]Record, error) {
	names, err := s.list()
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, f := range names {
		n, ok := strings.CutSuffix(f, floorSuffix)
		if !ok || strings.HasPrefix(f, ".") {
			continue
		}
		b, err := s.readAt(s.scopesfd, f, 4)
		if err != nil {
			continue
		}
		r := Record{Name: n}
		if len(b) == 4 {
			r.Floor = binary.NativeEndian.Uint32(b) // as the page stores it
		}
		if m, err := s.readAt(s.scopesfd, n+metaSuffix, 1<<16); err == nil {
			r.Meta = m
		}
		out = append(out, r)
	}
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

// list returns the names in the scopes directory.
func (s *Store) list() ([]string, error) {
	fd, err := unix.Openat(s.scopesfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), filepath.Join(s.dir, scopesDir))
	defer f.Close()
	return f.Readdirnames(-1)
}

func (s *Store) read(name string) ([]byte, error) { return s.readAt(s.dirfd, name, 1<<20) }

// readAt reads at most max bytes of file name in dirfd, not following a
// link.
func (s *Store) readAt(dirfd int, name string, max int64) ([]byte, error) {
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
