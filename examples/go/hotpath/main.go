// Hotpath: each request checks the mapped page before it uses the cached
// secrets: one load, no system call. When the generation moved, it
// rebuilds them, remembers the generation, acks, and checks again (the
// generation may have moved once more meanwhile). Its watcher is there
// only to be counted: an orchestrator waits until it rebuilt.
//
// The requests here are a loop that makes a token every 10 ms. It prints
// "ready at generation N", then "rebuilt at generation N" at each rebuild.
// GENID_RUN_DIR names another run dir than /run/genid.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/genid-project/genid/genid"
)

// service holds the cached secrets, and the generation they were made at.
type service struct {
	c     *genid.Client
	w     *genid.Watcher
	gen   uint32
	key   []byte
	count uint64
}

// token is the hot path: a request that needs the secrets.
func (s *service) token(ctx context.Context) []byte {
again:
	if g := s.c.Generation(); g != s.gen {
		s.key = []byte(rand.Text())
		s.gen = g
		fmt.Println("rebuilt at generation", g)
		// Quiet: no wait for an answer. A refusal would mean a newer
		// generation, which the check sees next.
		if err := s.w.AckQuiet(ctx, g); err != nil {
			log.Print(err) // the daemon is away: it gets the ack when back
		}
		goto again
	}
	s.count++
	mac := hmac.New(sha256.New, s.key)
	binary.Write(mac, binary.LittleEndian, s.count)
	return mac.Sum(nil)
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
	// The generation it registered at, before the key is made: if the page
	// is ahead already, the first request rebuilds and acks.
	s := &service{c: c, w: w, gen: w.Acked(), key: []byte(rand.Text())}
	fmt.Println("ready at generation", s.gen)

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			s.token(ctx)
		}
	}
}

func runDir() string {
	if dir := os.Getenv("GENID_RUN_DIR"); dir != "" {
		return dir
	}
	return genid.DefaultRunDir
}
