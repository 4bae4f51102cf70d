// Package backend holds the daemon's hypervisor backends: event sources that
// tell the daemon the machine was restored (or cloned) by the hypervisor, so
// that it bumps the generation by itself, without a CRIU hook or an operator.
//
// Every backend is event-driven: it sleeps in the kernel until something
// happens. None polls on a timer unless explicitly asked to, because a timer
// both wastes a VM's CPU and leaves a window in which clones share a
// generation.
package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Backend is one source of "the hypervisor restored this VM" events.
type Backend interface {
	// Name is the backend's name as --backends and status spell it.
	Name() string
	// Run first looks back at what happened while no daemon watched (see
	// Lookback), sending one Event if the VM was restored meanwhile; then
	// it sends one Event per change it sees, until ctx ends. It returns nil
	// when ctx ended and an error when it cannot go on.
	Run(ctx context.Context, look Lookback, events chan<- Event) error
	// Mark is what the backend has accounted for once Run returned:
	// everything up to it was no change, or a change whose Event the
	// daemon received. The daemon keeps it for the next daemon of the
	// boot, which looks back from it (Lookback.Mark). Nil: nothing yet.
	Mark() json.RawMessage
}

// Lookback is where a backend takes up the watch: what the boot's previous
// daemon accounted for. See docs/state.md.
type Lookback struct {
	// Mark is the Mark that the previous daemon's backend of the same
	// name left, nil if none.
	Mark json.RawMessage
	// First tells that no daemon served the run dir before in this boot:
	// no process can have read a generation, so nothing that happened
	// before now is a change to bump for. Without a Mark and not First,
	// a backend cannot tell what the previous daemon saw, and counts
	// what the device shows of the whole boot.
	First bool
}

// Event is a backend's report that the VM was restored (or cloned): every
// process's memory was duplicated, so every scope is to be bumped.
type Event struct {
	// Backend is the reporting backend's name, the bumps' reason.
	Backend string
	// Mark is what the backend has accounted for once the daemon bumped
	// for this event: the daemon keeps it after its bump.
	Mark json.RawMessage
	// MarkOnly says there is nothing to bump: the backend only hands its
	// Mark over, once it has looked back, so that a daemon that crashes
	// later is not followed by one that looks back further.
	MarkOnly bool
}

// sender turns a Run's events channel into the bump function the
// backends' loops call: it sends, or gives up when ctx ends.
func sender(ctx context.Context, events chan<- Event) func(Event) error {
	return func(ev Event) error {
		if err := ctx.Err(); err != nil {
			return err // the daemon is stopping: nobody would bump
		}
		select {
		case events <- ev:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Backend names, as --backends takes them.
const (
	NameVMGenID = "vmgenid"
	NameVMClock = "vmclock"
)

// Special values of the --backends list.
const (
	ListAuto = "auto" // every backend this machine supports
	ListNone = "none" // no backend: only explicit bumps
)

// Names lists the known backends, in detection order.
func Names() []string { return []string{NameVMGenID, NameVMClock} }

// ErrUnknown is returned (wrapped, with the name) by Parse for a name that is
// not a backend; the daemon reports it as a usage error.
var ErrUnknown = errors.New("unknown backend")

// Options locate the devices the backends use. Zero values mean the real
// system paths; tests point them at files laid out like the devices.
type Options struct {
	Logger *slog.Logger

	// SysDir is the sysfs mount point, default "/sys".
	SysDir string
	// KmsgPath is the kernel log device, default "/dev/kmsg".
	KmsgPath string

	// VMClockPath is the VMClock device, default "/dev/vmclock0".
	VMClockPath string
	// VMClockPoll, when positive, lets the vmclock backend check the device
	// at this interval if it cannot notify. Off by default: see package doc.
	VMClockPoll time.Duration
}

func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.SysDir == "" {
		o.SysDir = "/sys"
	}
	if o.KmsgPath == "" {
		o.KmsgPath = "/dev/kmsg"
	}
	if o.VMClockPath == "" {
		o.VMClockPath = "/dev/vmclock0"
	}
}

// Parse turns a --backends value into backends: "auto" detects them (see
// Detect), "none" or "" selects none, anything else is a comma-separated list
// of names, each enabled unconditionally (a backend that cannot run then
// fails at run time, with a logged error). A name listed twice counts once.
func Parse(list string, opts Options) ([]Backend, error) {
	opts.setDefaults()
	switch strings.TrimSpace(list) {
	case ListAuto:
		return Detect(opts), nil
	case ListNone, "":
		return nil, nil
	}
	var out []Backend
	seen := make(map[string]bool)
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if seen[name] {
			continue
		}
		seen[name] = true
		switch name {
		case NameVMGenID:
			out = append(out, newVMGenID(opts))
		case NameVMClock:
			out = append(out, newVMClock(opts))
		case "":
			return nil, fmt.Errorf("backends %q: empty name", list)
		case ListAuto, ListNone:
			return nil, fmt.Errorf("backends %q: %q cannot be combined with names", list, name)
		default:
			return nil, fmt.Errorf("backends %q: %w %q (known: auto, none, %s)",
				list, ErrUnknown, name, strings.Join(Names(), ", "))
		}
	}
	return out, nil
}

// Detect returns the backends this machine supports, and logs what it found
// and why the others are off. It never fails: a backend it cannot use is
// simply not returned.
func Detect(opts Options) []Backend {
	opts.setDefaults()
	log := opts.Logger
	var out []Backend
	if err := detectVMGenID(opts); err != nil {
		log.Info("backend off", "backend", NameVMGenID, "why", err)
	} else {
		log.Info("backend detected", "backend", NameVMGenID)
		out = append(out, newVMGenID(opts))
	}
	if err := detectVMClock(opts); err != nil {
		log.Info("backend off", "backend", NameVMClock, "why", err)
	} else {
		log.Info("backend detected", "backend", NameVMClock, "path", opts.VMClockPath)
		out = append(out, newVMClock(opts))
	}
	return out
}

// BackendNames returns the names of bs, for status and logs.
func BackendNames(bs []Backend) []string {
	names := make([]string, len(bs))
	for i, b := range bs {
		names[i] = b.Name()
	}
	return names
}
