package checkpoint

import (
	"errors"
	"io/fs"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7"
)

// countingNotify counts the PostDump calls that reach the caller's Notify.
type countingNotify struct {
	criu.NoNotify
	postDumps int
}

func (c *countingNotify) PostDump() error {
	c.postDumps++
	return nil
}

// Notify's PostDump records the generation of the daemon's page, then
// hands on to the caller's Notify. The page outlives the daemon, so a dump
// while the daemon is down still records it; a dump where no daemon ever
// ran (no page) fails there, before the caller's step.
func TestNotifyPostDump(t *testing.T) {
	d := startDaemon(t, 4)
	images := t.TempDir()
	inner := &countingNotify{}
	if err := NewNotify(inner, images, d.RunDir).PostDump(); err != nil {
		t.Fatal(err)
	}
	r, err := ReadRecord(images)
	if err != nil || r.Writer != "go-criu" || r.Scope("") == nil || r.Scope("").Generation == nil || *r.Scope("").Generation != 4 {
		t.Fatalf("record after PostDump: %+v %v", r, err)
	}
	if inner.postDumps != 1 {
		t.Fatalf("the caller's PostDump ran %d times", inner.postDumps)
	}

	d.Close()
	if err := NewNotify(inner, images, d.RunDir).PostDump(); err != nil || inner.postDumps != 2 {
		t.Fatalf("PostDump with the daemon down: %v, the caller's ran %d times", err, inner.postDumps)
	}
	err = NewNotify(inner, t.TempDir(), t.TempDir()).PostDump()
	if !errors.Is(err, fs.ErrNotExist) || inner.postDumps != 2 {
		t.Fatalf("PostDump without a page: %v, the caller's ran %d times", err, inner.postDumps)
	}
}
