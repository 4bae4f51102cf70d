package server_test

import (
	"strings"
	"testing"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/server"
	"github.com/genid-project/genid/internal/wire"
)

// A restore's images dir is in its history entry: as sent, or "..." and
// its end when it is longer than a request carries; one that is not text
// is left out, and the restore still happens.
func TestRestoreImagesInHistory(t *testing.T) {
	d, log := startLog(t, "", server.Config{})
	a := d.admin(t)
	last := func() *genid.RestoreInfo {
		t.Helper()
		list, err := a.History(ctx(t), genid.HistoryOptions{Max: 1})
		if err != nil || len(list) != 1 || list[0].Restore == nil {
			t.Fatalf("history: %+v, %v", list, err)
		}
		return list[0].Restore
	}
	avoid := uint32(3)
	if g, _, err := a.RestoreFrom(ctx(t), "/var/lib/ckpt/web", "", &avoid, 0); err != nil || g != 4 {
		t.Fatalf("restore: %d, %v", g, err)
	}
	if r := last(); r.ImagesDir != "/var/lib/ckpt/web" || r.RecordedGeneration == nil || *r.RecordedGeneration != 3 {
		t.Fatalf("restore's entry: %+v", r)
	}

	long := "/" + strings.Repeat("é", wire.MaxImagesDir) // two bytes a rune: cut amid one
	if _, _, err := a.RestoreFrom(ctx(t), long, "", nil, 0); err != nil {
		t.Fatalf("restore from a long dir: %v", err)
	}
	if r := last(); !strings.HasPrefix(r.ImagesDir, "...é") || !strings.HasSuffix(long, r.ImagesDir[3:]) || len(r.ImagesDir) > wire.MaxImagesDir {
		t.Fatalf("a long images dir in the history: %q (%d bytes)", r.ImagesDir, len(r.ImagesDir))
	}

	if g, _, err := a.RestoreFrom(ctx(t), "/bad\xffdir", "", nil, 0); err != nil || g != 6 {
		t.Fatalf("restore from a dir that is not text: %d, %v", g, err)
	}
	if r := last(); r.ImagesDir != "" {
		t.Fatalf("a dir that is not text in the history: %q", r.ImagesDir)
	}
	// The log tells each restore's bump with what the entry has of it.
	n := 0
	for _, l := range strings.Split(log.String(), "\n") {
		if !strings.Contains(l, "msg=bumped") {
			continue
		}
		want := []bool{true, true, false}[min(n, 2)]
		if strings.Contains(l, "images_dir=") != want || strings.Contains(l, "recorded_generation=3") != (n == 0) {
			t.Errorf("restore %d's log line: %s", n, l)
		}
		n++
	}
	if n != 3 {
		t.Errorf("%d bumps logged, want 3", n)
	}
}
