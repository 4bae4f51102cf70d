package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The vmgenid backend. The kernel's vmgenid driver (ACPI VMGENCTR /
// VM_GEN_COUNTER, devicetree microsoft,vmgenid) exposes neither the 16-byte
// ID nor a counter to user space; what it does give, on each change of the
// ID, is:
//
//   - every kernel since 5.18: add_vmfork_randomness() logs
//     "random: crng reseeded due to virtual machine fork" (only once the RNG
//     is ready), which /dev/kmsg delivers;
//   - 6.8 only (reverted in 6.9): a KOBJ_CHANGE uevent with NEW_VMGENID=1,
//     sent right after that log line.
//
// Both are watched; the pairing rule of dedup makes one change one bump.

// vmforkMessage is what add_vmfork_randomness() logs on a VM generation
// change: the whole message, with the "random: " of the driver's pr_fmt.
// Only the whole message counts: the kernel logs many lines that quote what
// a user gave it (a mount option, a device name), so a line that merely
// contains these words can be had by anyone.
const vmforkMessage = "random: crng reseeded due to virtual machine fork"

// DefaultPairWindow is how long an event of one vmgenid source waits for its
// partner from the other source. Both are emitted by the same kernel
// function microseconds apart; the window only absorbs our own scheduling
// delays (a just-restored guest may be busy). It is not a rate limit: see
// dedup.
const DefaultPairWindow = 2 * time.Second

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
	noUevent bool
	window   time.Duration
	// lostEvery is the package's lostEvery, shorter in tests.
	lostEvery time.Duration
}

func newVMGenID(opts Options) *vmgenid {
	opts.setDefaults()
	return &vmgenid{
		log:       opts.Logger.With("backend", NameVMGenID),
		sysDir:    opts.SysDir,
		kmsgPath:  opts.KmsgPath,
		noUevent:  opts.NoUevent,
		window:    DefaultPairWindow,
		lostEvery: lostEvery,
	}
}

func (v *vmgenid) Name() string { return NameVMGenID }

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

// source is where a vmgenid event came from.
type source int

const (
	srcKmsg source = iota
	srcUevent
	// srcLost is kernel log records lost unread: it always bumps, and
	// pairs with nothing (dedup does not see it).
	srcLost
)

func (s source) String() string {
	switch s {
	case srcKmsg:
		return "kmsg"
	case srcUevent:
		return "uevent"
	}
	return "lost kmsg records"
}

// Run opens the kernel log (at its end, so the machine's boot-time vmfork
// line and anything else logged before now never count) and, when it can,
// the uevent socket, then bumps once per generation change until ctx ends.
// It needs a device bound to the driver: the kernel log exists everywhere,
// and without the device Run would wait for ever, the backend listed as
// active with nothing to watch. The kernel log is required; the uevent
// socket is a bonus that only 6.8 kernels use, so failing to open it only
// logs a warning.
func (v *vmgenid) Run(ctx context.Context, events chan<- Event) error {
	return v.run(ctx, sender(ctx, events))
}

