package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

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
	// Restored is the generation the last restore resumed the tasks with.
	Restored uint32
	// Logger gets a line on what a restore did (slog.Default() if nil).
	Logger *slog.Logger
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
// are still stopped (unless the C plugin did already), logs what it did,
// then calls the inner PostRestore.
func (n *Notify) PostRestore(pid int32) error {
	r, err := Restore(context.Background(), n.ImagesDir, n.RunDir)
	if err != nil {
		return fmt.Errorf("genid: post-restore: %w", err)
	}
	n.logger().Info("genid: post-restore", "images", n.ImagesDir, "outcome", r.String())
	n.Restored = r.Generation
	return n.Notify.PostRestore(pid)
}

func (n *Notify) logger() *slog.Logger {
	if n.Logger != nil {
		return n.Logger
	}
	return slog.Default()
}

// Restored is what Restore did.
type Restored struct {
	// Generation is the one the restored tasks resume with.
	Generation uint32
	// Bumped is false when the C plugin bumped in this restore (RestoredEnv):
	// a second bump would count it twice.
	Bumped bool
	// Record is the checkpoint's record, nil if it had none.
	Record *Record
}

// String tells what happened, for the log.
func (r *Restored) String() string {
	rec := "no record"
	if r.Record != nil {
		by := r.Record.Writer
		if by == "" {
			by = "the CRIU plugin"
		}
		rec = "no generation of the host scope recorded by " + by
		if h := r.Record.Scope(""); h != nil && h.Generation != nil {
			rec = fmt.Sprintf("generation %d recorded by %s", *h.Generation, by)
		}
	}
	if !r.Bumped {
		return fmt.Sprintf("%s; the CRIU plugin bumped to %d in this restore (%s): not bumped again", rec, r.Generation, RestoredEnv)
	}
	return fmt.Sprintf("%s; bumped to %d", rec, r.Generation)
}

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
		Writer: writer,
		RunDir: runDir,
		Scopes: []ScopeRecord{{Name: "", Generation: &gen}},
	})
}

// RestoredEnv is what the C plugin sets in criu's environment once it has
// bumped in a restore: the generation it bumped to. The action scripts criu
// runs inherit it, and so tell that this very restore was bumped.
const RestoredEnv = "GENID_CRIU_RESTORED"

// Restore asks runDir's daemon to bump past the generation recorded in
// imagesDir (by one, if none was), so the restored tasks see a new one;
// unless the C plugin did in this very restore, as RestoredEnv tells an
// action script. Every restore bumps: two restores of one checkpoint must
// not share a generation, even on a host already past the record. Notify
// runs in the program driving criu, which does not see criu's environment:
// with the plugin loaded too, it bumps a second time (harmless).
func Restore(ctx context.Context, imagesDir, runDir string) (*Restored, error) {
	r, err := ReadRecord(imagesDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var host *ScopeRecord
	if r != nil {
		if host = r.Scope(""); host == nil {
			// A container's checkpoint: its scope and its mounts are the
			// C plugin's, in criu; the host's was not used.
			return &Restored{Record: r}, nil
		}
	}
	if _, err := MinForRestore(host); err != nil {
		return nil, err
	}
	c, err := genid.Open(runDir)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	out := &Restored{Record: r}
	if gen, ok := pluginBumped(r, c.Generation()); ok {
		out.Generation = gen
		return out, nil
	}
	a, err := genid.OpenAdmin(runDir)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	var avoid *uint32
	if host != nil {
		avoid = host.Generation
	}
	images, _ := filepath.Abs(imagesDir)
	gen, _, err := a.RestoreFrom(ctx, images, "", avoid, 0)
	if err != nil {
		return nil, err
	}
	out.Generation, out.Bumped = gen, true
	return out, nil
}

// pluginBumped returns the generation the C plugin bumped to in this
// restore, if RestoredEnv says it did: past the record, and not past the
// page (a value inherited from elsewhere is ignored).
func pluginBumped(r *Record, current uint32) (uint32, bool) {
	v, ok := os.LookupEnv(RestoredEnv)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || uint32(n) > current {
		return 0, false
	}
	if r == nil {
		return uint32(n), true
	}
	if h := r.Scope(""); h != nil && h.Generation != nil && uint32(n) <= *h.Generation {
		return 0, false
	}
	return uint32(n), true
}
