// Package plugin carries genid's generation across CRIU checkpoint/restore
// for Go programs that drive CRIU with go-criu, and holds the record format
// shared with the C plugin (plugin/criu/genid-criu.c) and `genidctl
// criu-hook`.
//
// At checkpoint the generation is recorded in IMAGES_DIR/genid.json; at
// restore the daemon is asked to bump past it (reason "criu-restore"), so a
// restored process always sees a new generation, even on a host whose
// generation is lower than the snapshot's.
package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// RecordName is the file a checkpoint's record is kept in, in the images dir.
const RecordName = "genid.json"

// Reason is what a restore records as the reason of its bump.
const Reason = "criu-restore"

// Record is what a checkpoint remembers. The C plugin writes it with this
// exact layout; `genidctl image-info` prints it.
type Record struct {
	Version int `json:"version"`
	// Generation at checkpoint time; nil if the dumping host had no page.
	Generation *uint32 `json:"generation,omitempty"`
	// Socket is the daemon's socket on the dumping host.
	Socket string `json:"socket"`
	Time   string `json:"time"`
	// Sockets of the dumped tasks connected to the daemon (C plugin only).
	Sockets []Socket `json:"sockets"`
	// Writer names who recorded it, when not the C plugin.
	Writer string `json:"writer,omitempty"`
}

// Socket is one connection of a dumped task to the daemon.
type Socket struct {
	Inode    uint32 `json:"inode"`
	Watcher  bool   `json:"watcher"`
	Acked    uint32 `json:"acked"`
	Nonblock bool   `json:"nonblock"`
	Path     string `json:"path"`
}

// ReadRecord reads the record of the checkpoint in dir. A checkpoint taken
// without genid has none: the error then matches os.ErrNotExist.
func ReadRecord(dir string) (*Record, error) {
	b, err := os.ReadFile(filepath.Join(dir, RecordName))
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", RecordName, err)
	}
	if r.Version != 1 {
		return nil, fmt.Errorf("%s: unsupported version %d", RecordName, r.Version)
	}
	return &r, nil
}

// WriteRecord writes r into dir, atomically.
func WriteRecord(dir string, r *Record) error {
	if r.Version == 0 {
		r.Version = 1
	}
	if r.Time == "" {
		r.Time = time.Now().UTC().Format(time.RFC3339)
	}
	if r.Sockets == nil {
		r.Sockets = []Socket{}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, RecordName+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, RecordName))
}

// MinForRestore is the bump's min for a restore of r: past the recorded
// generation, or simply the next one when nothing was recorded.
func MinForRestore(r *Record) (uint32, error) {
	if r == nil || r.Generation == nil {
		return 0, nil
	}
	if *r.Generation == ^uint32(0) {
		return 0, errors.New("recorded generation is the maximum: cannot bump past it")
	}
	return *r.Generation + 1, nil
}
