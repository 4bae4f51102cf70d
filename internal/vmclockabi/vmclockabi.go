// Package vmclockabi is the VMClock page's layout: struct vmclock_abi of
// Linux's include/uapi/linux/vmclock-abi.h, which a hypervisor fills
// (Firecracker 1.15+, QEMU's vmclock device) and the kernel's VMClock
// driver maps read-only at /dev/vmclockN. genid reads it (the vmclock
// backend) and writes a page of the same layout for each scope.
//
// Every field is little endian. The constant fields (magic, size, version,
// counter_id, time_type) come first; the others are read under the seqlock
// seq_count: a writer makes it odd, writes, then makes it even again, and a
// reader keeps a reading only if seq_count was even before it and unchanged
// after it.
package vmclockabi

import (
	"encoding/binary"
	"math/bits"
	"sync/atomic"
	"unsafe"
)

// Magic is the value of the magic field, "VCLK" read as a little-endian u32.
const Magic = 0x4b4c4356

// Version is the layout's version, the only one there is.
const Version = 1

// Offsets of the fields, in bytes from the start of the page, and their
// sizes.
const (
	OffMagic             = 0   // u32, constant
	OffSize              = 4   // u32, constant: size of the region holding the structure
	OffVersion           = 8   // u16, constant
	OffCounterID         = 10  // u8, constant: which CPU counter the clock fields are for
	OffTimeType          = 11  // u8, constant
	OffSeqCount          = 12  // u32: odd while a writer updates what follows
	OffDisruptionMarker  = 16  // u64: changes when the CPU counter is disrupted
	OffFlags             = 24  // u64
	OffClockStatus       = 34  // u8
	OffVMGenerationCount = 104 // u64: vm_generation_counter
	// StructSize is sizeof(struct vmclock_abi): vm_generation_counter is its
	// last field.
	StructSize = OffVMGenerationCount + 8
)

// Flags: the bits of the flags field genid uses.
const (
	// FlagVMGenCounterPresent (VMCLOCK_FLAG_VM_GEN_COUNTER_PRESENT): the
	// vm_generation_counter field is provided, and changes to a new value
	// each time the guest is loaded from a snapshot.
	FlagVMGenCounterPresent = 1 << 8
	// FlagNotificationPresent (VMCLOCK_FLAG_NOTIFICATION_PRESENT): the
	// device notifies the guest of each update; the kernel's driver then
	// wakes poll() on /dev/vmclockN (Linux 7.0+).
	FlagNotificationPresent = 1 << 9
)

// Values of counter_id and clock_status for a page without clock data.
const (
	CounterInvalid = 0xff // VMCLOCK_COUNTER_INVALID: no counter, no time
	StatusUnknown  = 0    // VMCLOCK_STATUS_UNKNOWN
)

// littleEndian tells whether the fields need byte swaps on this machine.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// Load32 reads the u32 field at off of a mapped page with one atomic load.
// off must be a multiple of 4, and mem start on a page.
func Load32(mem []byte, off int) uint32 {
	v := atomic.LoadUint32((*uint32)(unsafe.Pointer(&mem[off])))
	if !littleEndian {
		v = bits.ReverseBytes32(v)
	}
	return v
}

// Load64 reads the u64 field at off (a multiple of 8) with one atomic load.
func Load64(mem []byte, off int) uint64 {
	v := atomic.LoadUint64((*uint64)(unsafe.Pointer(&mem[off])))
	if !littleEndian {
		v = bits.ReverseBytes64(v)
	}
	return v
}

// Store32 writes the u32 field at off with one atomic store. Go's atomic
// stores are sequentially consistent: stores made through these functions
// are seen by other processes in program order, which the seqlock needs.
func Store32(mem []byte, off int, v uint32) {
	if !littleEndian {
		v = bits.ReverseBytes32(v)
	}
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&mem[off])), v)
}

// Store64 writes the u64 field at off with one atomic store.
func Store64(mem []byte, off int, v uint64) {
	if !littleEndian {
		v = bits.ReverseBytes64(v)
	}
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&mem[off])), v)
}
