package genid

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/genid-project/genid/internal/wire"
)

// HistoryEntry is one bump as the daemon's history keeps it (`genidctl
// history --json`): what moved, why, for whom, how long its barrier took to
// clear and what its after-restore hooks did.
type HistoryEntry struct {
	// Seq numbers the bumps of a run dir, across daemon restarts.
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Scope      string    `json:"scope"` // "" for the host scope
	Previous   uint32    `json:"previous"`
	Generation uint32    `json:"generation"`
	// Reason is the bump's: vmgenid or vmclock (a backend saw the VM
	// restored), criu-restore, or the text an administrator gave (manual
	// by default).
	Reason string `json:"reason"`
	// By tells who asked: "admin" (a request on the admin socket), "restore"
	// (a CRIU restore, see Restore) or "daemon" (a backend, or the program
	// embedding the daemon). PID and UID are the asking process's, as the
	// daemon saw it (for "daemon": the daemon's own).
	By  string `json:"by"`
	PID int    `json:"pid"`
	UID uint32 `json:"uid"`
	// Min is the least generation asked for (bump --min, or --avoid N as
	// N+1; a restore's recorded generation + 1); 0 if none.
	Min uint32 `json:"min,omitempty"`
	// AllScopes: one of the bumps of every scope that a VM restore (or
	// bump --all-scopes) makes.
	AllScopes bool         `json:"all_scopes,omitempty"`
	Restore   *RestoreInfo `json:"restore,omitempty"`

	// Outdated is the number of watchers the bump made outdated.
	Outdated int `json:"outdated"`
	// Barrier tells whether they have all acked since: BarrierCleared,
	// with BarrierNS the time it took (0 when none was outdated), or one
	// of the other Barrier states.
	Barrier   string `json:"barrier"`
	BarrierNS int64  `json:"barrier_ns,omitempty"`

	// Hooks is where the after-restore hooks stand (Hooks constants), and
	// HookResults what each did.
	Hooks       string       `json:"hooks,omitempty"`
	HookResults []HookResult `json:"hook_results,omitempty"`
}

// States of HistoryEntry.Barrier.
const (
	BarrierPending    = "pending"    // watchers are outdated still
	BarrierCleared    = "cleared"    // none is outdated any more
	BarrierSuperseded = "superseded" // a later bump came before it cleared
	BarrierRemoved    = "removed"    // the scope went before it cleared
	BarrierLost       = "lost"       // the daemon stopped before it cleared
)

// States of HistoryEntry.Hooks; "" when the daemon has no hooks directory.
const (
	HooksPending = "pending" // queued or running
	HooksDone    = "done"    // each ran (or was refused): see HookResults
	HooksSkipped = "skipped" // too many runs were queued: none ran
	HooksLost    = "lost"    // the daemon stopped before they ran
)

// BarrierTime is how long the barrier took to clear, if it did.
func (e *HistoryEntry) BarrierTime() (time.Duration, bool) {
	return time.Duration(e.BarrierNS), e.Barrier == BarrierCleared
}

// RestoreInfo is what the daemon knows of a CRIU restore's bump.
type RestoreInfo struct {
	// RecordedScope is the scope the checkpoint recorded (a container's
	// scope is named after the container); "" for the host's.
	RecordedScope string `json:"recorded_scope,omitempty"`
	// RecordedGeneration is the generation the checkpoint recorded, if any.
	RecordedGeneration *uint32 `json:"recorded_generation,omitempty"`
	// TasksPID is the restored tasks' root, 0 for host processes.
	TasksPID int `json:"tasks_pid,omitempty"`
	// ImagesDir is where the checkpoint's images were, as the restorer
	// named it (its end, if long); "" if it did not.
	ImagesDir string `json:"images_dir,omitempty"`
}

// HookResult is what one after-restore hook did.
type HookResult struct {
	Name       string `json:"name"`
	Exit       int    `json:"exit"` // -1 if it did not exit by itself
	DurationNS int64  `json:"duration_ns"`
	TimedOut   bool   `json:"timed_out,omitempty"`
	// Error says why it failed to start, was refused or killed.
	Error string `json:"error,omitempty"`
}

// OK tells whether the hook ran and exited 0.
func (r HookResult) OK() bool { return r.Exit == 0 && r.Error == "" && !r.TimedOut }

// HistoryOptions select the bumps History returns.
type HistoryOptions struct {
	// Scope's bumps only ("" for the host's), unless EveryScope.
	Scope      string
	EveryScope bool
	// Max, if not 0, keeps the latest Max.
	Max int
}

// History returns the bumps the daemon keeps (its last 256), oldest first.
func (a *Admin) History(ctx context.Context, opts HistoryOptions) ([]HistoryEntry, error) {
	if opts.EveryScope && opts.Scope != "" {
		return nil, fmt.Errorf("history: every scope, or scope %q: %w", opts.Scope, ErrBadRequest)
	}
	if opts.Max < 0 || int64(opts.Max) > int64(^uint32(0)) {
		return nil, fmt.Errorf("history: max %d: %w", opts.Max, ErrBadRequest)
	}
	req := wire.History{Max: uint32(opts.Max)}
	if opts.EveryScope {
		req.Flags |= wire.FlagEveryScope
	}
	f, err := a.call(ctx, wire.OpHistory, opts.Scope, req.Encode(), true)
	if err != nil {
		return nil, err
	}
	var list []HistoryEntry
	if err := json.Unmarshal(f.Payload, &list); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return list, nil
}

// Metrics returns the daemon's metrics in the Prometheus text exposition
// format (version 0.0.4), as its opt-in listener serves them.
func (a *Admin) Metrics(ctx context.Context) ([]byte, error) {
	f, err := a.call(ctx, wire.OpMetrics, "", nil, true)
	if err != nil {
		return nil, err
	}
	return f.Payload, nil
}
