// Package genid is the client of genid, the system generation counter: a
// u32 that grows each time the machine (a VM) or a container is restored
// from a snapshot or cloned, so that processes rebuild what must not be
// shared between clones (RNG state, UUIDs, nonces, session keys).
//
// Open maps the counter's page and returns a Client. A process sees the
// generation of its scope: the host's at DefaultRunDir (/run/genid), or,
// inside a container that has a scope, the container's own counter, mounted
// at the same place.
//
// # Three ways to use it
//
// Check it on a hot path. Client.Generation is one atomic load from the
// mapped page, with no system call: compare it with the generation the
// cached secrets were made at before using them, and rebuild them if it
// moved (see the example of Client.Generation).
//
// Wait for it. Client.Watch registers a Watcher; the daemon counts it as
// outdated from each new generation until it acks. Watcher.Wait blocks
// until the generation changes: rebuild, then Watcher.Ack. An event loop
// that must never block polls Watcher.Fd instead, beside its other
// descriptors, and takes the generation with Watcher.TryWait and acks with
// Watcher.AckQuiet. A thread that needs only the wake-up, not to be waited
// for, sleeps on the page itself with Client.WaitChange: no connection and
// nothing registered with the daemon.
//
// Hold traffic until everyone rebuilt. WaitWatchers (of a Client, or of a
// Watcher for an orchestrator that watches too) returns once no watcher of
// the scope is outdated, or fails with ErrTimeout.
//
// # Calls and errors
//
// Every call that can block takes a context: it gives up when the context
// ends, with the context's error. Open does not block: the daemon is
// dialed on first use, and again after it restarted, by itself. Errors
// wrap their cause with %w: a refusal of the daemon matches one of the Err
// variables with errors.Is (ErrStale, ErrTimeout, ErrPermission...), as do
// ErrUnreachable, ErrClosed and the system's and the context's errors.
//
// Admin, on the daemon's admin socket, is for administrators: it bumps and
// manages scopes. Package genidtest runs the real daemon inside a test,
// without root, so that an application's own tests can check that it
// rebuilds. PROTOCOL.md in the repository specifies what the client speaks.
package genid
