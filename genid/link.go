package genid

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/wire"
)

// errLinkDown means the connection broke while a call was in flight.
var errLinkDown = errors.New("genid: connection to the daemon lost")

// link is one connection to the daemon. A goroutine reads frames, handing
// replies to their callers by id and events to the owner.
type link struct {
	nc      *net.UnixConn
	onEvent func(gen, flags uint32)

	mu      sync.Mutex
	nextID  uint32
	pending map[uint32]*pendingCall
	err     error
	done    chan struct{}

	// wmu orders writes, and is never held by the reader: the daemon stops
	// reading a client whose replies pile up, so a write can block until
	// the reader has drained them.
	wmu sync.Mutex
}

type pendingCall struct {
	req   []byte
	reply chan wire.Frame
	sent  bool // under wmu: written on this connection
}

// connectRetry is how long after its socket file appeared dial keeps
// trying a socket that refuses: a daemon binds its path a moment before it
// listens, and a client started along with it can come in between. (The
// bound name cannot appear any later: it is how the CRIU plugin tells the
// daemon's connections.) An older socket that refuses is stale, its daemon
// gone, and is reported at once: so is a stopped systemd socket unit's
// (RUN_DIR/genid.sock made by a socket unit listens before any client
// comes, and so never refuses while the unit runs).
const connectRetry = time.Second

func dial(ctx context.Context, path string, onEvent func(gen, flags uint32)) (*link, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	for start := time.Now(); errors.Is(err, syscall.ECONNREFUSED) && justBound(path) && time.Since(start) < connectRetry && ctx.Err() == nil; {
		time.Sleep(time.Millisecond)
		c, err = d.DialContext(ctx, "unix", path)
	}
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		// The socket is there, but not for this user (the admin socket).
		return nil, &Error{Code: CodePermission, Msg: fmt.Sprintf("permission denied: %s is not for this user (uid %d): %v", path, syscall.Getuid(), err)}
	}
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", ErrUnreachable, path, err)
	}
	l := &link{
		nc:      c.(*net.UnixConn),
		onEvent: onEvent,
		pending: make(map[uint32]*pendingCall),
		done:    make(chan struct{}),
	}
	go l.read()
	return l, nil
}

// justBound tells whether the socket file at path was made (or changed)
// within connectRetry.
func justBound(path string) bool {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return false
	}
	return time.Since(time.Unix(st.Ctim.Unix())) < connectRetry
}

func (l *link) read() {
	for {
		f, err := wire.ReadFrame(l.nc, wire.MaxReplyPayload)
		if err != nil {
			l.fail(err)
			return
		}
		if f.Op == wire.OpRefused {
			// Refused at connect (a limit): the daemon closes the
			// connection, and its calls fail with why.
			l.fail(&Error{Code: Code(f.Status), Msg: string(f.Payload)})
			return
		}
		if f.Op == wire.OpEvent {
			p, err := wire.ParsePair(f.Payload)
			if err != nil {
				l.fail(fmt.Errorf("bad event: %w", err))
				return
			}
			if p.B&wire.FlagRestored != 0 {
				// This connection replaced a checkpointed one: whatever we
				// had asked was lost with it, so ask again (not from this
				// goroutine, which must go on reading the replies).
				go l.resend()
			}
			if l.onEvent != nil {
				l.onEvent(p.A, p.B)
			}
			continue
		}
		l.mu.Lock()
		pc := l.pending[f.ID]
		delete(l.pending, f.ID)
		l.mu.Unlock()
		if pc != nil {
			pc.reply <- f
		}
	}
}

// resend writes again the requests written before the restore event was
// read. One not written yet is left to its call. One written after the
// restore but before its event was read goes twice: harmless for every
// request but a bump, which then counts twice (one too many is harmless;
// the client cannot tell the two apart).
func (l *link) resend() {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	var again []*pendingCall
	for _, pc := range l.pending {
		if pc.sent {
			again = append(again, pc)
		}
	}
	l.mu.Unlock()
	for _, pc := range again {
		if _, err := l.nc.Write(pc.req); err != nil {
			return // read fails next and fails the calls
		}
	}
}

// send writes a call's request.
func (l *link) send(pc *pendingCall) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	pc.sent = true
	_, err := l.nc.Write(pc.req)
	return err
}

func (l *link) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return
	}
	l.err = err
	l.nc.Close()
	close(l.done)
}

