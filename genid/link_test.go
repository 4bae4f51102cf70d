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
	unixtest.Bound(t, path)
	start := time.Now()
	_, err := dial(context.Background(), path, nil)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("dial of a socket nobody listens on: %v, want ErrUnreachable", err)
	}
	if took := time.Since(start); took < connectRetry {
		t.Errorf("refused after %v, before the retry time of %v", took, connectRetry)
	}

	// A caller's deadline ends the retries.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := dial(ctx, path, nil); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("dial with a deadline: %v", err)
	}
	if took := time.Since(start); took > connectRetry {
		t.Errorf("dial with a 20ms deadline took %v", took)
	}
}
