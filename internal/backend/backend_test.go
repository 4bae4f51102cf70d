package backend

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	dir := t.TempDir()
	// Nothing to detect here: auto finds nothing.
	opts := Options{SysDir: dir, VMClockPath: filepath.Join(dir, "vmclock0"), Logger: quiet()}
	for list, want := range map[string][]string{
		"auto":                      nil,
		"none":                      nil,
		"":                          nil,
		"vmgenid":                   {"vmgenid"},
		"vmclock":                   {"vmclock"},
		"vmgenid,vmclock":           {"vmgenid", "vmclock"},
		" vmclock , vmgenid ":       {"vmclock", "vmgenid"},
		"vmgenid,vmgenid":           {"vmgenid"},
		"vmgenid,vmclock,vmgenid  ": {"vmgenid", "vmclock"},
	} {
		bs, err := Parse(list, opts)
		if err != nil {
			t.Errorf("Parse(%q): %v", list, err)
			continue
		}
		if got := BackendNames(bs); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("Parse(%q) = %v, want %v", list, got, want)
		}
	}
	for _, list := range []string{"vmgen", "vmgenid,kvm", "vmgenid,", ",", "auto,vmgenid", "none,vmclock", "VMGENID"} {
		if _, err := Parse(list, opts); err == nil {
			t.Errorf("Parse(%q) succeeded", list)
		}
	}
	if _, err := Parse("vmgenid,hyperv", opts); !errors.Is(err, ErrUnknown) {
		t.Errorf("Parse of an unknown name: err = %v, want ErrUnknown", err)
	}
}

// A backend's bumps arrive as events, and a send gives up when the
// backend's context ends (the daemon stopped reading).
func TestSender(t *testing.T) {
	events := make(chan Event, 1)
	ctx, cancel := context.WithCancel(context.Background())
	bump := sender(ctx, events)
	if err := bump(Event{Backend: NameVMClock, Mark: []byte(`{"vm_generation_counter":1}`)}); err != nil {
		t.Fatal(err)
	}
	if ev := <-events; ev.Backend != NameVMClock || string(ev.Mark) != `{"vm_generation_counter":1}` {
		t.Fatalf("event %+v", ev)
	}
	cancel()
	if err := bump(Event{Backend: NameVMClock}); !errors.Is(err, context.Canceled) {
		t.Fatalf("send after the end: %v", err)
	}
}
