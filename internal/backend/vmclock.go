package backend

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/vmclockabi"
)

// The vmclock backend. VMClock (Linux 6.13+, ACPI AMZNC10C, drivers/ptp/
// ptp_vmclock.c) maps a page the hypervisor writes: struct vmclock_abi of
// include/uapi/linux/vmclock-abi.h, little endian, under a seqlock. Its
// vm_generation_counter grows when the VM is restored from a snapshot
// (Firecracker 1.15+ adds one per restore). Linux 7.0 gives the device
// poll(): POLLIN whenever seq_count differs from what this file last read(),
// if the device announces notifications; otherwise POLLHUP.

// Offsets and bits of struct vmclock_abi.
const (
	vmclockMagic   = vmclockabi.Magic
	offMagic       = vmclockabi.OffMagic
	offSize        = vmclockabi.OffSize     // size of the structure the hypervisor fills
	offSeqCount    = vmclockabi.OffSeqCount // odd while the hypervisor updates
	offFlags       = vmclockabi.OffFlags
	offGeneration  = vmclockabi.OffVMGenerationCount
	vmclockMinSize = vmclockabi.StructSize

	flagGenerationPresent   = vmclockabi.FlagVMGenCounterPresent
	flagNotificationPresent = vmclockabi.FlagNotificationPresent
)

// vmclockMaxWait bounds how long a read waits for the hypervisor to finish
// an update (seq_count odd); the kernel's own read() gives up after 100 ms.
const vmclockMaxWait = 100 * time.Millisecond

var (
	errVMClockBadMagic       = errors.New("not a VMClock page (bad magic)")
	errVMClockInProgress     = errors.New("VMClock update still in progress")
	errVMClockNoGeneration   = errors.New("VMClock has no VM generation counter (flag bit 8 clear)")
	errVMClockNotEventDriven = errors.New("VMClock cannot be event-driven")
)

// hostLittleEndian tells whether atomic loads of the page need byte swaps:
// the page is little endian whatever the guest.
var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

type vmclock struct {
	log      *slog.Logger
	path     string
	interval time.Duration // > 0: periodic checks when the device cannot notify
	maxWait  time.Duration

	mark atomic.Pointer[vmclockMark] // what Mark returns; nil: nothing accounted
}

// vmclockMark is the vmclock backend's Mark: the vm_generation_counter it
// accounted for.
type vmclockMark struct {
	Generation uint64 `json:"vm_generation_counter"`
}

func newVMClock(opts Options) *vmclock {
	opts.setDefaults()
	return &vmclock{
		log:      opts.Logger.With("backend", NameVMClock),
		path:     opts.VMClockPath,
		interval: opts.VMClockPoll,
		maxWait:  vmclockMaxWait,
	}
}

func (v *vmclock) Name() string { return NameVMClock }

// Mark returns the vm_generation_counter accounted for.
func (v *vmclock) Mark() json.RawMessage {
	m := v.mark.Load()
	if m == nil {
		return nil
	}
	b, _ := json.Marshal(m)
	return b
}

// detectVMClock tells why the vmclock backend cannot run here (nil: it can).
// Auto mode takes it only if it can be event-driven, or if periodic checks
// were asked for.
func detectVMClock(opts Options) error {
	dev, err := openVMClockDev(opts.VMClockPath, vmclockMaxWait)
	if err != nil {
		return err
	}
	defer dev.close()
	_ = dev.ack() // else poll() reports POLLIN at once after open
	st, err := dev.snapshot()
	if err != nil {
		return err
	}
	if !st.hasGeneration() {
		return errVMClockNoGeneration
	}
	if err := dev.canNotify(st); err != nil {
		if opts.VMClockPoll > 0 {
			return nil
		}
		return fmt.Errorf("%w: %w; periodic checks are off (--vmclock-poll)", errVMClockNotEventDriven, err)
	}
	return nil
}

// Run compares the vm_generation_counter with the one the previous daemon
// of the boot accounted for (look's Mark), and bumps once if it differs:
// the VM was restored while no daemon watched (without a Mark, and unless
// this is the boot's first daemon, it cannot tell, and bumps). Then it
// bumps each time the counter changes, waiting in poll() for the device's
// notifications, or checking every interval if that was asked for and the
// device cannot notify. The counter changes to a new value, not
// necessarily a higher one: any difference is a change.
func (v *vmclock) Run(ctx context.Context, look Lookback, events chan<- Event) error {
	return v.run(ctx, look, sender(ctx, events))
}

