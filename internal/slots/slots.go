// Package slots keeps named records of a few hundred bytes in one file,
// a fixed-size slot each, that the daemon maps: a u32 that is stored and
// loaded through the mapping, as a page's generation is (no system call,
// and it outlives the daemon), and a name and data written with one
// pwrite each, which a crash of the daemon does not cut (only the
// machine's). One file of slots, rather than a file per record, costs the
// machine a page per eight records, not a page, an inode and a mapping
// each.
//
// A slot (Size bytes, native byte order, never across a page):
//
//	0   u32   the value; 0 in a free slot
//	4   u8    the name's length; 0: a free slot
//	5   u8    0
//	6   u16   the data's length
//	8   [64]  the name
//	72  [...] the data
//
// A slot is freed by zeroing it whole. A File is not safe for concurrent
// use, except that Load and Store may run beside each other.
package slots

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// Size is a slot's size.
	Size = 512
	// MaxName is the longest name a slot holds, in bytes.
	MaxName = 64
	// MaxData is the most data a slot holds, in bytes.
	MaxData = Size - offData

	chunkSlots = 64 // slots mapped at a time: the file grows by as many
	chunkSize  = Size * chunkSlots
	offNameLen = 4
	offDataLen = 6
	offName    = 8
	offData    = offName + MaxName
)

// File is an open file of slots.
type File struct {
	fd     int
	chunks [][]byte       // each chunkSlots slots, mapped
	index  map[string]int // by name, the slot of each record
	free   []int          // free slots below the end
}

// Open opens (creating it, mode 0600) the file of slots name in dirfd,
// without following a link, refuses one that is not a regular file of
// this process's user, maps it and reads its records. A slot that cannot
// be a record is freed; of two slots of one name, the one with the higher
// value is kept. path names the file in errors.
func Open(dirfd int, name, path string) (*File, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	t := &File{fd: fd, index: map[string]int{}}
	fail := func(err error) (*File, error) {
		t.Close()
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
		// Cut short (or not a whole number of chunks): grown to them,
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
			j, dup := t.index[name]
			if !dup {
				t.index[name] = i
				continue
			}
			// Not written by this package: keep one, at the higher value.
			if t.Load(i) > t.Load(j) {
				t.Store(j, t.Load(i))
			}
			t.clear(i)
			t.free = append(t.free, i)
		}
	}
	return t, nil
}

// mapChunk maps the next chunk of the file, which holds it.
func (t *File) mapChunk() error {
	mem, err := unix.Mmap(t.fd, int64(len(t.chunks))*chunkSize, chunkSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	t.chunks = append(t.chunks, mem)
	return nil
}

// slot returns slot i's bytes.
func (t *File) slot(i int) []byte {
	c := t.chunks[i/chunkSlots]
	off := i % chunkSlots * Size
	return c[off : off+Size : off+Size]
}

// Load returns slot i's value.
func (t *File) Load(i int) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&t.slot(i)[0])))
}

// Store sets slot i's value: one atomic store to the shared mapping.
func (t *File) Store(i int, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&t.slot(i)[0])), v)
}

// name returns slot i's name ("" in a free slot); !ok if the slot is
// neither free nor a record.
func (t *File) name(i int) (string, bool) {
	b := t.slot(i)
	n := int(b[offNameLen])
	if n == 0 {
		return "", true
	}
	if n > MaxName || b[offNameLen+1] != 0 || t.dataLen(i) > MaxData {
		return "", false
	}
	return string(b[offName : offName+n]), true
}

func (t *File) dataLen(i int) int {
	return int(binary.NativeEndian.Uint16(t.slot(i)[offDataLen:]))
}

// Data returns a copy of slot i's data, nil if it has none.
func (t *File) Data(i int) []byte {
	n := t.dataLen(i)
	if n == 0 {
		return nil
	}
	return append([]byte(nil), t.slot(i)[offData:offData+n]...)
}

// Lookup returns the slot of name's record.
func (t *File) Lookup(name string) (int, bool) {
	i, ok := t.index[name]
	return i, ok
}

// Names returns the names of the records, with their slots.
func (t *File) Names() map[string]int {
	out := make(map[string]int, len(t.index))
	for n, i := range t.index {
		out[n] = i
	}
	return out
}

// Len is the number of records.
func (t *File) Len() int { return len(t.index) }

// pwrite writes b at offset off of slot i, in one system call.
func (t *File) pwrite(i, off int, b []byte) error {
	n, err := unix.Pwrite(t.fd, b, int64(i)*Size+int64(off))
	if err == nil && n != len(b) {
		err = fmt.Errorf("slot %d: short write", i)
	}
	return err
}

// Add makes a record of name, which has none, at value 0 and without
// data, in a free slot (the file grown if none is), and returns the slot.
func (t *File) Add(name string) (int, error) {
	if name == "" || len(name) > MaxName {
		return 0, fmt.Errorf("a name of %d bytes", len(name))
	}
	if _, ok := t.index[name]; ok {
		return 0, fmt.Errorf("%s: a record already", name)
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
	t.index[name] = i
	return i, nil
}

// SetData writes slot i's data, and its length, in one pwrite.
func (t *File) SetData(i int, data []byte) error {
	if len(data) > MaxData {
		return fmt.Errorf("%d bytes of data: at most %d", len(data), MaxData)
	}
	b := make([]byte, offData+len(data)-offDataLen)
	binary.NativeEndian.PutUint16(b, uint16(len(data)))
	copy(b[offName-offDataLen:], t.slot(i)[offName:offData])
	copy(b[offData-offDataLen:], data)
	return t.pwrite(i, offDataLen, b)
}

// clear zeroes slot i: a free slot.
func (t *File) clear(i int) error {
	return t.pwrite(i, 0, make([]byte, Size))
}

// Remove frees name's slot, if it has one.
func (t *File) Remove(name string) {
	i, ok := t.index[name]
	if !ok {
		return
	}
	delete(t.index, name)
	t.clear(i)
	t.free = append(t.free, i)
}

// Close unmaps the file and closes it.
func (t *File) Close() error {
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
