package vmclockabi

import (
	"encoding/binary"
	"testing"
	"unsafe"
)

// abi is struct vmclock_abi field by field, as include/uapi/linux/
// vmclock-abi.h declares it (natural alignment, no packing): Go lays it out
// the way a C compiler does, so its offsets check the constants. Fields the
// constants do not name are blank.
type abi struct {
	magic               uint32
	size                uint32
	version             uint16
	counterID           uint8
	timeType            uint8
	seqCount            uint32
	disruptionMarker    uint64
	flags               uint64
	_                   [2]uint8 // pad
	clockStatus         uint8
	_                   uint8  // leapSecondSmearingHint
	_                   uint16 // taiOffsetSec
	_                   uint8  // leapIndicator
	_                   uint8  // counterPeriodShift
	_                   uint64 // counterValue
	_                   uint64 // counterPeriodFracSec
	_                   uint64 // counterPeriodEsterror
	_                   uint64 // counterPeriodMaxerror
	_                   uint64 // timeSec
	_                   uint64 // timeFracSec
	_                   uint64 // timeEsterrorNanosec
	_                   uint64 // timeMaxerrorNanosec
	vmGenerationCounter uint64
}

func TestLayout(t *testing.T) {
	var a abi
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"magic", unsafe.Offsetof(a.magic), OffMagic},
		{"size", unsafe.Offsetof(a.size), OffSize},
		{"version", unsafe.Offsetof(a.version), OffVersion},
		{"counter_id", unsafe.Offsetof(a.counterID), OffCounterID},
		{"time_type", unsafe.Offsetof(a.timeType), OffTimeType},
		{"seq_count", unsafe.Offsetof(a.seqCount), OffSeqCount},
		{"disruption_marker", unsafe.Offsetof(a.disruptionMarker), OffDisruptionMarker},
		{"flags", unsafe.Offsetof(a.flags), OffFlags},
		{"clock_status", unsafe.Offsetof(a.clockStatus), OffClockStatus},
		{"vm_generation_counter", unsafe.Offsetof(a.vmGenerationCounter), OffVMGenerationCount},
		{"sizeof", unsafe.Sizeof(a), StructSize},
	} {
		if c.got != c.want {
			t.Errorf("%s at %d, the constant says %d", c.name, c.got, c.want)
		}
	}
	if string(binary.LittleEndian.AppendUint32(nil, Magic)) != "VCLK" {
		t.Errorf("magic %#x is not \"VCLK\"", Magic)
	}
}

// The accessors read and write little endian whatever the machine.
func TestAccessors(t *testing.T) {
	mem := make([]byte, 4096)
	Store32(mem, OffSeqCount, 0x01020304)
	Store64(mem, OffVMGenerationCount, 0x0102030405060708)
	if got := binary.LittleEndian.Uint32(mem[OffSeqCount:]); got != 0x01020304 {
		t.Errorf("Store32 wrote %#x", got)
	}
	if got := binary.LittleEndian.Uint64(mem[OffVMGenerationCount:]); got != 0x0102030405060708 {
		t.Errorf("Store64 wrote %#x", got)
	}
	binary.LittleEndian.PutUint32(mem[OffMagic:], Magic)
	binary.LittleEndian.PutUint64(mem[OffFlags:], 0xa0b0c0d0e0f00010)
	if got := Load32(mem, OffMagic); got != Magic {
		t.Errorf("Load32 read %#x", got)
	}
	if got := Load64(mem, OffFlags); got != 0xa0b0c0d0e0f00010 {
		t.Errorf("Load64 read %#x", got)
	}
}
