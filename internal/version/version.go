// Package version is genid's version, as the daemon reports it in its
// status and metrics and genidctl prints it.
package version

import (
	"runtime/debug"
	"sync"
)

// version is set at build time: go build -ldflags "-X
// github.com/genid-project/genid/internal/version.version=V" (the Makefile
// gives `git describe`).
var version string

// String returns the version: the one set at build time, else the module's
// (go install ...@vX), else the commit the build recorded, else "devel".
// Worked out once: every status reply carries it.
var String = sync.OnceValue(find)

func find() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			return "devel-" + s.Value[:min(12, len(s.Value))]
		}
	}
	return "devel"
}
