// Orchestrator: at a new generation it pauses its service, rebuilds and
// acks for itself, then waits for every other watcher of its scope, with a
// timeout, before it resumes. At the timeout it says how many watchers are
// late, and resumes all the same: one broken watcher must not hold the
// service forever. A generation that comes while it waits starts it over.
//
// It prints "ready at generation N", then at each generation "paused at
// generation N", "rebuilt at generation N", and "resumed at generation N",
// after "timeout at generation N: K outdated" if the timeout passed.
// GENID_RUN_DIR names another run dir than /run/genid.
//
//	orchestrator [-timeout 10s]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/genid-project/genid/genid"
)

func main() {
	timeout := flag.Duration("timeout", 10*time.Second, "how long to wait for the other watchers")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *timeout); err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, timeout time.Duration) error {
	c, err := genid.Open(runDir())
	if err != nil {
		return err
	}
	defer c.Close()
	// Its own watcher: it is counted too, and its wait for the others is
	// interrupted (ErrInterrupted) when it is outdated itself.
	w, err := c.Watch(ctx)
	if err != nil {
		return err
	}
	defer w.Close()
	fmt.Println("ready at generation", w.Acked())

	for {
		gen, err := w.Wait(ctx)
		if err != nil {
			return err
		}
		fmt.Println("paused at generation", gen) // no new traffic from here
		// ... its own rebuild ...
		fmt.Println("rebuilt at generation", gen)
		if err := w.Ack(ctx, gen); errors.Is(err, genid.ErrStale) {
			continue // a newer generation: Wait returns it
		} else if err != nil {
			return err
		}

		err = w.WaitWatchers(ctx, timeout)
		switch {
		case errors.Is(err, genid.ErrInterrupted):
			continue // a newer generation came: still paused, start over
		case errors.Is(err, genid.ErrTimeout):
			n, _ := w.Outdated(ctx)
			fmt.Printf("timeout at generation %d: %d outdated\n", gen, n)
			// genidctl status, as root, shows who they are.
		case err != nil:
			return err
		}
		fmt.Println("resumed at generation", gen) // traffic again
	}
}

func runDir() string {
	if dir := os.Getenv("GENID_RUN_DIR"); dir != "" {
		return dir
	}
	return genid.DefaultRunDir
}
