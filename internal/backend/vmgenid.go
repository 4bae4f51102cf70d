package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The vmgenid backend. The kernel's vmgenid driver (ACPI VMGENCTR /
// VM_GEN_COUNTER, devicetree microsoft,vmgenid) exposes neither the 16-byte
// ID nor a counter to user space; what it does give, on each change of the
// ID, since 5.18, is the line add_vmfork_randomness() logs: "random: crng
// reseeded due to virtual machine fork" (only once the RNG is ready), which
// /dev/kmsg delivers with its sequence number. (6.8 also sent a uevent,
// NEW_VMGENID=1; it was reverted in 6.9 and in 6.8's stable releases, so no
// kernel that is still maintained sends it, and it is not watched.)
//
// The kernel log is also what a daemon starting later reads to look back:
// the records after the sequence number that the previous daemon of the
// boot accounted for (its Mark) tell whether the VM forked meanwhile.

// vmforkMessage is what add_vmfork_randomness() logs on a VM generation
// change: the whole message, with the "random: " of the driver's pr_fmt.
// Only the whole message counts: the kernel logs many lines that quote what
// a user gave it (a mount option, a device name), so a line that merely
// contains these words can be had by anyone.
const vmforkMessage = "random: crng reseeded due to virtual machine fork"

// vmgenidDriverDirs are the sysfs driver directories (relative to /sys) the
// vmgenid driver appears in: an ACPI driver from 5.18 to 6.9, a platform
// driver since 6.10 (when devicetree support came). A device bound to it is a
// symlink in that directory.
var vmgenidDriverDirs = []string{
	"bus/platform/drivers/vmgenid",
	"bus/acpi/drivers/vmgenid",
}

type vmgenid struct {
	log      *slog.Logger
	sysDir   string
	kmsgPath string
	// open opens the kernel log at its first record; tests replace it.
	open func(path string) (io.ReadCloser, error)
	// lostEvery is the package's lostEvery, shorter in tests.
	lostEvery time.Duration

	mark atomic.Pointer[kmsgMark] // what Mark returns; nil: nothing accounted
}

// kmsgMark is the vmgenid backend's Mark: the sequence number of the last
// kernel log record it accounted for.
type kmsgMark struct {
	Seq uint64 `json:"kmsg_seq"`
}

func newVMGenID(opts Options) *vmgenid {
	opts.setDefaults()
	return &vmgenid{
		log:       opts.Logger.With("backend", NameVMGenID),
		sysDir:    opts.SysDir,
		kmsgPath:  opts.KmsgPath,
		open:      openKmsg,
		lostEvery: lostEvery,
	}
}

func (v *vmgenid) Name() string { return NameVMGenID }

// Mark returns the last kernel log record accounted for.
func (v *vmgenid) Mark() json.RawMessage {
	m := v.mark.Load()
	if m == nil {
		return nil
	}
	b, _ := json.Marshal(m)
	return b
}

// detectVMGenID tells why the vmgenid backend cannot run here (nil: it can).
// It needs a device bound to the driver, not just the driver: a kernel built
// with CONFIG_VMGENID=y has the driver directory on bare metal too.
func detectVMGenID(opts Options) error {
	dev, err := boundVMGenIDDevice(opts.SysDir)
	if err != nil {
		return err
	}
	f, err := os.Open(opts.KmsgPath)
	if err != nil {
		return fmt.Errorf("vmgenid device %s present, but the kernel log is not readable: %w", dev, err)
	}
	f.Close()
	return nil
}

// boundVMGenIDDevice returns the sysfs path of a device bound to the vmgenid
// driver.
func boundVMGenIDDevice(sysDir string) (string, error) {
	var checked []string
	for _, rel := range vmgenidDriverDirs {
		dir := filepath.Join(sysDir, rel)
		checked = append(checked, dir)
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			// Bound devices are symlinks; "module" is the one symlink that is not.
			if e.Type()&os.ModeSymlink != 0 && e.Name() != "module" {
				return filepath.Join(dir, e.Name()), nil
			}
		}
	}
	return "", fmt.Errorf("no device bound to the vmgenid driver (looked in %v)", checked)
}

// item is what the kernel log reader hands the loop.
type item struct {
	kind itemKind
	seq  int64 // of a record; -1 if its header has none
	fork bool  // the record is the vmfork line
}

type itemKind int

const (
	itemRecord   itemKind = iota
	itemLost              // records overwritten before they were read
	itemCaughtUp          // every record logged so far was read
)

// Run reads the kernel log from its first record: the records up to the
// Mark of look were accounted for by the previous daemon; those after it,
// up to the end of the log, are what happened while no daemon watched, and
// bump once if they hold the vmfork line or records were lost (Lookback).
// From then on it bumps once per vmfork line, until ctx ends. It needs a
// device bound to the driver: the kernel log exists everywhere, and without
// the device Run would wait for ever, the backend listed as active with
// nothing to watch.
func (v *vmgenid) Run(ctx context.Context, look Lookback, events chan<- Event) error {
	return v.run(ctx, look, sender(ctx, events))
}