func (v *vmgenid) run(ctx context.Context, bump func(reason string) error) error {
	if _, err := boundVMGenIDDevice(v.sysDir); err != nil {
		return err
	}
	kmsg, err := openKmsg(v.kmsgPath)
	if err != nil {
		return err
	}
	var uev *os.File
	if !v.noUevent {
		if uev, err = openUevent(); err != nil {
			v.log.Warn("no uevent source; watching the kernel log only", "err", err)
			uev = nil
		}
	}
	v.log.Info("watching", "kmsg", v.kmsgPath, "uevent", uev != nil)

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel() // closes the files (below), so the readers return
		wg.Wait()
	}()
	// Closing the files is what wakes the readers, which sleep in the
	// runtime's poller.
	context.AfterFunc(ctx, func() {
		kmsg.Close()
		if uev != nil {
			uev.Close()
		}
	})

	events := make(chan source)
	send := func(s source) {
		select {
		case events <- s:
		case <-ctx.Done():
		}
	}
	fatal := make(chan error, 1)
	wg.Go(func() {
		err := readKmsg(kmsg, func(rec []byte) {
			if isVMForkRecord(rec) {
				send(srcKmsg)
			}
		}, func(err error) {
			// Records were overwritten before we read them, a vmfork
			// line possibly among them. A missed change lets clones
			// share a generation; an extra bump only makes watchers
			// rebuild: count the loss as a change.
			v.log.Warn("kernel log records lost before they could be read: bumping in case a VM generation change was among them", "err", err)
			send(srcLost)
		})
		if ctx.Err() == nil {
			fatal <- fmt.Errorf("kernel log %s: %w", v.kmsgPath, err)
		}
	})
	if uev != nil {
		wg.Go(func() {
			err := readUevents(uev, func(msg []byte) {
				u, err := parseUevent(msg)
				if err != nil {
					v.log.Debug("uevent ignored", "err", err)
					return
				}
				if u.isVMGenIDChange() {
					send(srcUevent)
				}
			}, func(err error) {
				v.log.Warn("uevents lost (socket buffer overrun)", "err", err)
			})
			if ctx.Err() == nil {
				// Not fatal: the kernel log still covers every kernel.
				v.log.Warn("uevent source stopped; watching the kernel log only", "err", err)
			}
		})
	}
	return v.loop(ctx, events, fatal, bump)
}

// loop turns source events into bumps until ctx ends or fatal reports.
func (v *vmgenid) loop(ctx context.Context, events <-chan source, fatal <-chan error, bump func(string) error) error {
	d := dedup{window: v.window}
	var lastLost time.Time
	var lostDue <-chan time.Time // a loss waiting for its bump (see lostEvery)
	for {
		var src source
		select {
		case <-ctx.Done():
			return nil
		case err := <-fatal:
			return err
		case <-lostDue:
			lostDue, lastLost, src = nil, time.Now(), srcLost
		case src = <-events:
			switch {
			case src == srcLost:
				if lostDue != nil {
					continue // its bump is due already
				}
				if wait := v.lostEvery - time.Since(lastLost); wait > 0 {
					lostDue = time.After(wait)
					continue
				}
				lastLost = time.Now()
			case !d.event(src, time.Now()):
				v.log.Debug("VM generation change already counted", "source", src)
				continue
			}
		}
		v.log.Info("VM generation change", "source", src)
		if err := bump(NameVMGenID); err != nil {
			v.log.Error("bump failed", "err", err)
		}
	}
}

// lostEvery is how often, at most, kernel log records lost unread bump.
// Anyone can flood the kernel log, and each such bump has every watcher
// rebuild; a loss within lostEvery of the last one bumps when it has passed,
// so that no loss goes without a bump after it.
const lostEvery = time.Second

// dedup makes one hardware change one bump when both sources report it.
//
// The rule is pairing, not a quiet period: an event pairs with at most one
// unpaired event of the *other* source seen within the window, and only an
// event that finds no partner bumps. A 6.8 kernel sends exactly one log line
// and one uevent per change, so each change bumps once, and two changes in
// quick succession still bump twice (kmsg, uevent, kmsg, uevent, or even
// kmsg, kmsg, uevent, uevent), which a "nothing within N seconds" rule would
// merge into one, letting clones share a generation.
//
// Failure modes lean to safety. Bumps = events − pairs and pairs never exceed
// the events of the less complete source, so after N changes there are at
// least N bumps if either source saw them all. If one source loses an event
// (log records overwritten, which also bumps on its own; uevent buffer
// overrun; RNG not ready so no log line), a later event may pair with the
// orphan, but its partner then bumps instead; an orphan older than the
// window expires so it cannot swallow an unrelated change later. A partner
// later than the window costs one extra bump, which is harmless.
type dedup struct {
	window  time.Duration
	pending [2][]time.Time // unpaired events per source, oldest first
}

// maxPending bounds memory if one source fires in a burst without partners.
const maxPending = 64

// event records an event of src at now and reports whether it is a new
// change (bump) rather than the partner of one already counted.
func (d *dedup) event(src source, now time.Time) bool {
	for s := range d.pending {
		p := d.pending[s]
		for len(p) > 0 && now.Sub(p[0]) > d.window {
			p = p[1:]
		}
		d.pending[s] = p
	}
	other := 1 - src
	if len(d.pending[other]) > 0 {
		d.pending[other] = d.pending[other][1:]
		return false
	}
	if len(d.pending[src]) >= maxPending {
		d.pending[src] = d.pending[src][1:]
	}
	d.pending[src] = append(d.pending[src], now)
	return true
}

