package page

import (
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/vmclockabi"
)

// VMClockFile is the VMClock page's name in a scope's directory, beside the
// generation page.
const VMClockFile = "vmclock"

// VMClock is the daemon's read-write mapping of a VMClock page: a struct
// vmclock_abi (include/uapi/linux/vmclock-abi.h) whose vm_generation_counter
// is the scope's generation, so that a reader written for Linux's
// /dev/vmclock0 sees a container's restore as it sees a Firecracker VM's.
//
// The page holds no clock: counter_id is VMCLOCK_COUNTER_INVALID,
// clock_status VMCLOCK_STATUS_UNKNOWN, the clock fields 0, and the only
// flag is VMCLOCK_FLAG_VM_GEN_COUNTER_PRESENT. Notifications are not
// announced: poll() on a plain file always reports it readable.
// disruption_marker moves with the counter, as the header asks of a
// snapshot load and as Firecracker does.
type VMClock struct {
	f *os.File

	mu  sync.Mutex // one writer at a time, as the seqlock needs; Close waits
	mem []byte     // nil once closed
}

// CreateVMClockAt opens or creates the VMClock page name in the directory
// dirfd, as CreateAt does the generation page (no link followed, owned by
// this user, locked, mapped), and lays it out: magic, size, version and
// flags are written, the clock fields cleared. A page of an earlier run
// keeps its counter and its seq_count, and an update that a crash left
// half done (seq_count odd) is finished. Any other content counts as a new
// page: counter 0.
func CreateVMClockAt(dirfd int, name, path string) (*VMClock, error) {
	f, mem, err := createAt(dirfd, name, path)
	if err != nil {
		return nil, err
	}
	v := &VMClock{f: f, mem: mem}
	v.layOut()
	return v, nil
}

// layOut writes every field under the seqlock, the counter (and the
// disruption marker) as the page had it if it was a VMClock page, else 0;
// then the magic, so that a reader that checks it finds the rest in place.
func (v *VMClock) layOut() {
	var gen uint64
	if vmclockabi.Load32(v.mem, vmclockabi.OffMagic) == vmclockabi.Magic {
		gen = vmclockabi.Load64(v.mem, vmclockabi.OffVMGenerationCount)
	}
	seq := v.begin()
	// Everything after seq_count is protected by it: the clock fields and
	// the rest of the page are cleared. The constant fields before it hold
	// the same values in every run.
	for off := vmclockabi.OffDisruptionMarker; off < Size; off += 8 {
		vmclockabi.Store64(v.mem, off, 0)
	}
	vmclockabi.Store32(v.mem, vmclockabi.OffSize, Size)
	// version (u16), counter_id and time_type (u8 each, time_type
	// VMCLOCK_TIME_UTC: 0) in one u32.
	vmclockabi.Store32(v.mem, vmclockabi.OffVersion, vmclockabi.Version|vmclockabi.CounterInvalid<<16)
	vmclockabi.Store64(v.mem, vmclockabi.OffFlags, vmclockabi.FlagVMGenCounterPresent)
	vmclockabi.Store64(v.mem, vmclockabi.OffDisruptionMarker, gen)
	vmclockabi.Store64(v.mem, vmclockabi.OffVMGenerationCount, gen)
	v.end(seq)
	vmclockabi.Store32(v.mem, vmclockabi.OffMagic, vmclockabi.Magic)
}

// begin makes seq_count odd (it already is after a crash mid-update) and
// returns it; end makes it even again, one past.
func (v *VMClock) begin() uint32 {
	seq := vmclockabi.Load32(v.mem, vmclockabi.OffSeqCount)
	if seq&1 == 0 {
		seq++
		vmclockabi.Store32(v.mem, vmclockabi.OffSeqCount, seq)
	}
	return seq
}

func (v *VMClock) end(seq uint32) {
	vmclockabi.Store32(v.mem, vmclockabi.OffSeqCount, seq+1)
}

// Load returns the counter stored in the page: the generation it was last
// given, 0 for a page that was new when opened.
func (v *VMClock) Load() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mem == nil {
		return 0
	}
	return vmclockabi.Load64(v.mem, vmclockabi.OffVMGenerationCount)
}

// Store publishes gen as vm_generation_counter (and disruption_marker), as
// a hypervisor does: seq_count odd, the fields, seq_count even. Each is one
// atomic store, so they are seen in that order. A closed page stores
// nothing.
func (v *VMClock) Store(gen uint32) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mem == nil {
		return
	}
	seq := v.begin()
	vmclockabi.Store64(v.mem, vmclockabi.OffDisruptionMarker, uint64(gen))
	vmclockabi.Store64(v.mem, vmclockabi.OffVMGenerationCount, uint64(gen))
	v.end(seq)
}

// Close unmaps the page and drops the lock. The file keeps its value.
func (v *VMClock) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mem == nil {
		return nil
	}
	err := unix.Munmap(v.mem)
	v.mem = nil
	return errors.Join(err, v.f.Close())
}
