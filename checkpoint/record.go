// Package checkpoint carries genid's generations across CRIU
// checkpoint/restore for Go programs that drive CRIU with go-criu, and holds
// the record format shared with the C plugin (plugin/criu/genid-criu.c) and
// `genidctl criu-hook`.
//
// At checkpoint a record in the images dir keeps what the tasks had: the
// generation of each scope they used and how they used it. At restore the
// daemon is asked to bump past it (reason "criu-restore"), so a restored
// process always sees a new generation, even on a host whose generation is
// lower than the snapshot's. Notify and the action script handle the host
// scope; a container's own scope needs the C plugin, which owns its mounts.
package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/genid-project/genid/internal/wire"
)

// RecordName is the file a checkpoint's record is kept in, in the images dir.
const RecordName = "genid.record"

// OldRecordName is the JSON record of genid before scopes (version 1): read
// by ReadRecord for `genidctl image-info`, refused by a restore.
const OldRecordName = "genid.json"

// Reason is what a restore records as the reason of its bump.
const Reason = "criu-restore"

// The record's layout, versions 2 and 3. All integers are little-endian; a
// str8 is a u8 length and the bytes, a str16 a u16 length and the bytes.
//
//	magic   8 bytes  "GENIDREC"
//	version u16      2, or 3 if a mount has flag 2
//	        u16      0
//	length  u32      of what follows (the file's size less 16)
//	time    i64      Unix seconds
//	writer  str8     "" for the C plugin
//	run dir str16    the daemon's run dir on the checkpointed host
//	        u16      number of scopes, each:
//	  name       str8   "" for the host scope
//	  flags      u8     1: the generation is known
//	  generation u32
//	             u16    number of mounts, each:
//	    mnt_id  u32     the mount's id at dump
//	    flags   u8      1: a file (a page), not the scope's directory;
//	                    2 (with 1; version 3): the VMClock page, not
//	                    the generation page
//	    path    str16   where the container has it
//	        u32      number of sockets, each:
//	  inode  u32
//	  flags  u8       1: a watcher; 2: non-blocking
//	  acked  u32
//	  scope  str8
//	  path   str16    the daemon's socket it was connected to (108 bytes at most)
//
// Nothing may follow. The C plugin reads and writes the same, each the
// lowest version that holds the record: genid before the VMClock page
// (version 2 only) still restores what does not mount one.
const (
	recordMagic      = "GENIDREC"
	recordVersion    = 3
	recordVersionMin = 2
	// MaxRecord bounds a record's size: a scope's thousands of watchers
	// fit many times over.
	MaxRecord = 64 << 20
	maxPath   = 4096
	// maxSocketPath bounds a socket's path: sun_path's size, which the
	// C plugin's reader takes at most (it connects to the path).
	maxSocketPath = 108
)

// Record is what a checkpoint remembers.
type Record struct {
	// Version is the layout's version: what was read; Encode writes it, or
	// the lowest that holds the record if that is higher.
	Version int
	// Time is when it was recorded.
	Time time.Time
	// Writer names who recorded it: "" for the C plugin.
	Writer string
	// RunDir is the daemon's run dir on the checkpointed host.
	RunDir string
	// Scopes lists the scopes the tasks used.
	Scopes []ScopeRecord
	// Sockets are the tasks' connections to the daemon.
	Sockets []Socket
}

// ScopeRecord is one scope the checkpointed tasks used.
type ScopeRecord struct {
	Name string // "" for the host scope
	// Generation is the scope's generation once the tasks were frozen; nil
	// if the checkpointed host had no page for it.
	Generation *uint32
	// Mounts are the scope's mounts in the container (C plugin only).
	Mounts []Mount
}

// Mount is a container's mount of its scope, which the C plugin restores.
type Mount struct {
	ID   uint32
	File bool // a page alone (/dev/sysgenid, /dev/vmclock0), not the directory
	// VMClock tells which page: the VMClock page (/dev/vmclock0), not the
	// generation page. It implies File.
	VMClock bool
	Path    string // in the container
}

