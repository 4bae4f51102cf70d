// Package genid is the client of genid, the system generation counter: a
// u32 that grows each time the machine (a VM) or a container is restored
// from a snapshot or cloned, so that processes rebuild what must not be
// shared between clones (RNG state, UUIDs, nonces, session keys).
//
// There are three ways to use it:
//
//   - check it on a hot path: Open maps the page, and Client.Generation is
//     one atomic load, with no system call. Compare it with the generation
//     the cached secrets were made at.
//   - wait for it: Client.Watch registers a watcher; Watcher.Wait blocks
//     until the generation changes; rebuild, then Watcher.Ack. The daemon
//     counts a watcher as outdated until it acks.
//   - hold traffic until everyone rebuilt: Client.WaitWatchers returns once
//     no watcher is outdated.
//
// A process sees the generation of its scope: the host's at /run/genid, or
// inside a container that has one, its own counter (mounted at the same
// place). Admin, on the daemon's admin socket, is for administrators: it
// bumps and manages scopes. Package genidtest runs the real daemon inside a
// test. PROTOCOL.md in the repository specifies what the client speaks.
package genid