// downErr is why the calls of a link that is down fail: the daemon's
// refusal of the connection, or errLinkDown. The caller holds l.mu.
func (l *link) downErr() error {
	var refused *Error
	if errors.As(l.err, &refused) {
		return refused
	}
	return errLinkDown
}

// sendErr is why a call whose request could not be written fails. A
// daemon that refused the connection at connect hung up before the
// request went: its refusal is in the socket, and the reader, about to
// read it (or the end), says why.
func (l *link) sendErr(err error) error {
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
		select {
		case <-l.done:
		case <-time.After(time.Second):
		}
	}
	l.fail(err)
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.downErr()
}

func (l *link) alive() bool {
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

func (l *link) close() { l.fail(net.ErrClosed) }

// post sends a request without waiting for its reply: it is not pending,
// so it is not sent again after a restore either (a lost quiet ack leaves
// its watcher outdated, which the restore's new generation does anyway).
func (l *link) post(op wire.Op, payload []byte) error {
	l.mu.Lock()
	if l.err != nil {
		defer l.mu.Unlock()
		return l.downErr()
	}
	l.nextID++
	pc := &pendingCall{req: wire.Append(nil, wire.Header{Op: op, ID: l.nextID}, payload)}
	l.mu.Unlock()
	if err := l.send(pc); err != nil {
		return l.sendErr(err)
	}
	return nil
}

// call sends a request and waits for its reply. A non-OK status comes back
// as an *Error. A link whose call is abandoned (ctx ended) is closed, since
// the daemon may still be working on the request.
func (l *link) call(ctx context.Context, op wire.Op, payload []byte) (wire.Frame, error) {
	pc := &pendingCall{reply: make(chan wire.Frame, 1)}
	l.mu.Lock()
	if l.err != nil {
		defer l.mu.Unlock()
		return wire.Frame{}, l.downErr()
	}
	l.nextID++
	id := l.nextID
	pc.req = wire.Append(nil, wire.Header{Op: op, ID: id}, payload)
	l.pending[id] = pc
	l.mu.Unlock()
	if err := l.send(pc); err != nil {
		return wire.Frame{}, l.sendErr(err)
	}
	select {
	case f := <-pc.reply:
		if f.Status != wire.StatusOK {
			return f, &Error{Code: Code(f.Status), Msg: string(f.Payload)}
		}
		return f, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		return wire.Frame{}, l.downErr()
	case <-ctx.Done():
		l.close()
		return wire.Frame{}, ctx.Err()
	}
}

// session keeps a link to the daemon, dialing again after a daemon restart.
// setup runs on each new link before it is used (a watcher registers there).
type session struct {
	path    string
	setup   func(context.Context, *link) error
	onEvent func(gen, flags uint32)

	mu     sync.Mutex
	l      *link
	closed bool
}

// current returns a live link, dialing once if there is none.
func (s *session) current(ctx context.Context) (*link, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.l != nil && s.l.alive() {
		return s.l, nil
	}
	l, err := dial(ctx, s.path, s.onEvent)
	if err != nil {
		return nil, err
	}
	if s.setup != nil {
		if err := s.setup(ctx, l); err != nil {
			l.close()
			return nil, err
		}
	}
	s.l = l
	return l, nil
}

// call sends one request. Idempotent requests are sent again on a new
// connection when the old one broke mid-call (daemon restart). Errors from
// the daemon come back as it worded them; local ones name the op.
func (s *session) call(ctx context.Context, op wire.Op, payload []byte, idempotent bool) (wire.Frame, error) {
	for attempt := 0; ; attempt++ {
		l, err := s.current(ctx)
		if err != nil {
			return wire.Frame{}, fmt.Errorf("%s: %w", op, err)
		}
		f, err := l.call(ctx, op, payload)
		if errors.Is(err, errLinkDown) && idempotent && attempt < 3 {
			sleepCtx(ctx, time.Duration(attempt)*50*time.Millisecond)
			continue
		}
		var daemonErr *Error
		if err != nil && !errors.As(err, &daemonErr) {
			return f, fmt.Errorf("%s: %w", op, err)
		}
		return f, err
	}
}

// send sends one request whose reply nobody waits for (a quiet ack): a
// reply that comes all the same, a refusal, is dropped by the reader.
func (s *session) send(ctx context.Context, op wire.Op, payload []byte) error {
	l, err := s.current(ctx)
	if err == nil {
		err = l.post(op, payload)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.l != nil {
		s.l.close()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