// Socket is one connection of a dumped task to the daemon.
type Socket struct {
	Inode    uint32
	Watcher  bool
	Nonblock bool
	Acked    uint32
	Scope    string
	Path     string
}

// Scope returns the record of scope name, or nil.
func (r *Record) Scope(name string) *ScopeRecord {
	for i := range r.Scopes {
		if r.Scopes[i].Name == name {
			return &r.Scopes[i]
		}
	}
	return nil
}

// ErrOldRecord is the error of a record of genid before scopes.
var ErrOldRecord = errors.New("a genid.json record (genid before scopes): this genid does not restore it; restore with the genid that took it")

// ReadRecord reads the record of the checkpoint in dir. A checkpoint taken
// without genid has none: the error then matches os.ErrNotExist. One taken
// by genid before scopes has genid.json instead: it is returned, read, as
// version 1, with an error matching ErrOldRecord.
func ReadRecord(dir string) (*Record, error) {
	b, err := os.ReadFile(filepath.Join(dir, RecordName))
	if errors.Is(err, os.ErrNotExist) {
		if old, oerr := readOldRecord(dir); oerr == nil {
			return old, fmt.Errorf("%s: %w", OldRecordName, ErrOldRecord)
		}
	}
	if err != nil {
		return nil, err
	}
	r, err := DecodeRecord(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", RecordName, err)
	}
	return r, nil
}

// WriteRecord writes r into dir, atomically.
func WriteRecord(dir string, r *Record) error {
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	b, err := r.Encode()
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, RecordName+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, RecordName))
}