func (v *vmclock) run(ctx context.Context, look Lookback, bump func(Event) error) error {
	dev, err := openVMClockDev(v.path, v.maxWait)
	if err != nil {
		return err
	}
	defer dev.close()
	// read() first, then the baseline: an update after the read makes
	// poll() report, so nothing falls between the two.
	if err := dev.ack(); err != nil {
		v.log.Warn("read", "err", err)
	}
	st, err := dev.snapshot()
	if err != nil {
		return err
	}
	if !st.hasGeneration() {
		return fmt.Errorf("%s: %w", v.path, errVMClockNoGeneration)
	}
	w := &vmclockWatch{dev: dev, last: st.gen, log: v.log, mark: &v.mark}
	v.lookBack(look, st.gen, w, bump)
	nerr := dev.canNotify(st)
	if nerr == nil {
		v.log.Info("watching", "path", v.path, "generation", st.gen, "mode", "notifications")
		return w.runEvents(ctx, bump)
	}
	if v.interval <= 0 {
		return fmt.Errorf("%s: %w: %w; periodic checks are off (--vmclock-poll)", v.path, errVMClockNotEventDriven, nerr)
	}
	v.log.Warn("cannot be event-driven; checking periodically", "path", v.path, "why", nerr, "interval", v.interval)
	t := time.NewTicker(v.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := w.check(bump); err != nil && !errors.Is(err, errVMClockInProgress) {
				return err
			}
		}
	}
}

// lookBack bumps once if the counter gen is not the one the previous
// daemon accounted for, and takes gen as accounted for.
func (v *vmclock) lookBack(look Lookback, gen uint64, w *vmclockWatch, bump func(Event) error) {
	var m vmclockMark
	why := ""
	switch {
	case look.Mark != nil && json.Unmarshal(look.Mark, &m) == nil:
		if m.Generation != gen {
			why = fmt.Sprintf("vm_generation_counter %d, the previous daemon's %d", gen, m.Generation)
		}
	case look.Mark != nil:
		why = "the previous daemon's mark cannot be read"
	case !look.First:
		why = "a daemon ran before in this boot, and left no mark of the counter"
	}
	if why == "" {
		w.account(gen)
		bump(Event{Backend: NameVMClock, Mark: w.markOf(gen), MarkOnly: true})
		return
	}
	v.log.Info("VM generation change while no daemon watched", "why", why)
	if err := bump(Event{Backend: NameVMClock, Mark: w.markOf(gen)}); err != nil {
		v.log.Error("bump failed", "err", err)
		return
	}
	w.account(gen)
}

// vmclockDev is the device (or a file laid out like it), mapped read-only.
type vmclockDev struct {
	path    string
	fd      int
	mem     []byte
	maxWait time.Duration
}

func openVMClockDev(path string, maxWait time.Duration) (*vmclockDev, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vmclock: open %s: %w", path, err)
	}
	// The driver maps exactly one page, read-only, at offset 0.
	mem, err := unix.Mmap(fd, 0, os.Getpagesize(), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vmclock: mmap %s: %w", path, err)
	}
	return &vmclockDev{path: path, fd: fd, mem: mem, maxWait: maxWait}, nil
}

func (d *vmclockDev) close() {
	unix.Munmap(d.mem)
	unix.Close(d.fd)
}

// load32 and load64 read a little-endian field of the page with one atomic
// load, as the hypervisor may write it at any time.
func (d *vmclockDev) load32(off int) uint32 {
	v := atomic.LoadUint32((*uint32)(unsafe.Pointer(&d.mem[off])))
	if !hostLittleEndian {
		v = bits.ReverseBytes32(v)
	}
	return v
}

func (d *vmclockDev) load64(off int) uint64 {
	v := atomic.LoadUint64((*uint64)(unsafe.Pointer(&d.mem[off])))
	if !hostLittleEndian {
		v = bits.ReverseBytes64(v)
	}
	return v
}

// vmclockState is a consistent reading of the fields we use.
type vmclockState struct {
	seq   uint32
	size  uint32
	flags uint64
	gen   uint64
}

func (s vmclockState) hasGeneration() bool {
	return s.flags&flagGenerationPresent != 0 && s.size >= vmclockMinSize
}

// snapshot reads the page under its seqlock: seq_count even before, the
// fields, seq_count unchanged after; else retry, for at most maxWait (a
// hypervisor stuck mid-update must not hang the daemon).
func (d *vmclockDev) snapshot() (vmclockState, error) {
	if m := d.load32(offMagic); m != vmclockMagic {
		return vmclockState{}, fmt.Errorf("%s: %w: %#x", d.path, errVMClockBadMagic, m)
	}
	deadline := time.Now().Add(d.maxWait)
	for spins := 0; ; spins++ {
		seq := d.load32(offSeqCount)
		if seq&1 == 0 {
			st := vmclockState{
				seq:   seq,
				size:  d.load32(offSize),
				flags: d.load64(offFlags),
				gen:   d.load64(offGeneration),
			}
			// Go's atomics are sequentially consistent: these loads are
			// not reordered with the seq_count loads around them.
			if d.load32(offSeqCount) == seq {
				return st, nil
			}
		}
		if time.Now().After(deadline) {
			return vmclockState{}, fmt.Errorf("%s: %w (seq_count %d after %v)", d.path, errVMClockInProgress, seq, d.maxWait)
		}
		if spins < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(50 * time.Microsecond)
		}
	}
}

