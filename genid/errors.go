package genid

import (
	"errors"
	"fmt"
)

// Code is a result code of the genid protocol (PROTOCOL.md, "Result
// codes"): what a daemon's refusal means, whatever its message says.
type Code uint16

// The result codes. Their numbers are the protocol's, stable across
// versions.
const (
	CodeOK          Code = 0
	CodeBadRequest  Code = 1  // malformed frame or payload
	CodeUnknownOp   Code = 2  // op not known to this daemon (or not on this socket)
	CodeStale       Code = 3  // ack of a generation that is not the current one
	CodePermission  Code = 4  // the request needs the admin socket, or an admin
	CodeTimeout     Code = 5  // wait-watchers timed out
	CodeInterrupted Code = 6  // wait-watchers by a watcher that is itself outdated
	CodeOverflow    Code = 7  // the generation cannot grow any further
	CodeLimit       Code = 8  // a limit of the daemon was reached
	CodeVersion     Code = 9  // unsupported protocol version
	CodeNotWatcher  Code = 10 // the op needs a watcher connection
	CodeNotFound    Code = 11 // no such connection or scope
	CodeInternal    Code = 12 // the daemon failed; see its log
	CodeExists      Code = 13 // a scope of that name exists already
)

var codeNames = map[Code]string{
	CodeOK: "ok", CodeBadRequest: "bad request", CodeUnknownOp: "unknown op", CodeStale: "stale generation",
	CodePermission: "permission denied", CodeTimeout: "timeout", CodeInterrupted: "interrupted",
	CodeOverflow: "generation overflow", CodeLimit: "limit reached", CodeVersion: "unsupported version",
	CodeNotWatcher: "not a watcher", CodeNotFound: "not found", CodeInternal: "internal error",
	CodeExists: "exists",
}

// String is the code's short name.
func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// Error is a refusal with one of the protocol's result codes. Errors
// returned by this package match the sentinels below with errors.Is,
// whether they arose in this process or came from the daemon.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return e.Code.String()
	}
	return e.Msg
}

// Is matches errors by code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// The documented refusals, one per code, for errors.Is.
var (
	ErrBadRequest  = &Error{CodeBadRequest, "bad request"}
	ErrUnknownOp   = &Error{CodeUnknownOp, "unknown op"}
	ErrStale       = &Error{CodeStale, "stale or wrong generation"}
	ErrPermission  = &Error{CodePermission, "permission denied: the request needs an administrator on the admin socket"}
	ErrTimeout     = &Error{CodeTimeout, "timed out waiting for watchers"}
	ErrInterrupted = &Error{CodeInterrupted, "interrupted: the caller itself is outdated"}
	ErrOverflow    = &Error{CodeOverflow, "generation overflow: the counter cannot grow any further"}
	ErrLimit       = &Error{CodeLimit, "daemon limit reached"}
	ErrNotWatcher  = &Error{CodeNotWatcher, "not a watcher"}
	ErrNotFound    = &Error{CodeNotFound, "not found"}
	ErrInternal    = &Error{CodeInternal, "internal error"}
	ErrExists      = &Error{CodeExists, "exists already"}
)

// ErrClosed is returned by operations on a closed watcher or client.
var ErrClosed = errors.New("genid: closed")

// ErrWouldBlock is returned by a non-blocking read while the watcher is up to date.
var ErrWouldBlock = errors.New("genid: would block: no new generation")

// ErrUnreachable wraps failures to reach the daemon's socket; the
// system's error (syscall.ENOENT, syscall.ECONNREFUSED, a context's error)
// is wrapped too.
var ErrUnreachable = errors.New("genid daemon unreachable")

// ErrUntrusted is returned by Open and OpenAdmin for a run directory that
// another user could have made: not a directory, neither root's nor this
// user's, or writable by others. A missing one is an error matching
// fs.ErrNotExist instead.
var ErrUntrusted = errors.New("not trusted")
