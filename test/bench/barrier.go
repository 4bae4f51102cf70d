package main

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/internal/wire"
)

// barrierGenid: N watchers that ack the moment they read the event; a
// client bumps and asks wait-watchers in the same write. The round ends
// when the reply to wait-watchers arrives.
func barrierGenid(b *bench, d *daemon, n int, switches *[]float64) (*arena, error) {
	h, ctl, err := genidWatchers(b, d, n, "genid-ack")
	if err != nil {
		return nil, err
	}
	bump := hostScope(wire.Bump{Reason: "bench"}.Encode())
	wait := hostScope(wire.U32(60_000)) // ms
	id := uint32(0)
	a := &arena{h: h, close: func() { unix.Close(ctl) }}
	a.round = func() (int64, error) {
		bumpID, waitID := id+1, id+2
		id += 2
		req := wire.Append(nil, wire.Header{Op: wire.OpBump, ID: bumpID}, bump)
		req = wire.Append(req, wire.Header{Op: wire.OpWaitWatchers, ID: waitID}, wait)
		cs0, _ := d.ctxSwitches()
		cpu0 := cpuTime(d.pid())
		t0 := mono()
		if err := writeAll(ctl, req); err != nil {
			return 0, err
		}
		var t1 int64
		for t1 == 0 {
			f, err := rawFrame(ctl)
			if err != nil {
				return 0, err
			}
			if f.Status != wire.StatusOK {
				return 0, fmt.Errorf("%v: %v: %s", f.Op, f.Status, f.Payload)
			}
			if f.ID == waitID {
				t1 = mono()
			}
		}
		cs1, _ := d.ctxSwitches()
		a.cpu = append(a.cpu, ms(cpuTime(d.pid())-cpu0))
		*switches = append(*switches, float64(cs1-cs0))
		if _, err := h.done(); err != nil {
			return 0, err
		}
		return t1 - t0, nil
	}
	return a, nil
}

// barrierEventfd: the baseline, eventfd fan-out and an eventfd reply per
// watcher: each watcher thread writes 1 to the coordinator's reply eventfd,
// which reads it until the replies add up to N. (One reply eventfd, not N:
// 2N eventfds would not fit in this machine's hard RLIMIT_NOFILE of 20 000,
// and one counter read by one coordinator is the cheapest reply path, so
// the baseline is, if anything, harder to meet.)
func barrierEventfd(b *bench, n int) (*arena, error) {
	ev, err := eventfds(n)
	if err != nil {
		return nil, err
	}
	rep, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		closeAll(ev)
		return nil, err
	}
	h, err := startHelper(b.waiters, "eventfd-reply", n, append(ev, rep))
	if err != nil {
		return nil, err
	}
	var v [8]byte
	return &arena{
		h: h,
		round: func() (int64, error) {
			t0 := mono()
			if err := signal(ev); err != nil {
				return 0, err
			}
			for got := uint64(0); got < uint64(n); {
				// A blocking wait: the coordinator sleeps until replies come.
				if err := waitReadable(rep); err != nil {
					return 0, fmt.Errorf("eventfd replies (%d of %d): %w", got, n, err)
				}
				if _, err := unix.Read(rep, v[:]); err != nil {
					if err == unix.EINTR {
						continue
					}
					return 0, err
				}
				got += binary.NativeEndian.Uint64(v[:])
			}
			t1 := mono()
			if _, err := h.done(); err != nil {
				return 0, err
			}
			return t1 - t0, nil
		},
	}, nil
}
