package plugin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v7"

	"github.com/genid-project/genid/genid"
)

// Notify is a go-criu Notify that records the generation after a dump and
// bumps past it after a restore, then calls the caller's own Notify. Like
// the action script, it cannot re-attach watcher sockets: install the C
// plugin for that (CRIU loads it for go-criu's swrk too).
type Notify struct {
	criu.Notify // the caller's; NoNotify if nil

	// ImagesDir is the directory the dump writes or the restore reads: go-criu
	// does not tell a Notify.
	ImagesDir string
	// RunDir is the genid daemon's run dir (genid.DefaultRunDir if empty).
	RunDir string
	// Restored is the generation the last restore bumped to.
	Restored uint32
}

// NewNotify wraps inner (may be nil) for a dump or restore with imagesDir.
func NewNotify(inner criu.Notify, imagesDir, runDir string) *Notify {
	if inner == nil {
		inner = criu.NoNotify{}
	}
	if runDir == "" {
		runDir = genid.DefaultRunDir
	}
	return &Notify{Notify: inner, ImagesDir: imagesDir, RunDir: runDir}
}

// PostDump records the generation, then calls the inner PostDump.
func (n *Notify) PostDump() error {
	if err := RecordGeneration(n.ImagesDir, n.RunDir, "go-criu"); err != nil {
		return fmt.Errorf("genid: post-dump: %w", err)
	}
	return n.Notify.PostDump()
}

// PostRestore bumps past the recorded generation while the restored tasks
// are still stopped, then calls the inner PostRestore.
func (n *Notify) PostRestore(pid int32) error {
	gen, err := Bump(context.Background(), n.ImagesDir, n.RunDir)
	switch {
	case errors.Is(err, ErrPluginRecord):
		// The C plugin bumped in this very restore.
	case err != nil:
		return fmt.Errorf("genid: post-restore: %w", err)
	default:
		n.Restored = gen
	}
	return n.Notify.PostRestore(pid)
}

// ErrPluginRecord means the checkpoint was recorded by the C plugin, which
// also does the restore's bump: bumping here too would count it twice.
var ErrPluginRecord = errors.New("checkpoint recorded by the CRIU plugin, which bumps at restore")

// RecordGeneration writes the generation of runDir's page into imagesDir,
// unless the C plugin already recorded more (its record lists sockets too).
func RecordGeneration(imagesDir, runDir, writer string) error {
	if r, err := ReadRecord(imagesDir); err == nil && r.Writer == "" {
		return nil // the C plugin's record: keep it
	}
	c, err := genid.Open(runDir)
	if err != nil {
		return err
	}
	defer c.Close()
	gen := c.Generation()
	return WriteRecord(imagesDir, &Record{
		Generation: &gen,
		Socket:     filepath.Join(runDir, genid.SocketFile),
		Writer:     writer,
	})
}

// Bump asks runDir's daemon to bump past the generation recorded in
// imagesDir (by one, if none was). It returns ErrPluginRecord, and bumps
// nothing, for a checkpoint the C plugin recorded.
func Bump(ctx context.Context, imagesDir, runDir string) (uint32, error) {
	r, err := ReadRecord(imagesDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	if r != nil && r.Writer == "" {
		return 0, ErrPluginRecord
	}
	min, err := MinForRestore(r)
	if err != nil {
		return 0, err
	}
	c, err := genid.Open(runDir)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.Bump(ctx, min, Reason)
}
