package server

import (
	"bufio"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/history"
)

// historyEvery is the least time between two writes of the history's
// file: in a storm of bumps, the changes gather meanwhile, and each entry's
// latest state is written once, whatever the rate.
const historyEvery = 20 * time.Millisecond

// historyStore keeps the history's file. The loop marks each entry that
// changes (persist), and writes the marked entries' latest state from the
// ring, as lines appended to the file, once it has served the events at
// hand: at once, unless it wrote less than historyEvery ago (then when
// that has passed). It rewrites the file from the ring once the file has
// twice as many lines as the ring entries. A daemon that dies loses at
// most historyEvery's changes.
//
// It runs on the loop, after the replies of the events that changed the
// entries: a goroutine of its own woke a second thread for each bump, which
// took the CPU a woken watcher or a restored process was about to run on.
// The appends are raw system calls to the run dir's tmpfs (sys.go), and
// bumps further apart than historyEvery arm no timer of the runtime.
type historyStore struct {
	statefd int
	file    *os.File
	buf     *bufio.Writer
	lines   int             // in the file
	changed map[uint64]bool // seqs to write
	last    time.Duration   // the last write, on the loop's clock
	wrote   bool            // last is set
	timer   timer
	failed  bool // told in the log
}

// newHistoryStore keeps f, which holds lines lines, in the state directory
// statefd.
func newHistoryStore(statefd int, f *os.File, lines int) *historyStore {
	return &historyStore{statefd: statefd, file: f, buf: bufio.NewWriterSize(rawFile{f}, 16<<10), lines: lines,
		changed: make(map[uint64]bool), timer: newTimer(timerHistory, nil, nil)}
}

// mark notes that entry seq changed, and returns when, at now, the file
// is to be written: now, or historyEvery after the last write.
func (f *historyStore) mark(seq uint64, now time.Duration) time.Duration {
	f.changed[seq] = true
	if f.wrote && f.last+historyEvery > now {
		return f.last + historyEvery
	}
	return now
}

// write appends the lines of the entries of ring that changed, oldest
// first, or rewrites the file when it has grown enough. Line by line,
// through a buffer of its own: it holds little at any time.
func (f *historyStore) write(ring *history.Ring, now time.Duration) error {
	if len(f.changed) == 0 {
		return nil
	}
	f.last, f.wrote = now, true
	defer clear(f.changed)
	if history.Compact(f.lines+len(f.changed), ring.Size()) {
		return f.compact(ring)
	}
	f.buf.Reset(rawFile{f.file})
	n, err := f.writeLines(ring, func(e *genid.HistoryEntry) bool { return f.changed[e.Seq] })
	f.lines += n
	return err
}

// writeLines writes the lines of ring's entries that keep selects to f.buf,
// and flushes it.
func (f *historyStore) writeLines(ring *history.Ring, keep func(e *genid.HistoryEntry) bool) (n int, err error) {
	ring.Range(func(e *genid.HistoryEntry) bool {
		if !keep(e) {
			return true
		}
		var line []byte
		if line, err = history.Line(e); err == nil {
			_, err = f.buf.Write(line)
			n++
		}
		return err == nil
	})
	if err == nil {
		err = f.buf.Flush()
	}
	return n, err
}

// compact rewrites the file with ring's entries, one line each.
func (f *historyStore) compact(ring *history.Ring) error {
	tmp := historyFile + ".tmp"
	fd, err := unix.Openat(f.statefd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_APPEND|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	nf := os.NewFile(uintptr(fd), historyFile)
	f.buf.Reset(rawFile{nf})
	n, err := f.writeLines(ring, func(*genid.HistoryEntry) bool { return true })
	if err != nil {
		nf.Close()
		return fmt.Errorf("history: %w", err)
	}
	if err := unix.Renameat(f.statefd, tmp, f.statefd, historyFile); err != nil {
		nf.Close()
		return fmt.Errorf("history: %w", err)
	}
	f.file.Close()
	f.file, f.lines = nf, n
	return nil
}

// rawFile writes with raw system calls: a write to the run dir's tmpfs
// returns at once.
type rawFile struct{ f *os.File }

func (r rawFile) Write(b []byte) (int, error) {
	fd := r.f.Fd()
	n := 0
	for len(b) > 0 {
		m, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return n, errno
		}
		b = b[m:]
		n += int(m)
	}
	return n, nil
}
