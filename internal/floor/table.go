package floor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The container scopes' floors and owners are slots of one file, the
// table, rather than a page each: a page per scope cost the machine a
// page, an inode and a mapping per scope for four bytes.
//
// A slot (slotSize bytes, native byte order, never across a page):
//
//	0   u32   the floor; 0 in a free slot
//	4   u8    the name's length; 0: a free slot
//	5   u8    0
//	6   u16   the meta's length
//	8   [64]  the name
//	72  [...] the meta
//
// The floor is stored through the daemon's shared mapping of the file,
// one atomic store, as a page's; names and metas are written with one
// pwrite each, which a daemon's crash does not cut (only the machine's,
// a new boot). A slot is freed by zeroing it whole.
const (
	tableFile  = "floors"
	slotSize   = 512
	chunkSlots = 64 // slots mapped at a time: the file grows by as many
	chunkSize  = slotSize * chunkSlots
	offNameLen = 4
	offMetaLen = 6
	offName    = 8
	maxName    = 64 // wire.MaxName
	offMeta    = offName + maxName
	// MaxMeta is the longest meta SetMeta keeps, in bytes.
	MaxMeta = slotSize - offMeta
)

// table is the mapped file of slots. Its fields are the store's, under
// the store's tmu.
type table struct {
	fd     int
	chunks [][]byte          // each chunkSlots slots, mapped
	slots  map[string]int    // by name, the slot of each record
	free   []int             // free slots below the end
	held   map[string]*Scope // the floors Scope opened and did not close
}

// openTable opens (creating it) the table in dirfd, checks it as the
// daemon's file, maps it and reads its records. A slot that cannot be a
// record is freed; of two slots of one name, the higher floor is kept.
func openTable(dirfd int, path string) (*table, error) {
	fd, err := unix.Openat(dirfd, tableFile, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	t := &table{fd: fd, slots: map[string]int{}, held: map[string]*Scope{}}
	fail := func(err error) (*table, error) {
		t.close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || int(st.Uid) != os.Geteuid() {
		return fail(fmt.Errorf("not a regular file of uid %d", os.Geteuid()))
	}
	n := (st.Size + chunkSize - 1) / chunkSize
	if st.Size != n*chunkSize {
		// Cut short (or not the table's size): grown to whole chunks,
		// the slots it holds kept.
		if err := unix.Ftruncate(fd, n*chunkSize); err != nil {
			return fail(err)
		}
	}
	for range n {
		if err := t.mapChunk(); err != nil {
			return fail(err)
		}
	}
	for i := range int(n) * chunkSlots {
		name, ok := t.name(i)
		switch {
		case !ok:
			t.clear(i)
			t.free = append(t.free, i)
		case name == "":
			t.free = append(t.free, i)
		default:
			j, dup := t.slots[name]
			if !dup {
				t.slots[name] = i
				continue
			}
			// Not written by genid: keep one, at the higher floor.
			if t.load(i) > t.load(j) {
				t.store(j, t.load(i))
			}
			t.clear(i)
			t.free = append(t.free, i)
		}
	}
	return t, nil
}

// mapChunk maps the next chunk of the file, which holds it.
func (t *table) mapChunk() error {
	mem, err := unix.Mmap(t.fd, int64(len(t.chunks))*chunkSize, chunkSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	t.chunks = append(t.chunks, mem)
	return nil
}

// slot returns slot i's bytes.
func (t *table) slot(i int) []byte {
	c := t.chunks[i/chunkSlots]
	off := i % chunkSlots * slotSize
	return c[off : off+slotSize : off+slotSize]
}

func (t *table) load(i int) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&t.slot(i)[0])))
}

func (t *table) store(i int, gen uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&t.slot(i)[0])), gen)
}

// name returns slot i's name ("" in a free slot); !ok if the slot is
// neither free nor a record.
func (t *table) name(i int) (string, bool) {
	b := t.slot(i)
	n := int(b[offNameLen])
	if n == 0 {
		return "", true
	}
	if n > maxName || b[offNameLen+1] != 0 || t.metaLen(i) > MaxMeta {
		return "", false
	}
	return string(b[offName : offName+n]), true
}

func (t *table) metaLen(i int) int {
	return int(binary.NativeEndian.Uint16(t.slot(i)[offMetaLen:]))
}

// meta returns a copy of slot i's meta, nil if it has none.
func (t *table) meta(i int) []byte {
	n := t.metaLen(i)
	if n == 0 {
		return nil
	}
	return append([]byte(nil), t.slot(i)[offMeta:offMeta+n]...)
}

// pwrite writes b at offset off of slot i, in one system call.
func (t *table) pwrite(i, off int, b []byte) error {
	n, err := unix.Pwrite(t.fd, b, int64(i)*slotSize+int64(off))
	if err == nil && n != len(b) {
		err = fmt.Errorf("slot %d: short write", i)
	}
	return err
}

// add makes a record of name, at floor 0 and without a meta, in a free
// slot (the file grown by a chunk if none is), and returns the slot.
func (t *table) add(name string) (int, error) {
	if name == "" || len(name) > maxName {
		return 0, fmt.Errorf("a name of %d bytes", len(name))
	}
	if len(t.free) == 0 {
		end := int64(len(t.chunks)+1) * chunkSize
		if err := unix.Ftruncate(t.fd, end); err != nil {
			return 0, err
		}
		if err := t.mapChunk(); err != nil {
			return 0, err
		}
		for i := range chunkSlots {
			t.free = append(t.free, (len(t.chunks)-1)*chunkSlots+i)
		}
	}
	// The lowest free slot: the file's records stay packed at its start.
	k := 0
	for j, i := range t.free {
		if i < t.free[k] {
			k = j
		}
	}
	i := t.free[k]
	b := make([]byte, offName+len(name))
	b[offNameLen] = byte(len(name))
	copy(b[offName:], name)
	if err := t.pwrite(i, 0, b); err != nil {
		return 0, err
	}
	t.free = append(t.free[:k], t.free[k+1:]...)
	t.slots[name] = i
	return i, nil
}

// setMeta writes slot i's meta, and its length, in one pwrite.
func (t *table) setMeta(i int, meta []byte) error {
	if len(meta) > MaxMeta {
		return fmt.Errorf("a meta of %d bytes: at most %d", len(meta), MaxMeta)
	}
	b := make([]byte, offMeta+len(meta)-offMetaLen)
	binary.NativeEndian.PutUint16(b, uint16(len(meta)))
	copy(b[offName-offMetaLen:], t.slot(i)[offName:offMeta])
	copy(b[offMeta-offMetaLen:], meta)
	return t.pwrite(i, offMetaLen, b)
}

// clear zeroes slot i: a free slot.
func (t *table) clear(i int) error {
	return t.pwrite(i, 0, make([]byte, slotSize))
}

// remove frees name's slot, if it has one.
func (t *table) remove(name string) {
	i, ok := t.slots[name]
	if !ok {
		return
	}
	delete(t.slots, name)
	t.clear(i)
	t.free = append(t.free, i)
}

// close unmaps the table and closes its file.
func (t *table) close() error {
	var errs []error
	for _, c := range t.chunks {
		errs = append(errs, unix.Munmap(c))
	}
	t.chunks = nil
	if t.fd >= 0 {
		errs = append(errs, unix.Close(t.fd))
		t.fd = -1
	}
	return errors.Join(errs...)
}
