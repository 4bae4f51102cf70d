package genid_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/genid/genidtest"
)

// A watchdog goroutine blocks for the next generation, rebuilds what must
// not be shared between clones, and acks. It sleeps in between: no cost
// until a restore.
func ExampleWatcher_Wait() {
	srv, err := genidtest.Start() // a program opens genid.DefaultRunDir
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	c, err := genid.Open(srv.RunDir)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	w, err := c.Watch(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	acked := make(chan uint32) // for this example: a program goes on with its work
	go func() {
		for {
			gen, err := w.Wait(ctx)
			if err != nil {
				return // ctx ended, or w was closed
			}
			key := rand.Text() // rebuild: new keys, a reseeded RNG...
			_ = key
			fmt.Println("rebuilt at generation", gen)
			if err := w.Ack(ctx, gen); err != nil && !errors.Is(err, genid.ErrStale) {
				log.Print(err) // ErrStale: a newer one came meanwhile; Wait returns it next
			}
			acked <- gen
		}
	}()

	srv.Bump(0, "restore") // what a snapshot's restore does
	fmt.Println("acked", <-acked)
	// Output:
	// rebuilt at generation 1
	// acked 1
}

// An event loop puts the watcher's Fd in its epoll set beside its other
// descriptors (here a pipe of requests), and never blocks on genid: TryWait
// takes the new generation, AckQuiet sends the ack without waiting for an
// answer.
func ExampleWatcher_Fd() {
	srv, err := genidtest.Start() // a program opens genid.DefaultRunDir
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	c, err := genid.Open(srv.RunDir)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	w, err := c.Watch(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	genfd, err := w.Fd()
	if err != nil {
		log.Fatal(err)
	}
	requests, client, err := os.Pipe() // the loop's other work
	if err != nil {
		log.Fatal(err)
	}
	defer requests.Close()
	defer client.Close()

	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Close(ep)
	for _, fd := range []int{genfd, int(requests.Fd())} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			log.Fatal(err)
		}
	}

	gen := w.Acked() // the generation the key below was made at
	key := rand.Text()
	// turn is one turn of the loop: a program runs it forever.
	turn := func() {
		events := make([]unix.EpollEvent, 8)
		n, err := unix.EpollWait(ep, events, -1)
		if err != nil && err != unix.EINTR {
			log.Fatal(err)
		}
		for _, ev := range events[:n] {
			switch int(ev.Fd) {
			case genfd:
				g, err := w.TryWait()
				if err != nil {
					continue // ErrWouldBlock: acked meanwhile
				}
				gen, key = g, rand.Text()
				fmt.Println("rebuilt at generation", gen)
				if err := w.AckQuiet(ctx, gen); err != nil {
					log.Print(err)
				}
			default:
				buf := make([]byte, 64)
				n, _ := requests.Read(buf)
				_ = key // the request is served with it
				fmt.Printf("served %q with the key of generation %d\n", buf[:n], gen)
			}
		}
	}

	client.WriteString("a")
	turn()
	srv.Bump(0, "restore")
	turn()
	client.WriteString("b")
	turn()
	// Output:
	// served "a" with the key of generation 0
	// rebuilt at generation 1
	// served "b" with the key of generation 1
}

// A hot path checks the mapped page before it uses its cached secrets: one
// load, no system call. When the generation moved, it rebuilds them,
// remembers the generation, acks (an orchestrator waits for that), and
// checks again: the generation may have moved once more meanwhile.
func ExampleClient_Generation() {
	srv, err := genidtest.Start() // a program opens genid.DefaultRunDir
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	c, err := genid.Open(srv.RunDir)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	w, err := c.Watch(ctx) // only to be counted until it rebuilt
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	gen := w.Acked() // the generation it registered at, before the key is made
	key := rand.Text()
	nonce := func() string {
	again:
		if g := c.Generation(); g != gen {
			key = rand.Text()
			gen = g
			fmt.Println("rebuilt at generation", g)
			// Quiet: a refusal means a newer generation, which the check
			// below sees.
			if err := w.AckQuiet(ctx, g); err != nil {
				log.Print(err)
			}
			goto again
		}
		return key // derive the nonce from it
	}

	first := nonce()
	srv.Bump(0, "restore")
	second := nonce()
	srv.WaitAcked()
	fmt.Println("new key:", first != second, "acked:", w.Acked())
	// Output:
	// rebuilt at generation 1
	// new key: true acked: 1
}

