// Package testbed reads what the test bed scripts (hack/testbed.sh,
// hack/vm.sh) record about a bed they built: KEY=VALUE lines, such as the
// rootfs's /etc/genid-testbed or the VM's meta.env.
package testbed

import (
	"bufio"
	"os"
	"strings"
)

// ReadFacts returns the KEY=VALUE lines of the file at path; other lines
// are ignored.
func ReadFacts(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m, sc.Err()
}

// CRIUMode says how criu runs in a test bed run, from the facts that
// hack/testbed.sh adds for the run: whether hardware breakpoints fire on
// the machine, and the CRIU_FAULT that criu and runc got for it. A failure
// of criu may be the machine's, so every report of one should carry this.
func CRIUMode(facts map[string]string) string {
	hw, ok := facts["run.hw_breakpoints"]
	if !ok {
		return "criu mode unknown: the facts have no run.hw_breakpoints (not a test bed run?)"
	}
	if d := facts["run.hw_breakpoints.detail"]; d != "" {
		hw += " (" + d + ")"
	}
	return "hardware breakpoints: " + hw + "; CRIU_FAULT=" + facts["run.criu_fault"]
}
