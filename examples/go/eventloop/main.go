// Eventloop: a single-threaded event loop puts the watcher's descriptor in
// epoll beside its other one (here stdin, a pipe of requests, one a line)
// and never blocks on genid: TryWait takes a new generation, AckQuiet sends
// the ack without waiting for an answer.
//
// It prints "ready at generation N", "rebuilt at generation N" at each
// rebuild, and "served REQUEST at generation N" for each line of stdin,
// served with the key of that generation. It ends at the end of stdin.
// GENID_RUN_DIR names another run dir than /run/genid.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	c, err := genid.Open(runDir())
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	w, err := c.Watch(ctx) // the one call that waits for the daemon
	cancel()
	if err != nil {
		return err
	}
	defer w.Close()
	genfd, err := w.Fd()
	if err != nil {
		return err
	}

	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	defer unix.Close(ep)
	for _, fd := range []int{genfd, unix.Stdin} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return fmt.Errorf("epoll add %d: %w", fd, err)
		}
	}

	gen := w.Acked() // the generation it registered at, before the key is made
	key := rand.Text()
	fmt.Println("ready at generation", gen)
	events := make([]unix.EpollEvent, 8)
	buf := make([]byte, 4096)
	var pending []byte // a request not yet whole
	for {
		n, err := unix.EpollWait(ep, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll: %w", err)
		}
		// genid first, whatever woke the loop: no request is served with
		// the key of a generation that has passed.
		if g, err := w.TryWait(); err == nil {
			gen, key = g, rand.Text()
			fmt.Println("rebuilt at generation", gen)
			if err := w.AckQuiet(context.Background(), gen); err != nil {
				log.Print(err) // the daemon is away: it gets the ack when back
			}
		}
		for _, ev := range events[:n] {
			if int(ev.Fd) != unix.Stdin {
				continue
			}
			m, err := unix.Read(unix.Stdin, buf)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			if m <= 0 {
				return err // the end of the requests
			}
			pending = append(pending, buf[:m]...)
			for {
				line, rest, ok := bytes.Cut(pending, []byte("\n"))
				if !ok {
					break
				}
				_ = key // a real service encrypts, signs, derives with it
				fmt.Printf("served %s at generation %d\n", line, gen)
				pending = rest
			}
		}
	}
}

func runDir() string {
	if dir := os.Getenv("GENID_RUN_DIR"); dir != "" {
		return dir
	}
	return genid.DefaultRunDir
}