// openKmsg opens the kernel log positioned at its end: /dev/kmsg starts a
// new reader at the oldest record, and the boot log of a VM that ever had
// its generation ID changed already holds a vmfork line, which must not
// bump.
func openKmsg(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kernel log: %w", err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, fmt.Errorf("kernel log %s: seek to end: %w", path, err)
	}
	return f, nil
}

// kmsgRecordMax is more than one /dev/kmsg record can be (a read with a
// smaller buffer than the record fails with EINVAL).
const kmsgRecordMax = 16 << 10

// readKmsg reads /dev/kmsg records (one per read) and passes each to
// onRecord until r fails. EPIPE means records were overwritten before we
// read them; the kernel then moves us to the oldest record left, so reading
// goes on after telling lost.
func readKmsg(r io.Reader, onRecord func([]byte), lost func(error)) error {
	buf := make([]byte, kmsgRecordMax)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			onRecord(buf[:n])
		}
		switch {
		case err == nil:
		case errors.Is(err, syscall.EPIPE):
			lost(err)
		case errors.Is(err, syscall.EINTR), errors.Is(err, syscall.EAGAIN):
		default:
			return err
		}
	}
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

// openUevent opens a kobject uevent socket bound to the kernel's multicast
// group (1; udev re-broadcasts on group 2, which we do not want), non-blocking
// so that the runtime poller waits on it and Close wakes the reader.
func openUevent() (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	// A hotplug storm on restore must not overflow the buffer and drop the
	// one uevent we want; FORCE needs CAP_NET_ADMIN, else take what we get.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uevent socket: bind to group 1: %w", err)
	}
	return os.NewFile(uintptr(fd), "uevent"), nil
}

// readUevents passes each uevent sent by the kernel (sender port 0) to onMsg
// until f is closed or fails. ENOBUFS means uevents were dropped; reading
// goes on after telling lost.
func readUevents(f *os.File, onMsg func([]byte), lost func(error)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("uevent socket: %w", err)
	}
	buf := make([]byte, 64<<10)
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return err
		case rerr == unix.ENOBUFS:
			lost(rerr)
			continue
		case rerr == unix.EINTR:
			continue
		case rerr != nil:
			return fmt.Errorf("uevent socket: %w", rerr)
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue // not from the kernel
		}
		onMsg(buf[:n])
	}
}

// uevent is a parsed kernel uevent.
type uevent struct {
	Action  string
	DevPath string
	Env     map[string]string
}

// parseUevent parses a kernel uevent: "ACTION@DEVPATH\0KEY=VALUE\0...".
func parseUevent(msg []byte) (uevent, error) {
	fields := bytes.Split(bytes.TrimRight(msg, "\x00"), []byte{0})
	action, devpath, ok := bytes.Cut(fields[0], []byte{'@'})
	if !ok || len(action) == 0 || len(devpath) == 0 || bytes.HasPrefix(fields[0], []byte("libudev")) {
		return uevent{}, fmt.Errorf("uevent: bad header %q", fields[0])
	}
	u := uevent{Action: string(action), DevPath: string(devpath), Env: make(map[string]string, len(fields)-1)}
	for _, kv := range fields[1:] {
		k, val, ok := bytes.Cut(kv, []byte{'='})
		if !ok || len(k) == 0 {
			return uevent{}, fmt.Errorf("uevent %s: bad field %q", u.DevPath, kv)
		}
		u.Env[string(k)] = string(val)
	}
	return u, nil
}

// isVMGenIDChange tells whether u is the 6.8 vmgenid notification. A
// synthetic uevent (written to a sysfs uevent file) cannot forge it: the
// kernel prefixes its variables with SYNTH_ARG_.
func (u uevent) isVMGenIDChange() bool {
	return u.Action == "change" && u.Env["NEW_VMGENID"] == "1"
}