func (v *vmgenid) run(ctx context.Context, look Lookback, bump func(Event) error) error {
	if _, err := boundVMGenIDDevice(v.sysDir); err != nil {
		return err
	}
	kmsg, err := v.open(v.kmsgPath)
	if err != nil {
		return err
	}
	v.log.Info("watching", "kmsg", v.kmsgPath)

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel() // closes the file (below), so the reader returns
		wg.Wait()
	}()
	// Closing the file is what wakes the reader, which sleeps in the
	// runtime's poller.
	context.AfterFunc(ctx, func() { kmsg.Close() })

	items := make(chan item)
	send := func(it item) {
		select {
		case items <- it:
		case <-ctx.Done():
		}
	}
	fatal := make(chan error, 1)
	wg.Go(func() {
		err := readKmsg(kmsg, func(rec []byte) {
			send(item{kind: itemRecord, seq: recordSeq(rec), fork: isVMForkRecord(rec)})
		}, func(err error) {
			// Records were overwritten before we read them, a vmfork
			// line possibly among them. A missed change lets clones
			// share a generation; an extra bump only makes watchers
			// rebuild: count the loss as a change.
			v.log.Warn("kernel log records lost before they could be read: bumping in case a VM generation change was among them", "err", err)
			send(item{kind: itemLost})
		}, func() { send(item{kind: itemCaughtUp}) })
		if ctx.Err() == nil {
			fatal <- fmt.Errorf("kernel log %s: %w", v.kmsgPath, err)
		}
	})
	return v.loop(ctx, look, items, fatal, bump)
}

// loop turns the reader's items into bumps until ctx ends or fatal reports.
// It alone moves the Mark, and never past a change it has not handed to
// the daemon: past a vmfork line only once its event was received, past a
// loss only once the loss's bump was.
func (v *vmgenid) loop(ctx context.Context, look Lookback, items <-chan item, fatal <-chan error, bump func(Event) error) error {
	var (
		from     = int64(-1) // the records up to it were accounted for before
		pos      = int64(-1) // the records up to it are accounted for now
		last     = int64(-1) // the last record read
		backlog  = true      // reading what was logged before Run
		ignore   = look.First && look.Mark == nil
		first    = true
		change   string // why the backlog bumps, if it does
		lastLost time.Time
		lostDue  <-chan time.Time // a loss waiting for its bump (see lostEvery)
	)
	var m kmsgMark
	if look.Mark != nil {
		if err := json.Unmarshal(look.Mark, &m); err == nil {
			from, pos = int64(m.Seq), int64(m.Seq)
			v.mark.Store(&m)
		} else {
			v.log.Warn("the previous daemon's mark cannot be read: looking back at the whole boot", "err", err)
		}
	}
	account := func(seq int64) {
		if seq > pos {
			pos = seq
			v.mark.Store(&kmsgMark{Seq: uint64(seq)})
		}
	}
	// send hands a change over; it fails only once the daemon stops (ctx
	// ended), and the loop then ends at once: nothing read after the change
	// may move the Mark past it.
	send := func(why string) bool {
		v.log.Info("VM generation change", "why", why)
		upTo := max(pos, last)
		if lostDue != nil {
			upTo = pos // not past a loss whose bump is still due
		}
		if err := bump(Event{Backend: NameVMGenID, Mark: markOf(upTo)}); err != nil {
			v.log.Info("change not handed over: the daemon is stopping", "err", err)
			return false
		}
		return true
	}
	for {
		var it item
		select {
		case <-ctx.Done():
			return nil
		case err := <-fatal:
			return err
		case <-lostDue:
			lostDue, lastLost = nil, time.Now()
			if !send("kernel log records lost") {
				return nil
			}
			account(last)
			continue
		case it = <-items:
		}
		switch {
		case it.kind == itemCaughtUp && backlog:
			backlog = false
			if change != "" && !send(change+" while no daemon watched") {
				return nil
			}
			account(last)
			if change == "" && last >= 0 {
				bump(Event{Backend: NameVMGenID, Mark: markOf(last), MarkOnly: true})
			}
		case it.kind == itemCaughtUp:
		case it.kind == itemLost && backlog:
			if !ignore {
				change = "kernel log records lost"
			}
		case it.kind == itemLost:
			if lostDue != nil {
				continue // its bump is due already
			}
			if wait := v.lostEvery - time.Since(lastLost); wait > 0 {
				lostDue = time.After(wait)
				continue
			}
			lastLost = time.Now()
			if !send("kernel log records lost") {
				return nil
			}
			account(last)
		case it.seq < 0:
			// A record without a sequence number is no /dev/kmsg record.
		case backlog:
			if first && !ignore && it.seq > from+1 {
				change = "kernel log records lost"
			}
			if it.fork && !ignore && it.seq > from {
				change = "vmfork line"
			}
			first = false
			last = max(last, it.seq)
		default:
			last = max(last, it.seq)
			if it.fork && !send("vmfork line") {
				return nil
			}
			if lostDue == nil {
				account(it.seq)
			}
		}
	}
}

