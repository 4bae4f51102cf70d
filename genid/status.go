package genid

import "time"

// Status is a scope's state as the daemon reports it (`genidctl status
// --json`). On a scope's own socket WatcherList is nil: the processes of
// a scope are not shown to its members, only to an administrator.
type Status struct {
	Scope       string        `json:"scope"` // "" for the host scope
	Generation  uint32        `json:"generation"`
	Watchers    int           `json:"watchers"`
	Outdated    int           `json:"outdated"`
	LastBump    *BumpRecord   `json:"last_bump"`
	WatcherList []WatcherInfo `json:"watcher_list,omitempty"`
	Backends    []string      `json:"backends,omitempty"`
	// Version is the daemon's (the host scope's status only).
	Version string `json:"version,omitempty"`
}

// BumpRecord describes a scope's last bump.
type BumpRecord struct {
	Generation uint32    `json:"generation"`
	Reason     string    `json:"reason"`
	Time       time.Time `json:"time"`
}

// WatcherInfo is one watcher as an administrator's status shows it.
type WatcherInfo struct {
	PID      int    `json:"pid"` // as seen from the daemon's pid namespace
	UID      uint32 `json:"uid"`
	Acked    uint32 `json:"acked"`
	Outdated bool   `json:"outdated"`
}

// Paths inside a run directory (and inside a scope's directory, which has
// the same layout).
const (
	PageFile   = "generation"
	SocketFile = "genid.sock"
	// AdminSocketFile is the administrator's socket, in the host's run
	// directory only.
	AdminSocketFile = "admin.sock"
)

// DefaultRunDir is where the system daemon runs, and where a container sees
// its own scope.
const DefaultRunDir = "/run/genid"

// ScopeInfo is one scope in an administrator's list (`genidctl scope list`).
type ScopeInfo struct {
	Status
	Dir      string    `json:"dir,omitempty"`    // the scope's directory, to bind-mount (not for the host scope)
	Created  time.Time `json:"created,omitzero"` // not for the host scope
	PID      int       `json:"pid,omitempty"`    // the process it belongs to, if any
	Restored bool      `json:"restored,omitempty"`
}
