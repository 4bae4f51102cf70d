package genid

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/genid-project/genid/internal/wire"
)

// Admin is an administrator's handle on the daemon, through its admin
// socket (RUN_DIR/admin.sock): it bumps, creates and removes scopes, and
// sees every scope whole. The daemon judges each request on who sent it:
// root, the daemon's own user, or a member of the daemon's admin group;
// anyone else gets an error matching ErrPermission. A scope is named by
// its name; the host scope's name is "". An Admin is safe for concurrent
// use.
type Admin struct {
	s *session
}

// OpenAdmin returns a handle on the admin socket of the daemon of runDir.
// The daemon is dialed on first use. A run dir that another user could
// have made is refused, as by Open.
func OpenAdmin(runDir string) (*Admin, error) {
	if err := trustRunDir(runDir); err != nil {
		return nil, fmt.Errorf("open genid admin: %w", err)
	}
	return &Admin{s: &session{path: filepath.Join(runDir, AdminSocketFile)}}, nil
}

// Close closes the connection.
func (a *Admin) Close() error {
	a.s.close()
	return nil
}

func (a *Admin) call(ctx context.Context, op wire.Op, scope string, payload []byte, idempotent bool) (wire.Frame, error) {
	return a.s.call(ctx, op, append(wire.AppendName(nil, scope), payload...), idempotent)
}

// Generation returns scope's generation.
func (a *Admin) Generation(ctx context.Context, scope string) (uint32, error) {
	f, err := a.call(ctx, wire.OpGet, scope, nil, true)
	if err != nil {
		return 0, err
	}
	return wire.ParseU32(f.Payload)
}

// Bump moves scope's generation to max(current+1, min), giving reason for
// the record, and returns the new generation. MinAvoiding turns "past N"
// into min.
func (a *Admin) Bump(ctx context.Context, scope string, min uint32, reason string) (uint32, error) {
	f, err := a.call(ctx, wire.OpBump, scope, wire.Bump{Min: min, Reason: reason}.Encode(), false)
	if err != nil {
		return 0, err
	}
	return wire.ParseU32(f.Payload)
}

// BumpAll bumps every scope by one at least, as a VM restore does, and
// returns the host scope's new generation.
func (a *Admin) BumpAll(ctx context.Context, reason string) (uint32, error) {
	f, err := a.call(ctx, wire.OpBump, "", wire.Bump{Flags: wire.FlagAllScopes, Reason: reason}.Encode(), false)
	if err != nil {
		return 0, err
	}
	return wire.ParseU32(f.Payload)
}

// Outdated returns the number of scope's watchers that have not acked its
// current generation.
func (a *Admin) Outdated(ctx context.Context, scope string) (int, error) {
	f, err := a.call(ctx, wire.OpOutdated, scope, nil, true)
	if err != nil {
		return 0, err
	}
	n, err := wire.ParseU32(f.Payload)
	return int(n), err
}

// WaitWatchers returns nil when no watcher of scope is outdated, an error
// matching ErrTimeout after timeout (0 waits as long as ctx allows; a
// negative one has passed already).
func (a *Admin) WaitWatchers(ctx context.Context, scope string, timeout time.Duration) error {
	_, err := a.call(ctx, wire.OpWaitWatchers, scope, wire.U32(waitMillis(timeout)), true)
	return err
}

// Status returns scope's status, with its watchers' processes.
func (a *Admin) Status(ctx context.Context, scope string) (*Status, error) {
	f, err := a.call(ctx, wire.OpStatus, scope, nil, true)
	if err != nil {
		return nil, err
	}
	var st Status
	if err := json.Unmarshal(f.Payload, &st); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return &st, nil
}

// Scopes lists every scope, the host's first.
func (a *Admin) Scopes(ctx context.Context) ([]ScopeInfo, error) {
	f, err := a.call(ctx, wire.OpScopes, "", nil, true)
	if err != nil {
		return nil, err
	}
	var list []ScopeInfo
	if err := json.Unmarshal(f.Payload, &list); err != nil {
		return nil, fmt.Errorf("scopes: %w", err)
	}
	return list, nil
}

