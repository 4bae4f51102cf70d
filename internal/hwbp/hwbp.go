// Package hwbp tells whether x86 hardware breakpoints set through ptrace
// fire on this machine: CRIU stops a dumped or restored task with one, and
// where they never fire (some virtual machines accept the breakpoint and
// never deliver the trap) criu hangs unless CRIU_FAULT=130 makes it trap the
// task's system call instead. It is hack/hwbp-probe.c in Go, for genidctl
// doctor.
//
// The probe runs the program it is linked into again as its traced child:
// a process started with ChildEnv set in its environment runs the child's
// loop from this package's init and exits, before its main.
package hwbp

import (
	"os"
	"runtime"
	"time"
)

// Verdict is what the probe found.
type Verdict string

// Verdicts, as hack/hwbp-probe.c prints them.
const (
	Fire  Verdict = "fire"  // the child stopped with SIGTRAP, and DR6 names the breakpoint
	Never Verdict = "never" // the child ran past it (or the pokes failed): criu needs CRIU_FAULT=130
	Error Verdict = "error" // the probe could not tell
	// NotX86: the breakpoints are x86's; CRIU uses none elsewhere.
	NotX86 Verdict = "not x86"
)

// ChildEnv marks the probe's child.
const ChildEnv = "GENID_HWBP_PROBE_CHILD"

// DefaultTimeout is how long the probe waits for the trap.
const DefaultTimeout = 2 * time.Second

// childCalls is how often the child calls the breakpointed function.
const childCalls = 1000000

var calls int

// target is the breakpoint's: not inlined, so it has an address of its own.
//
//go:noinline
func target() { calls++ }

func init() {
	if os.Getenv(ChildEnv) != "1" {
		return
	}
	// The breakpoint is set on the thread that exec'd, the main one: init
	// functions run there, and the loop must not move off it.
	runtime.LockOSThread()
	for range childCalls {
		target()
	}
	if calls != childCalls {
		os.Exit(1)
	}
	os.Exit(0)
}
