package genid

// Status is the daemon's state as `genidctl status --json` prints it.
type Status struct {
	Generation  uint32        `json:"generation"`
	Watchers    int           `json:"watchers"`
	Outdated    int           `json:"outdated"`
	LastBump    *BumpRecord   `json:"last_bump"`
	WatcherList []WatcherInfo `json:"watcher_list"`
	Backends    []string      `json:"backends"`
}

// Paths inside a run directory.
const (
	PageFile   = "generation"
	SocketFile = "genid.sock"
)

// DefaultRunDir is where the system daemon runs.
const DefaultRunDir = "/run/genid"
