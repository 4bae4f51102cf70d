package genid

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/unixtest"
	"github.com/genid-project/genid/internal/wire"
)

func TestDialWaitsForListen(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketFile)
	fd := unixtest.Bound(t, path)
	go func() {
		time.Sleep(30 * time.Millisecond)
		syscall.Listen(fd, 1)
	}()
	l, err := dial(context.Background(), path, nil)
	if err != nil {
		t.Fatalf("dial while the daemon starts listening: %v", err)
	}
	l.close()
}

func TestDialStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketFile)
	oldBound := time.Now()
	old := unixtest.Bound(t, path+".old")
	unixtest.Bound(t, path)
	_, err := dial(context.Background(), path, nil)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("dial of a socket nobody listens on: %v, want ErrUnreachable", err)
	}
	// ctime has a clock tick's resolution: allow one.
	if age := time.Since(oldBound); age < connectRetry-10*time.Millisecond {
		t.Errorf("refused when the socket was %v old, before the retry time of %v", age, connectRetry)
	}

	// A caller's deadline ends the retries.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := dial(ctx, path, nil); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("dial with a deadline: %v", err)
	}
	if took := time.Since(start); took > connectRetry {
		t.Errorf("dial with a 20ms deadline took %v", took)
	}

	// A socket older than connectRetry that refuses is reported at once,
	// not tried again: its daemon is gone (a stopped socket unit's too).
	time.Sleep(time.Until(oldBound.Add(connectRetry + 100*time.Millisecond)))
	go func() {
		time.Sleep(100 * time.Millisecond)
		syscall.Listen(old, 1)
	}()
	if _, err := dial(context.Background(), path+".old", nil); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("dial of a socket bound %v ago that refuses: %v, want ErrUnreachable at once", connectRetry, err)
	}
}

// A connection the daemon refused at connect fails its calls with the
// refusal, not as a lost connection, and they are not tried again: read
// where the reply was awaited, or after the request could not go because
// the daemon had already hung up.
func TestRefusedAtConnect(t *testing.T) {
	const why = "uid 1000 has 64 connections: limit reached"
	for _, early := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), SocketFile)
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		refused := make(chan struct{})
		go func() {
			defer close(refused)
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write(wire.Append(nil, wire.Header{Op: wire.OpRefused, Status: wire.StatusLimit}, []byte(why)))
			c.Close()
		}()
		l, err := dial(context.Background(), path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if early {
			<-refused
		}
		_, err = l.call(context.Background(), wire.OpGet, nil)
		var gerr *Error
		if !errors.Is(err, ErrLimit) || !errors.As(err, &gerr) || gerr.Msg != why {
			t.Errorf("a call on a refused connection (refused before the request: %v): %v, want the refusal", early, err)
		}
		if _, err := l.call(context.Background(), wire.OpGet, nil); !errors.Is(err, ErrLimit) {
			t.Errorf("a later call on it: %v, want the refusal", err)
		}
		if err := l.post(wire.OpAck, nil); !errors.Is(err, ErrLimit) {
			t.Errorf("a post on it: %v, want the refusal", err)
		}
		l.close()
		ln.Close()
	}
}
