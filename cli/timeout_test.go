package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/genid"
)

// Every command that asks the daemon has --timeout with a bounded
// default; the others (the daemon, file tools, the generator) ask nothing.
func TestClientCommandsBounded(t *testing.T) {
	noDaemon := map[string]bool{"daemon": true, "image-info": true, "oci-config": true, "hooks-d": true, "cdi-spec": true, "generate": true, "scope": true}
	var walk func(prefix string, cmds []*cli.Command)
	seen := 0
	walk = func(prefix string, cmds []*cli.Command) {
		for _, cmd := range cmds {
			name := strings.TrimSpace(prefix + " " + cmd.Name)
			walk(name, cmd.Subcommands)
			if noDaemon[name] {
				continue
			}
			seen++
			var timeout *cli.DurationFlag
			for _, f := range cmd.Flags {
				if d, ok := f.(*cli.DurationFlag); ok && d.Name == "timeout" {
					timeout = d
				}
			}
			if timeout == nil || timeout.Value <= 0 {
				t.Errorf("genidctl %s: no --timeout with a bounded default", name)
			}
		}
	}
	walk("", newApp().Commands)
	if seen < 10 {
		t.Fatalf("only %d client commands seen", seen)
	}
}

// A call cut short by its exchange deadline is a timeout (exit 5) that
// says what passed; anything else goes through as it is.
func TestNoAnswer(t *testing.T) {
	ctx, cancel := context.WithTimeoutCause(context.Background(), time.Nanosecond, errNoAnswer)
	defer cancel()
	<-ctx.Done()
	err := noAnswer(ctx, "1s (--timeout)", fmt.Errorf("status: %w", ctx.Err()))
	if !errors.Is(err, genid.ErrTimeout) || exitCode(err) != exitTimeout || !strings.Contains(err.Error(), "within 1s (--timeout)") {
		t.Errorf("deadline passed: %v (exit %d)", err, exitCode(err))
	}
	other := errors.New("other")
	if err := noAnswer(ctx, "1s", other); err != other {
		t.Errorf("another error after the deadline... %v", err)
	}
	live, stop := context.WithCancel(context.Background())
	stop() // cancelled, not timed out: a signal
	if err := noAnswer(live, "1s", live.Err()); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled context: %v", err)
	}
}

func TestStartHint(t *testing.T) {
	if got := startHint("/tmp/x"); got != "genidctl --run-dir /tmp/x daemon" {
		t.Errorf("another run dir: %q", got)
	}
	got := startHint(genid.DefaultRunDir)
	if want := "genidctl daemon"; systemdUnit("genid.socket") {
		want = "systemctl start genid.socket"
		if got != want {
			t.Errorf("systemd with genid.socket: %q, want %q", got, want)
		}
	} else if got != want {
		t.Errorf("no systemd unit: %q, want %q", got, want)
	}
}
