// Watchdog: a goroutine blocks until the generation changes (a restore),
// rebuilds the secrets of the process, and acks. The rest of the program
// uses the secrets under their lock and never looks at genid.
//
// It prints "ready at generation N", then "rebuilt at generation N" at
// each rebuild. GENID_RUN_DIR names another run dir than /run/genid.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/genid-project/genid/genid"
)

// secrets is what clones must not share: keys, an RNG's state, UUIDs.
type secrets struct {
	mu  sync.RWMutex
	key string
}

func (s *secrets) rebuild() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key = rand.Text()
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	c, err := genid.Open(runDir())
	if err != nil {
		return err
	}
	defer c.Close()
	w, err := c.Watch(ctx)
	if err != nil {
		return err
	}
	defer w.Close()

	var s secrets
	s.rebuild() // after Watch: at least as new as the generation it registered at
	fmt.Println("ready at generation", w.Acked())

	done := make(chan error, 1)
	go func() { done <- watchdog(ctx, w, &s) }()
	// The program's work goes here, using s.key under s.mu.
	return <-done
}

// watchdog rebuilds s at each new generation, until ctx ends.
func watchdog(ctx context.Context, w *genid.Watcher, s *secrets) error {
	for {
		gen, err := w.Wait(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		s.rebuild()
		fmt.Println("rebuilt at generation", gen)
		// ErrStale: a newer generation came meanwhile, and Wait returns
		// it next. ErrUnreachable: the daemon is restarting, and gets the
		// ack when it is back.
		if err := w.Ack(ctx, gen); err != nil && !errors.Is(err, genid.ErrStale) && ctx.Err() == nil {
			log.Print(err)
		}
	}
}

func runDir() string {
	if dir := os.Getenv("GENID_RUN_DIR"); dir != "" {
		return dir
	}
	return genid.DefaultRunDir
}
