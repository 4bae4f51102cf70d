// Package servertest runs the daemon of internal/server inside a test: the
// one helper that the project's in-process tests share, and the engine of
// the public genid/genidtest. Unlike genidtest it takes the daemon's whole
// Config (limits, timeouts), which the daemon's own tests set, and it
// gives them the *server.Server.
package servertest

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/server"
)

// Patience bounds the waits of this package: a condition not met by then
// fails the test (with the daemon's log), rather than hang it.
const Patience = 20 * time.Second

// TB is what this package needs of a test: a testing.TB, or what
// genidtest gives a program (an Example) that has none.
type TB interface {
	Helper()
	TempDir() string
	Cleanup(func())
	Failed() bool
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

var _ TB = testing.TB(nil)

// Daemon is a daemon serving a run directory, in this process.
type Daemon struct {
	*server.Server
	// RunDir is the run directory it serves.
	RunDir string

	t    TB
	stop context.CancelFunc
	done chan error
}

// Start starts a daemon with cfg on dir (a new temporary directory if dir
// is ""); it stops when the test ends. Without cfg.Logger, its log is kept,
// and shown if the test fails.
func Start(t TB, dir string, cfg server.Config) *Daemon {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cfg.RunDir = dir
	if cfg.Logger == nil {
		log := &proctest.Buffer{}
		cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
		t.Cleanup(func() { // after the Stop registered below: the log is whole
			if t.Failed() {
				t.Logf("daemon log (%s):\n%s", dir, log)
			}
		})
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Daemon{Server: srv, RunDir: dir, t: t, stop: cancel, done: make(chan error, 1)}
	go func() { d.done <- srv.Serve(ctx) }()
	t.Cleanup(d.Stop)
	return d
}

// Stop stops the daemon and waits until it has: its sockets are gone, its
// pages keep their values. Stopping twice is harmless. A daemon still
// serving after Patience fails the test, and is left be.
func (d *Daemon) Stop() {
	if d.stop == nil {
		return
	}
	d.stop()
	d.stop = nil
	select {
	case err := <-d.done:
		if err != nil {
			d.t.Errorf("daemon: %v", err)
		}
	case <-time.After(Patience):
		d.t.Errorf("daemon: still serving %v after it was told to stop", Patience)
	}
}

// Abandon lets the daemon be: the test will not wait for it to stop, as
// for a daemon a test found wedged (stopping it would hang).
func (d *Daemon) Abandon() {
	if d.stop != nil {
		d.stop()
		d.stop = nil
	}
}

// WaitRegistered waits until scope (the host's: "") has exactly n
// watchers: to let a client's Watch arrive, or a closed one leave.
func (d *Daemon) WaitRegistered(scope string, n int) {
	d.t.Helper()
	d.waitStatus(fmt.Sprintf("%d watchers", n), scope, func(watchers, _ int) bool { return watchers == n })
}

// WaitAcked waits until no watcher of scope is outdated.
func (d *Daemon) WaitAcked(scope string) {
	d.t.Helper()
	d.waitStatus("no watcher outdated", scope, func(_, outdated int) bool { return outdated == 0 })
}

func (d *Daemon) waitStatus(what, scope string, ok func(watchers, outdated int) bool) {
	d.t.Helper()
	var last string
	if !poll(func() bool {
		st, err := d.Status(scope)
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("%d watchers, %d outdated at generation %d", st.Watchers, st.Outdated, st.Generation)
		return ok(st.Watchers, st.Outdated)
	}) {
		d.t.Fatalf("waited %v for %s in scope %q; last seen: %s", Patience, what, scope, last)
	}
}

// WaitFor polls cond until it holds, and fails the test after Patience,
// saying what it waited for.
func WaitFor(t TB, what string, cond func() bool) {
	t.Helper()
	if !poll(cond) {
		t.Fatalf("waited %v for %s", Patience, what)
	}
}

// Eventually polls f until it returns nil, and fails the test with its
// last error after Patience.
func Eventually(t TB, f func() error) {
	t.Helper()
	var err error
	if !poll(func() bool { err = f(); return err == nil }) {
		t.Fatalf("waited %v: %v", Patience, err)
	}
}

// poll tells whether cond held within Patience: it tries at once, then
// ever less often (up to every 10 ms), not to take the CPU from what it
// waits for.
func poll(cond func() bool) bool {
	pause := 100 * time.Microsecond
	for deadline := time.Now().Add(Patience); !cond(); pause = min(2*pause, 10*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
	}
	return true
}