// Encode returns r in the record's layout.
func (r *Record) Encode() ([]byte, error) {
	version := max(r.Version, recordVersionMin)
	for _, s := range r.Scopes {
		for _, m := range s.Mounts {
			if m.VMClock {
				version = max(version, 3)
			}
		}
	}
	if version > recordVersion {
		return nil, fmt.Errorf("record: version %d, this genid writes %d to %d", r.Version, recordVersionMin, recordVersion)
	}
	var w recordWriter
	w.i64(r.Time.Unix())
	w.str8(r.Writer)
	w.str16(r.RunDir)
	if len(r.Scopes) > 0xffff {
		return nil, fmt.Errorf("record: %d scopes", len(r.Scopes))
	}
	w.u16(uint16(len(r.Scopes)))
	for _, s := range r.Scopes {
		w.str8(s.Name)
		var flags uint8
		var gen uint32
		if s.Generation != nil {
			flags, gen = 1, *s.Generation
		}
		w.u8(flags)
		w.u32(gen)
		if len(s.Mounts) > 0xffff {
			return nil, fmt.Errorf("record: %d mounts", len(s.Mounts))
		}
		w.u16(uint16(len(s.Mounts)))
		for _, m := range s.Mounts {
			w.u32(m.ID)
			w.u8(b2u(m.File || m.VMClock) | b2u(m.VMClock)<<1)
			w.str16(m.Path)
		}
	}
	w.u32(uint32(len(r.Sockets)))
	for _, s := range r.Sockets {
		w.u32(s.Inode)
		w.u8(b2u(s.Watcher) | b2u(s.Nonblock)<<1)
		w.u32(s.Acked)
		w.str8(s.Scope)
		if len(s.Path) > maxSocketPath && w.err == nil {
			w.err = fmt.Errorf("record: a socket path of %d bytes, more than %d", len(s.Path), maxSocketPath)
		}
		w.str16(s.Path)
	}
	if w.err != nil {
		return nil, w.err
	}
	head := append([]byte(recordMagic), 0, 0, 0, 0, 0, 0, 0, 0)
	binary.LittleEndian.PutUint16(head[8:], uint16(version))
	binary.LittleEndian.PutUint32(head[12:], uint32(w.b.Len()))
	return append(head, w.b.Bytes()...), nil
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// DecodeRecord reads a record: the whole of b, exactly, or an error.
func DecodeRecord(b []byte) (*Record, error) {
	if len(b) > MaxRecord {
		return nil, fmt.Errorf("%d bytes, more than %d", len(b), MaxRecord)
	}
	if len(b) < 16 || string(b[:8]) != recordMagic {
		return nil, errors.New("not a genid record (no magic)")
	}
	version := int(binary.LittleEndian.Uint16(b[8:]))
	if version < recordVersionMin || version > recordVersion {
		return nil, fmt.Errorf("version %d, not %d to %d", version, recordVersionMin, recordVersion)
	}
	if binary.LittleEndian.Uint16(b[10:]) != 0 {
		return nil, errors.New("reserved field is not 0")
	}
	if n := binary.LittleEndian.Uint32(b[12:]); int64(n) != int64(len(b)-16) {
		return nil, fmt.Errorf("says %d bytes follow its header, %d do: cut short or padded", n, len(b)-16)
	}
	rd := recordReader{b: b[16:]}
	r := &Record{Version: version}
	mountFlags := uint8(1) // version 2
	if version >= 3 {
		mountFlags = 3
	}
	r.Time = time.Unix(rd.i64(), 0).UTC()
	r.Writer = rd.str8()
	r.RunDir = rd.path()
	nscopes := int(rd.u16())
	listed := make(map[string]struct{}, nscopes) // a lookup per scope and socket: linear in both
	for range nscopes {
		if rd.err != nil {
			break
		}
		var s ScopeRecord
		s.Name = rd.name()
		flags, gen := rd.u8(), rd.u32()
		if flags&^1 != 0 {
			rd.fail(fmt.Errorf("scope %q: flags %#x", s.Name, flags))
		}
		if flags&1 != 0 {
			s.Generation = &gen
		} else if gen != 0 {
			rd.fail(fmt.Errorf("scope %q: a generation of %d, flagged unknown", s.Name, gen))
		}
		nmounts := int(rd.u16())
		for range nmounts {
			if rd.err != nil {
				break
			}
			m := Mount{ID: rd.u32()}
			mf := rd.u8()
			if mf&^mountFlags != 0 || mf == 2 {
				rd.fail(fmt.Errorf("mount flags %#x (version %d)", mf, version))
			}
			m.File, m.VMClock, m.Path = mf&1 != 0, mf&2 != 0, rd.path()
			s.Mounts = append(s.Mounts, m)
		}
		if _, dup := listed[s.Name]; dup {
			rd.fail(fmt.Errorf("scope %q twice", s.Name))
		}
		listed[s.Name] = struct{}{}
		r.Scopes = append(r.Scopes, s)
	}
	nsockets := rd.u32()
	// A socket takes 12 bytes at least: inode, flags, acked, two lengths.
	if rd.err == nil && uint64(nsockets)*12 > uint64(len(rd.b)) {
		rd.fail(fmt.Errorf("%d sockets cannot fit %d bytes", nsockets, len(rd.b)))
	}
	for i := uint32(0); i < nsockets && rd.err == nil; i++ {
		s := Socket{Inode: rd.u32()}
		flags := rd.u8()
		if flags&^3 != 0 {
			rd.fail(fmt.Errorf("socket flags %#x", flags))
		}
		s.Watcher, s.Nonblock = flags&1 != 0, flags&2 != 0
		s.Acked = rd.u32()
		s.Scope = rd.name()
		s.Path = rd.path()
		if len(s.Path) > maxSocketPath {
			rd.fail(fmt.Errorf("a socket path of %d bytes, more than %d", len(s.Path), maxSocketPath))
		}
		if _, ok := listed[s.Scope]; rd.err == nil && !ok {
			rd.fail(fmt.Errorf("socket %d of scope %q, which the record does not list", s.Inode, s.Scope))
		}
		r.Sockets = append(r.Sockets, s)
	}
	if rd.err == nil && len(rd.b) != 0 {
		rd.fail(fmt.Errorf("%d bytes after the record", len(rd.b)))
	}
	if rd.err != nil {
		return nil, rd.err
	}
	return r, nil
}

type recordWriter struct {
	b   bytes.Buffer
	err error
}

func (w *recordWriter) u8(v uint8)   { w.b.WriteByte(v) }
func (w *recordWriter) u16(v uint16) { w.b.Write(binary.LittleEndian.AppendUint16(nil, v)) }
func (w *recordWriter) u32(v uint32) { w.b.Write(binary.LittleEndian.AppendUint32(nil, v)) }
func (w *recordWriter) i64(v int64)  { w.b.Write(binary.LittleEndian.AppendUint64(nil, uint64(v))) }
func (w *recordWriter) str8(s string) {
	if len(s) > 0xff && w.err == nil {
		w.err = fmt.Errorf("record: %q is longer than 255 bytes", s)
	}
	w.u8(uint8(len(s)))
	w.b.WriteString(s)
}
func (w *recordWriter) str16(s string) {
	if len(s) > maxPath && w.err == nil {
		w.err = fmt.Errorf("record: a path of %d bytes", len(s))
	}
	w.u16(uint16(len(s)))
	w.b.WriteString(s)
}

// recordReader reads the fields of a record; the first error sticks, and
// every read after it returns zero.
type recordReader struct {
	b   []byte
	err error
}

func (r *recordReader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *recordReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.fail(io.ErrUnexpectedEOF)
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *recordReader) u8() uint8 {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *recordReader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (r *recordReader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (r *recordReader) i64() int64 {
	if p := r.take(8); p != nil {
		return int64(binary.LittleEndian.Uint64(p))
	}
	return 0
}

func (r *recordReader) str8() string { return string(r.take(int(r.u8()))) }

// name reads a scope's name: empty, or a valid one.
func (r *recordReader) name() string {
	s := r.str8()
	if s != "" && r.err == nil {
		if err := wire.CheckName(s); err != nil {
			r.fail(err)
		}
	}
	return s
}

// path reads a path: at most maxPath bytes, no NUL.
func (r *recordReader) path() string {
	n := int(r.u16())
	if n > maxPath {
		r.fail(fmt.Errorf("a path of %d bytes", n))
		return ""
	}
	s := string(r.take(n))
	if strings.IndexByte(s, 0) >= 0 {
		r.fail(errors.New("a path with a NUL byte"))
	}
	return s
}

// MinForRestore is the bump's min for a restore of scope s: past the
// recorded generation, or simply the next one when nothing was recorded.
func MinForRestore(s *ScopeRecord) (uint32, error) {
	if s == nil || s.Generation == nil {
		return 0, nil
	}
	if *s.Generation == ^uint32(0) {
		return 0, errors.New("recorded generation is the maximum: cannot bump past it")
	}
	return *s.Generation + 1, nil
}

// readOldRecord reads the genid.json of genid before scopes, as version 1:
// the host scope's generation and the sockets.
func readOldRecord(dir string) (*Record, error) {
	b, err := os.ReadFile(filepath.Join(dir, OldRecordName))
	if err != nil {
		return nil, err
	}
	var old struct {
		Version    int     `json:"version"`
		Generation *uint32 `json:"generation"`
		Time       string  `json:"time"`
		Writer     string  `json:"writer"`
		Sockets    []struct {
			Inode    uint32 `json:"inode"`
			Watcher  bool   `json:"watcher"`
			Acked    uint32 `json:"acked"`
			Nonblock bool   `json:"nonblock"`
			Path     string `json:"path"`
		} `json:"sockets"`
	}
	if err := json.Unmarshal(b, &old); err != nil {
		return nil, err
	}
	if old.Version != 1 {
		return nil, fmt.Errorf("version %d", old.Version)
	}
	r := &Record{Version: 1, Writer: old.Writer, Scopes: []ScopeRecord{{Generation: old.Generation}}}
	r.Time, _ = time.Parse(time.RFC3339, old.Time)
	for _, s := range old.Sockets {
		r.Sockets = append(r.Sockets, Socket{Inode: s.Inode, Watcher: s.Watcher, Acked: s.Acked, Nonblock: s.Nonblock, Path: s.Path})
	}
	return r, nil
}