// ScopeOptions are the settings of a new scope.
type ScopeOptions struct {
	// Start is its first generation (default 0).
	Start uint32
	// PID, if not 0, is the process the scope belongs to (a container's
	// init): the daemon removes the scope when that process ends.
	PID int
	// ExistOK makes an existing scope of that name no error.
	ExistOK bool
}

// CreateScope creates scope name, with its directory RUN_DIR/scopes/NAME
// (its page and its socket, to bind-mount into a container at /run/genid),
// and returns its generation. An existing scope fails with an error
// matching ErrExists, unless opts.ExistOK.
func (a *Admin) CreateScope(ctx context.Context, name string, opts ScopeOptions) (uint32, error) {
	if err := wire.CheckName(name); err != nil {
		return 0, fmt.Errorf("scope-create: %v: %w", err, ErrBadRequest)
	}
	req := wire.ScopeCreate{Start: opts.Start, PID: uint32(opts.PID)}
	if opts.Start != 0 {
		req.Flags |= wire.FlagStart
	}
	if opts.ExistOK {
		req.Flags |= wire.FlagExistOK
	}
	f, err := a.call(ctx, wire.OpScopeCreate, name, req.Encode(), opts.ExistOK)
	if err != nil {
		return 0, err
	}
	return wire.ParseU32(f.Payload)
}

// RemoveScope removes scope name: its members are disconnected and its
// files removed.
func (a *Admin) RemoveScope(ctx context.Context, name string) error {
	if err := wire.CheckName(name); err != nil {
		return fmt.Errorf("scope-remove: %v: %w", err, ErrBadRequest)
	}
	_, err := a.call(ctx, wire.OpScopeRemove, name, nil, false)
	return err
}

// Restore gives restored tasks their scope, past the generation their
// checkpoint recorded (avoid, if not nil), and returns its new generation
// and name. With pid (the restored tasks' root, as the daemon sees it) the
// scope is the one that process belongs to, or a new one bound to it and
// named after recorded if that name is free; with pid 0 it is the host
// scope (recorded must be ""). While the Admin stays open, restored
// watchers may attach to that scope. Meant for programs that drive CRIU;
// the CRIU plugin does the same.
func (a *Admin) Restore(ctx context.Context, recorded string, avoid *uint32, pid int) (uint32, string, error) {
	return a.RestoreFrom(ctx, "", recorded, avoid, pid)
}

// RestoreFrom is Restore of the checkpoint in images, a directory the
// history names (its last bytes if it is long; "" for none).
func (a *Admin) RestoreFrom(ctx context.Context, images, recorded string, avoid *uint32, pid int) (uint32, string, error) {
	if !utf8.ValidString(images) || strings.ContainsRune(images, 0) {
		images = "" // the daemon takes text only: the restore matters, not its name
	}
	if len(images) > wire.MaxImagesDir {
		tail := images[len(images)-wire.MaxImagesDir+3:]
		for len(tail) > 0 && !utf8.RuneStart(tail[0]) {
			tail = tail[1:]
		}
		images = "..." + tail
	}
	req := wire.Restore{PID: uint32(pid), ImagesDir: images}
	if avoid != nil {
		req.Flags, req.Avoid = wire.FlagAvoid, *avoid
	}
	f, err := a.call(ctx, wire.OpRestore, recorded, req.Encode(), false)
	if err != nil {
		return 0, "", err
	}
	if len(f.Payload) < 4 {
		return 0, "", fmt.Errorf("restore: short reply: %w", ErrBadRequest)
	}
	gen, _ := wire.ParseU32(f.Payload[:4])
	name, rest, err := wire.ParseName(f.Payload[4:])
	if err != nil || len(rest) != 0 {
		return 0, "", fmt.Errorf("restore: bad reply: %v: %w", err, ErrBadRequest)
	}
	return gen, name, nil
}
