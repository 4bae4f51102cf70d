package genid

import (
	"errors"

	"github.com/genid-project/genid/genid/wire"
)

// Error is an error with one of the protocol's result codes. Errors returned
// by this package match the sentinels below with errors.Is, whether they
// arose in this process or came from the daemon.
type Error struct {
	Code wire.Status
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

// The documented failures. See PROTOCOL.md for the numeric codes.
var (
	ErrStale       = &Error{wire.StatusStale, "stale or wrong generation"}
	ErrPermission  = &Error{wire.StatusPermission, "permission denied: bump needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in the daemon's user namespace"}
	ErrTimeout     = &Error{wire.StatusTimeout, "timed out waiting for watchers"}
	ErrInterrupted = &Error{wire.StatusInterrupted, "interrupted: the caller itself is outdated"}
	ErrOverflow    = &Error{wire.StatusOverflow, "generation overflow: the counter cannot grow any further"}
	ErrLimit       = &Error{wire.StatusLimit, "daemon limit reached"}
	ErrNotWatcher  = &Error{wire.StatusNotWatcher, "not a watcher"}
	ErrNotFound    = &Error{wire.StatusNotFound, "not found"}
	ErrBadRequest  = &Error{wire.StatusBadRequest, "bad request"}
)

// ErrClosed is returned by operations on a closed watcher or client.
var ErrClosed = errors.New("genid: closed")

// ErrWouldBlock is returned by a non-blocking read while the watcher is up to date.
var ErrWouldBlock = errors.New("genid: would block: no new generation")

// StatusOf maps an error to the protocol result code that reports it.
func StatusOf(err error) wire.Status {
	if err == nil {
		return wire.StatusOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return wire.StatusInternal
}
