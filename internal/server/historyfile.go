package server

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/history"
)

// historyQueue bounds the changes waiting for the writer; past it, a change
// is not written (the log says so once). historyEvery is the least time
// between two writes: in a storm of bumps, the changes gather meanwhile,
// and each entry's latest state is written once, whatever the rate.
const (
	historyQueue = 4096
	historyEvery = 20 * time.Millisecond
)

// historyWriter keeps the history's file, off the loop: the loop hands it
// each entry as it changes (put), and it writes the latest state of the
// entries that changed, as lines appended to the file: at once, unless it
// wrote less than historyEvery ago (then when that has passed); it rewrites
// the file from its own copy of the ring once the file has twice as many
// lines as the ring entries. The loop spends a copy of an entry per change;
// a daemon that dies loses at most historyEvery's changes. The appends are
// raw system calls (sys.go), which leave the runtime's sysmon asleep, and
// bumps further apart than historyEvery arm no timer.
type historyWriter struct {
	log     *slog.Logger
	statefd int
	ch      chan genid.HistoryEntry
	done    sync.WaitGroup
	dropped bool             // owned by the loop
	now     func() time.Time // the writer's clock: time.Now, or a test's

	// Owned by the writer's goroutine.
	file   *os.File
	buf    *bufio.Writer
	lines  int
	mirror *history.Ring
	failed bool
}

// startHistoryWriter starts the writer of f, which holds lines lines and
// the entries of ring (copied: the writer keeps its own), on the clock now.
func startHistoryWriter(log *slog.Logger, statefd int, f *os.File, lines int, ring *history.Ring, now func() time.Time) *historyWriter {
	w := &historyWriter{log: log, statefd: statefd, now: now, ch: make(chan genid.HistoryEntry, historyQueue),
		file: f, buf: bufio.NewWriterSize(rawFile{f}, 16<<10), lines: lines, mirror: history.New(ring.Size())}
	for _, e := range ring.List(nil, 0) {
		w.mirror.Keep(e)
	}
	w.done.Go(w.run)
	return w
}

// put queues e's state, never blocking.
func (w *historyWriter) put(e *genid.HistoryEntry) {
	select {
	case w.ch <- history.Clone(e):
	default:
		if !w.dropped {
			w.dropped = true
			w.log.Warn("history file behind: a change not written", "seq", e.Seq)
		}
	}
}

// close writes what is queued, then closes the file.
func (w *historyWriter) close() {
	close(w.ch)
	w.done.Wait()
}

func (w *historyWriter) run() {
	defer func() { w.file.Close() }()
	changed := make(map[uint64]bool) // seqs to write
	timer := time.NewTimer(0)
	<-timer.C
	waiting := false // for the timer
	var last time.Time
	flush := func() {
		if err := w.write(changed); err != nil && !w.failed {
			w.failed = true
			w.log.Warn("history file not written: kept in memory", "err", err)
		}
		clear(changed)
		last = w.now()
	}
	for {
		select {
		case e, ok := <-w.ch:
			if !ok {
				flush()
				return
			}
			if w.mirror.Keep(e) {
				changed[e.Seq] = true
			}
			if len(w.ch) > 0 || waiting || len(changed) == 0 {
				continue // more to gather first
			}
			if wait := historyEvery - w.now().Sub(last); wait > 0 {
				timer.Reset(wait)
				waiting = true
				continue
			}
			flush()
		case <-timer.C:
			waiting = false
			flush()
		}
	}
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

// write appends the lines of the entries changed, oldest first, or
// rewrites the file when it has grown enough. Line by line, through a
// buffer of its own: the writer holds little at any time.
func (w *historyWriter) write(changed map[uint64]bool) error {
	if len(changed) == 0 {
		return nil
	}
	if history.Compact(w.lines+len(changed), w.mirror.Size()) {
		return w.compact()
	}
	w.buf.Reset(rawFile{w.file})
	n, err := w.writeLines(func(e *genid.HistoryEntry) bool { return changed[e.Seq] })
	w.lines += n
	return err
}

// writeLines writes the lines of the mirror's entries that keep selects
// to w.buf, and flushes it.
func (w *historyWriter) writeLines(keep func(e *genid.HistoryEntry) bool) (n int, err error) {
	w.mirror.Range(func(e *genid.HistoryEntry) bool {
		if !keep(e) {
			return true
		}
		var line []byte
		if line, err = history.Line(e); err == nil {
			_, err = w.buf.Write(line)
			n++
		}
		return err == nil
	})
	if err == nil {
		err = w.buf.Flush()
	}
	return n, err
}

// compact rewrites the file with the mirror's entries, one line each.
func (w *historyWriter) compact() error {
	tmp := historyFile + ".tmp"
	fd, err := unix.Openat(w.statefd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_APPEND|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	f := os.NewFile(uintptr(fd), historyFile)
	w.buf.Reset(rawFile{f})
	n, err := w.writeLines(func(*genid.HistoryEntry) bool { return true })
	if err != nil {
		f.Close()
		return fmt.Errorf("history: %w", err)
	}
	if err := unix.Renameat(w.statefd, tmp, w.statefd, historyFile); err != nil {
		f.Close()
		return fmt.Errorf("history: %w", err)
	}
	w.file.Close()
	w.file, w.lines = f, n
	return nil
}