// ack read()s the device: the driver remembers, per open file, the
// seq_count of the last read and reports POLLIN until a read sees the new
// one.
func (d *vmclockDev) ack() error {
	var buf [vmclockMinSize]byte
	for {
		_, err := unix.Pread(d.fd, buf[:], 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("vmclock: read %s: %w", d.path, err)
		}
		return nil
	}
}

// canNotify tells whether poll() will wake us on updates: the device must
// announce notifications and the kernel must implement poll() for it. A
// kernel without it (before 7.0) answers poll() with the default mask,
// which includes POLLOUT, at once and forever: waiting on that would spin.
// Call it after ack, so that POLLIN from before does not count.
func (d *vmclockDev) canNotify(st vmclockState) error {
	if st.flags&flagNotificationPresent == 0 {
		return errors.New("the device announces no notifications (flag bit 9 clear)")
	}
	// Ask for POLLOUT too, or poll() would mask it out of the answer.
	fds := []unix.PollFd{{Fd: int32(d.fd), Events: unix.POLLIN | unix.POLLOUT}}
	for {
		_, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		break
	}
	switch r := fds[0].Revents; {
	case r&unix.POLLOUT != 0:
		return errors.New("the kernel has no poll() for VMClock (Linux 7.0+ has)")
	case r&unix.POLLHUP != 0:
		return errors.New("the kernel reports no notification support (POLLHUP)")
	case r&(unix.POLLERR|unix.POLLNVAL) != 0:
		return fmt.Errorf("poll: revents %#x", r)
	}
	return nil
}

// vmclockWatch compares the generation with the last one seen.
type vmclockWatch struct {
	dev  *vmclockDev
	last uint64
	log  *slog.Logger
	mark *atomic.Pointer[vmclockMark]
}

// account records gen as accounted for: the backend's Mark.
func (w *vmclockWatch) account(gen uint64) {
	w.last = gen
	w.mark.Store(&vmclockMark{Generation: gen})
}

func (w *vmclockWatch) markOf(gen uint64) json.RawMessage {
	b, _ := json.Marshal(vmclockMark{Generation: gen})
	return b
}

// check bumps once if vm_generation_counter moved since the last check.
func (w *vmclockWatch) check(bump func(Event) error) error {
	st, err := w.dev.snapshot()
	if err != nil {
		if errors.Is(err, errVMClockInProgress) {
			w.log.Debug("update in progress; will look again", "err", err)
		}
		return err
	}
	if !st.hasGeneration() {
		// The hypervisor stopped providing the counter (a migration to
		// one that does not, say): whatever changed then went unseen.
		// Bump once, as for a change, before this backend ends.
		w.log.Warn("the device no longer provides vm_generation_counter: bumping once in case the VM was restored")
		if err := bump(Event{Backend: NameVMClock, Mark: w.markOf(w.last)}); err != nil {
			w.log.Error("bump failed", "err", err)
		}
		return fmt.Errorf("%s: %w", w.dev.path, errVMClockNoGeneration)
	}
	if st.gen == w.last {
		return nil
	}
	w.log.Info("VM generation change", "from", w.last, "to", st.gen)
	if err := bump(Event{Backend: NameVMClock, Mark: w.markOf(st.gen)}); err != nil {
		w.log.Error("bump failed", "err", err)
		return nil
	}
	w.account(st.gen)
	return nil
}

// runEvents waits in poll() on the device and an eventfd that ctx's end
// writes to, and checks the generation each time the device reports.
func (w *vmclockWatch) runEvents(ctx context.Context, bump func(Event) error) error {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("vmclock: eventfd: %w", err)
	}
	// The lock keeps the wake-up from writing to efd after it was closed
	// (and its number possibly reused).
	var mu sync.Mutex
	closed := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !closed {
			var one [8]byte
			binary.NativeEndian.PutUint64(one[:], 1)
			unix.Write(efd, one[:])
		}
	})
	defer func() {
		stop()
		mu.Lock()
		closed = true
		unix.Close(efd)
		mu.Unlock()
	}()

	fds := []unix.PollFd{{Fd: int32(w.dev.fd), Events: unix.POLLIN}, {Fd: int32(efd), Events: unix.POLLIN}}
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("vmclock: poll: %w", err)
		}
		if fds[1].Revents != 0 || ctx.Err() != nil {
			return nil
		}
		if err := w.revents(fds[0].Revents, bump); err != nil {
			return err
		}
	}
}

// revents handles what poll() reported for the device: a notification is
// read and checked; a hang-up or an error ends the watch, after a last check
// so that a change that came with it is not missed.
func (w *vmclockWatch) revents(r int16, bump func(Event) error) error {
	if r&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
		if err := w.check(bump); err != nil && !errors.Is(err, errVMClockInProgress) {
			return err
		}
		return fmt.Errorf("vmclock: %s: notifications stopped (poll revents %#x)", w.dev.path, r)
	}
	if r&unix.POLLIN == 0 {
		return nil
	}
	if err := w.dev.ack(); err != nil {
		w.log.Warn("read", "err", err)
	}
	if err := w.check(bump); err != nil && !errors.Is(err, errVMClockInProgress) {
		return err
	}
	return nil
}
