package genid

import (
	"context"
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/genid-project/genid/internal/unixtest"
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