// markOf is the Mark of the records up to seq (nil if none).
func markOf(seq int64) json.RawMessage {
	if seq < 0 {
		return nil
	}
	b, _ := json.Marshal(kmsgMark{Seq: uint64(seq)})
	return b
}

// lostEvery is how often, at most, kernel log records lost unread bump.
// Anyone can flood the kernel log, and each such bump has every watcher
// rebuild; a loss within lostEvery of the last one bumps when it has passed,
// so that no loss goes without a bump after it.
const lostEvery = time.Second

// openKmsg opens the kernel log at its oldest record, for reads that tell
// when they have caught up with the kernel (see kmsgFile).
func openKmsg(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kernel log: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("kernel log %s: %w", path, err)
	}
	return &kmsgFile{File: f, rc: rc}, nil
}

// errCaughtUp is what a kmsgFile's Read returns, once, when every record
// logged so far has been read.
var errCaughtUp = fmt.Errorf("kernel log read to its end: %w", syscall.EAGAIN)

// kmsgFile reads /dev/kmsg one record per Read. The device is non-blocking
// in the runtime's poller: the first time it has no record ready, Read
// returns errCaughtUp; after that it waits for the next record.
type kmsgFile struct {
	*os.File
	rc       syscall.RawConn
	caughtUp bool
}

func (k *kmsgFile) Read(p []byte) (int, error) {
	var (
		n    int
		rerr error
	)
	err := k.rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), p)
		return rerr != unix.EAGAIN || !k.caughtUp
	})
	switch {
	case err != nil:
		return 0, err
	case rerr == unix.EAGAIN:
		k.caughtUp = true
		return 0, errCaughtUp
	case rerr != nil:
		return 0, &os.PathError{Op: "read", Path: k.Name(), Err: rerr}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// kmsgRecordMax is more than one /dev/kmsg record can be (a read with a
// smaller buffer than the record fails with EINVAL).
const kmsgRecordMax = 16 << 10

// readKmsg reads /dev/kmsg records (one per read) and passes each to
// onRecord until r fails. EPIPE means records were overwritten before we
// read them; the kernel then moves us to the oldest record left, so reading
// goes on after telling lost. EAGAIN means every record logged so far was
// read: caughtUp is told the first time.
func readKmsg(r io.Reader, onRecord func([]byte), lost func(error), caughtUp func()) error {
	buf := make([]byte, kmsgRecordMax)
	told := false
	for {
		n, err := r.Read(buf)
		if n > 0 {
			onRecord(buf[:n])
		}
		switch {
		case err == nil:
		case errors.Is(err, syscall.EPIPE):
			lost(err)
		case errors.Is(err, syscall.EAGAIN):
			if !told {
				told = true
				caughtUp()
			}
		case errors.Is(err, syscall.EINTR):
		default:
			return err
		}
	}
}

// recordSeq returns the sequence number of a /dev/kmsg record ("PRIO,SEQ,
// ..."), -1 if it has none.
func recordSeq(rec []byte) int64 {
	hdr, _, ok := bytes.Cut(rec, []byte{';'})
	if !ok {
		return -1
	}
	f := bytes.SplitN(hdr, []byte{','}, 3)
	if len(f) < 3 {
		return -1
	}
	seq, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil || seq < 0 {
		return -1
	}
	return seq
}

// isVMForkRecord tells whether a /dev/kmsg record ("PRIO,SEQ,USEC,FLAGS
// [,...];MESSAGE\n[ KEY=VALUE\n...]") is the kernel's vmfork line. The
// facility must be the kernel's (PRIO < 8): anything written to /dev/kmsg
// from user space gets LOG_USER at least. And the message must be exactly
// vmforkMessage: an unprivileged user can have the kernel log a line that
// quotes its words (tmpfs: Unknown parameter '...'), so neither alone stops
// a forged bump.
func isVMForkRecord(rec []byte) bool {
	hdr, msg, ok := bytes.Cut(rec, []byte{';'})
	if !ok {
		return false
	}
	prio, _, _ := bytes.Cut(hdr, []byte{','})
	p, err := strconv.Atoi(string(prio))
	if err != nil || p < 0 || p>>3 != 0 {
		return false
	}
	msg, _, _ = bytes.Cut(msg, []byte{'\n'}) // continuation lines are metadata
	return string(msg) == vmforkMessage
}
