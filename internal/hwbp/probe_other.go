//go:build !amd64

package hwbp

import "time"

// Probe reports NotX86: CRIU sets no hardware breakpoint elsewhere.
func Probe(timeout time.Duration) (Verdict, string) {
	return NotX86, "CRIU uses x86 debug registers only"
}
