package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/wire"
)

// waits holds the pending wait-watchers requests, at most one per
// connection. No goroutine waits: a wait is looked at again only when it may
// have ended, which the loop and the watchers' notify functions signal:
//   - an ack or a close that leaves no watcher outdated;
//   - a bump, when the waiter is a watcher (it is then interrupted);
//   - the waiter becoming a watcher (watch or attach): it may be outdated;
//   - its timeout (a timer, only for waits that have one);
//   - its connection closing (dropped without a reply).
//
// Asking the scope each time keeps its semantics (Scope.WaitWatchers)
// exactly, without waking anything on every ack as a blocked call would.
type waits struct {
	srv     *Server
	pending atomic.Int32 // len(m), read without the lock on every ack

	mu sync.Mutex
	m  map[*conn]*wait
}

type wait struct {
	h       wire.Header
	timeout time.Duration
	timer   *time.Timer // nil without a timeout
}

// noWait is an already ended context: Scope.WaitWatchers with it answers
// without blocking (context.Canceled: still waiting).
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// start serves a wait-watchers request (loop goroutine).
func (ws *waits) start(c *conn, h wire.Header, timeout time.Duration) {
	ws.mu.Lock()
	if ws.m[c] != nil {
		ws.mu.Unlock()
		c.replyErr(h, fmt.Errorf("wait-watchers: one at a time per connection: %w", genid.ErrLimit))
		return
	}
	w := &wait{h: h, timeout: timeout}
	if err := ws.ended(c); !errors.Is(err, context.Canceled) {
		ws.mu.Unlock()
		c.answerWait(w, err)
		return
	}
	if ws.m == nil {
		ws.m = make(map[*conn]*wait)
	}
	ws.m[c] = w
	ws.pending.Add(1)
	c.waiting.Store(true)
	if timeout > 0 {
		w.timer = time.AfterFunc(timeout, func() { ws.end(c, w, context.DeadlineExceeded) })
	}
	ws.mu.Unlock()
}

// check answers every wait that has ended.
func (ws *waits) check() {
	if ws.pending.Load() == 0 {
		return
	}
	type answer struct {
		c   *conn
		w   *wait
		err error
	}
	var answers []answer
	ws.mu.Lock()
	for c, w := range ws.m {
		if err := ws.ended(c); !errors.Is(err, context.Canceled) {
			ws.removeLocked(c, w)
			answers = append(answers, answer{c, w, err})
		}
	}
	ws.mu.Unlock()
	for _, a := range answers {
		a.c.answerWait(a.w, a.err)
	}
}

// ended asks the scope whether c's wait has ended; context.Canceled means
// not yet. The waiter's watcher is looked up each time, not when the wait
// starts: a connection may watch while its wait is pending, and must not
// then wait on itself.
func (ws *waits) ended(c *conn) error {
	return ws.srv.scope.WaitWatchers(noWait, c.watcher.Load())
}

// end answers w with err unless it was answered already.
func (ws *waits) end(c *conn, w *wait, err error) {
	ws.mu.Lock()
	if ws.m[c] != w {
		ws.mu.Unlock()
		return
	}
	ws.removeLocked(c, w)
	ws.mu.Unlock()
	c.answerWait(w, err)
}

// drop forgets the wait of a closing connection.
func (ws *waits) drop(c *conn) {
	if ws.pending.Load() == 0 {
		return
	}
	ws.mu.Lock()
	if w := ws.m[c]; w != nil {
		ws.removeLocked(c, w)
	}
	ws.mu.Unlock()
}

func (ws *waits) removeLocked(c *conn, w *wait) {
	delete(ws.m, c)
	ws.pending.Add(-1)
	c.waiting.Store(false)
	if w.timer != nil {
		w.timer.Stop()
	}
}

func (c *conn) answerWait(w *wait, err error) {
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("wait-watchers: %d outdated after %v: %w", c.srv.scope.Outdated(), w.timeout, genid.ErrTimeout)
	}
	if err != nil {
		c.replyErr(w.h, err)
		return
	}
	c.reply(w.h, nil)
}
