package server

import (
	"strings"
	"testing"

	"github.com/genid-project/genid/internal/wire"
)

// A restored scope takes its recorded name if it is free, else the name
// with the first free number, cut to fit the longest name if need be.
func TestFreeName(t *testing.T) {
	long := strings.Repeat("x", wire.MaxName-2) // "-2" fits
	longest := strings.Repeat("y", wire.MaxName)
	s := &Server{scopes: map[string]*scopeState{}}
	for _, name := range []string{"", "c1", "c1-2", "restored", long, longest, longest[:wire.MaxName-2] + "-2"} {
		s.scopes[name] = &scopeState{name: name}
	}
	for _, c := range []struct{ hint, want string }{
		{"free", "free"},
		{"", "restored-2"},
		{"c1", "c1-3"},
		{long, long + "-2"},
		{longest, longest[:wire.MaxName-2] + "-3"},
	} {
		if got := s.freeName(c.hint); got != c.want {
			t.Errorf("freeName(%q) = %q, want %q", c.hint, got, c.want)
		}
	}
}
