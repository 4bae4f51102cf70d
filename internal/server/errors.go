package server

import (
	"errors"

	"github.com/genid-project/genid/internal/scope"
	"github.com/genid-project/genid/internal/wire"
)

// The daemon's own refusals, each with its protocol result code (statusOf).
var (
	errBadRequest = errors.New("bad request")
	errPermission = errors.New("permission denied")
	errTimeout    = errors.New("timed out")
	errLimit      = errors.New("limit reached")
	errNotWatcher = errors.New("not a watcher")
	errNotFound   = errors.New("not found")
	errExists     = errors.New("exists already")
	errInternal   = errors.New("internal error")
)

var statuses = []struct {
	err error
	st  wire.Status
}{
	{errBadRequest, wire.StatusBadRequest},
	{errPermission, wire.StatusPermission},
	{errTimeout, wire.StatusTimeout},
	{errLimit, wire.StatusLimit},
	{errNotWatcher, wire.StatusNotWatcher},
	{errNotFound, wire.StatusNotFound},
	{errExists, wire.StatusExists},
	{scope.ErrStale, wire.StatusStale},
	{scope.ErrOverflow, wire.StatusOverflow},
	{scope.ErrInterrupted, wire.StatusInterrupted},
	{scope.ErrBusy, wire.StatusLimit},
	{scope.ErrClosed, wire.StatusNotWatcher},
}

// statusOf maps an error to the result code that reports it; anything the
// daemon did not foresee is internal.
func statusOf(err error) wire.Status {
	for _, s := range statuses {
		if errors.Is(err, s.err) {
			return s.st
		}
	}
	return wire.StatusInternal
}
