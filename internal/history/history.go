// Package history is the daemon's record of its last bumps: a bounded ring
// of entries, numbered, that the daemon updates as their barrier clears and
// their hooks finish, and its file form, so that it outlives a restart of
// the daemon.
//
// It does no I/O of its own: the file form is written to and read from what
// the caller gives. The file is a log of JSON lines, one per entry as it
// stood when written; an entry written again (updated) replaces the earlier
// line of the same seq when read back. Compact tells when the log has grown
// enough to be rewritten from the ring.
package history

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/genid-project/genid/genid"
)

// DefaultSize is how many bumps a daemon keeps.
const DefaultSize = 256

// MaxLine bounds a line of the file (an entry with its hooks' results); a
// longer one is not read.
const MaxLine = 64 << 10

// Ring is the last Size entries, oldest first. Not safe for concurrent use:
// the daemon's loop owns it.
type Ring struct {
	buf   []genid.HistoryEntry
	start int // index of the oldest
	n     int
	last  uint64 // the seq of the newest entry ever added
}

// New returns an empty ring of size entries (DefaultSize if not positive).
func New(size int) *Ring {
	if size <= 0 {
		size = DefaultSize
	}
	return &Ring{buf: make([]genid.HistoryEntry, size)}
}

// Len returns the number of entries kept.
func (r *Ring) Len() int { return r.n }

// Size returns the most entries kept.
func (r *Ring) Size() int { return len(r.buf) }

// Last returns the seq of the newest entry ever added (0 if none).
func (r *Ring) Last() uint64 { return r.last }

// Add numbers e (the next seq) and keeps it, dropping the oldest entry when
// the ring is full. It returns the seq.
func (r *Ring) Add(e genid.HistoryEntry) uint64 {
	r.last++
	e.Seq = r.last
	r.put(e)
	return e.Seq
}

// Keep keeps e as it is numbered: in place of the entry of its seq, or as
// the newest when its seq is past the newest; an entry older than those
// kept is dropped. It reports whether e was kept.
func (r *Ring) Keep(e genid.HistoryEntry) bool {
	if p := r.Get(e.Seq); p != nil {
		*p = e
		return true
	}
	if e.Seq <= r.last {
		return false
	}
	r.last = e.Seq
	r.put(e)
	return true
}

// put keeps e as it is numbered.
func (r *Ring) put(e genid.HistoryEntry) {
	if r.n < len(r.buf) {
		r.buf[(r.start+r.n)%len(r.buf)] = e
		r.n++
		return
	}
	r.buf[r.start] = e
	r.start = (r.start + 1) % len(r.buf)
}

// Get returns the entry numbered seq for the caller to update in place,
// or nil when it is no longer kept.
func (r *Ring) Get(seq uint64) *genid.HistoryEntry {
	// Seqs grow from the oldest to the newest, with gaps where a file read
	// back lacked lines.
	i := sort.Search(r.n, func(i int) bool { return r.at(i).Seq >= seq })
	if i == r.n || r.at(i).Seq != seq {
		return nil
	}
	return r.at(i)
}

// at returns the i-th oldest entry.
func (r *Ring) at(i int) *genid.HistoryEntry { return &r.buf[(r.start+i)%len(r.buf)] }

// Range calls f with each entry, oldest first, until f returns false. f
// must not keep e nor change the ring.
func (r *Ring) Range(f func(e *genid.HistoryEntry) bool) {
	for i := range r.n {
		if !f(r.at(i)) {
			return
		}
	}
}

// List returns a copy of the entries that keep returns true for, oldest
// first, the latest max of them if max > 0.
func (r *Ring) List(keep func(*genid.HistoryEntry) bool, max int) []genid.HistoryEntry {
	out := []genid.HistoryEntry{}
	for i := r.n - 1; i >= 0 && (max <= 0 || len(out) < max); i-- {
		if e := r.at(i); keep == nil || keep(e) {
			out = append(out, Clone(e))
		}
	}
	slices.Reverse(out)
	return out
}

// Clone copies e and what it points to, so that a copy handed out is not
// changed by later updates.
func Clone(e *genid.HistoryEntry) genid.HistoryEntry {
	c := *e
	if e.Restore != nil {
		r := *e.Restore
		if r.RecordedGeneration != nil {
			g := *r.RecordedGeneration
			r.RecordedGeneration = &g
		}
		c.Restore = &r
	}
	if e.HookResults != nil {
		c.HookResults = append([]genid.HookResult{}, e.HookResults...)
	}
	return c
}

// Line encodes e as a line of the file.
func Line(e *genid.HistoryEntry) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	if len(b) >= MaxLine {
		return nil, fmt.Errorf("history entry %d: %d bytes", e.Seq, len(b))
	}
	return append(b, '\n'), nil
}

// Compact tells whether a file of lines lines, for a ring of size entries,
// is worth rewriting from the ring: once it holds twice as many lines.
func Compact(lines, size int) bool { return lines >= 2*size }

// Read fills a new ring of size entries from a file's lines: a later line
// of a seq replaces an earlier one, and the latest size entries are kept.
// Lines that cannot be read (a daemon that died mid-write leaves a partial
// last line) are skipped and counted in bad; an entry whose seq does not
// follow the newest is dropped with them (the log goes forward only). It
// fails only when r fails.
func Read(rd io.Reader, size int) (ring *Ring, lines, bad int, err error) {
	ring = New(size)
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	for sc.Scan() {
		lines++
		var e genid.HistoryEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Seq == 0 {
			bad++
			continue
		}
		if !ring.Keep(e) {
			bad++ // older than what is kept, or out of order
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, bufio.ErrTooLong) {
		return ring, lines, bad, err
	} else if err != nil {
		bad++ // a line too long ends the scan: what follows is lost
	}
	return ring, lines, bad, nil
}