// A thread that only needs to know of a restore, not to be waited for,
// sleeps on the page itself: no connection, nothing registered with the
// daemon, and woken even while the daemon restarts. (An orchestrator's
// barrier does not count it: use a Watcher for that.)
func ExampleClient_WaitChange() {
	srv, err := genidtest.Start() // a program opens genid.DefaultRunDir
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	c, err := genid.Open(srv.RunDir)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	seen := c.Generation()
	changed := make(chan uint32) // for this example: a program rebuilds in the loop
	go func() {
		for {
			gen, err := c.WaitChange(ctx, seen)
			if err != nil {
				return // ctx ended, or c was closed
			}
			seen = gen // rebuild: new keys, a reseeded RNG...
			changed <- gen
		}
	}()

	srv.Bump(0, "restore")
	fmt.Println("woken at generation", <-changed)
	// Output:
	// woken at generation 1
}

// An orchestrator pauses its service at a new generation, rebuilds and acks
// for itself, then waits for every other watcher of its scope, with a
// timeout, before it lets traffic in again. At the timeout it says how many
// are late, and decides: here it waits on.
func ExampleWatcher_WaitWatchers() {
	srv, err := genidtest.Start() // a program opens genid.DefaultRunDir
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	c, err := genid.Open(srv.RunDir)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	other, err := c.Watch(ctx) // another process's watcher, slow to rebuild
	if err != nil {
		log.Fatal(err)
	}
	defer other.Close()
	w, err := c.Watch(ctx) // the orchestrator's own
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	srv.Bump(0, "restore")
	gen, err := w.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("paused at generation", gen)
	if err := w.Ack(ctx, gen); err != nil { // after its own rebuild
		log.Fatal(err)
	}
	for tries := 0; ; tries++ {
		if tries == 1 {
			other.Ack(ctx, gen) // the slow one is done
		}
		err := w.WaitWatchers(ctx, 100*time.Millisecond)
		if errors.Is(err, genid.ErrTimeout) {
			n, _ := w.Outdated(ctx)
			fmt.Println("timeout:", n, "outdated")
			continue
		}
		// ErrInterrupted would mean a newer generation: this orchestrator
		// is outdated itself, and starts over from Wait.
		if err != nil {
			log.Fatal(err)
		}
		break
	}
	fmt.Println("resumed at generation", gen)
	// Output:
	// paused at generation 1
	// timeout: 1 outdated
	// resumed at generation 1
}

// An ack of a generation that is no longer the current one is refused:
// errors.Is tells the refusals apart, whether the daemon or this process
// made them.
func ExampleWatcher_Ack() {
	srv, err := genidtest.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	c, err := genid.Open(srv.RunDir)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	w, err := c.Watch(ctx)
	if err != nil {
		log.Fatal(err)
	}
	srv.Bump(0, "restore")
	gen, _ := w.Wait(ctx)
	srv.Bump(0, "restore again") // before the ack of gen
	err = w.Ack(ctx, gen)
	fmt.Println("stale:", errors.Is(err, genid.ErrStale))

	// w is outdated: a wait for the watchers waits for it, until the
	// context ends.
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	err = c.WaitWatchers(short, 0) // no timeout of its own
	fmt.Println("deadline:", errors.Is(err, context.DeadlineExceeded))

	w.Close()
	_, err = w.Wait(ctx)
	fmt.Println("closed:", errors.Is(err, genid.ErrClosed))
	// Output:
	// stale: true
	// deadline: true
	// closed: true
}

// An administrator (root, the daemon's user, a member of its admin group)
// manages scopes: a container's own counter, mounted at its /run/genid.
func ExampleAdmin() {
	srv, err := genidtest.Start() // the test's process is the daemon's administrator
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	a, err := genid.OpenAdmin(srv.RunDir)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	gen, err := a.CreateScope(ctx, "web", genid.ScopeOptions{Start: 5})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created web at", gen)
	_, err = a.CreateScope(ctx, "web", genid.ScopeOptions{})
	fmt.Println("again:", errors.Is(err, genid.ErrExists))

	// A process of the container opens the scope's directory.
	c, err := genid.Open(srv.RunDir + "/scopes/web")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	gen, err = a.Bump(ctx, "web", 0, "container restored")
	if err != nil {
		log.Fatal(err)
	}
	host, _ := a.Generation(ctx, "")
	fmt.Println("web at", gen, "seen inside:", c.Generation(), "host at", host)
	if err := a.WaitWatchers(ctx, "web", time.Second); err != nil {
		log.Fatal(err)
	}
	st, err := a.Status(ctx, "web")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("last bump:", st.LastBump.Reason)
	if err := a.RemoveScope(ctx, "web"); err != nil {
		log.Fatal(err)
	}
	_, err = a.Generation(ctx, "web")
	fmt.Println("removed:", errors.Is(err, genid.ErrNotFound))
	// Output:
	// created web at 5
	// again: true
	// web at 6 seen inside: 6 host at 0
	// last bump: container restored
	// removed: true
}
