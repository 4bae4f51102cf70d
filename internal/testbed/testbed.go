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
