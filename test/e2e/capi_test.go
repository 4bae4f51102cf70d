package e2e

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCAPI runs test/c/api.c, every call of the C client genid.h, against
// the real daemon: built by gcc and by clang with -Wall -Wextra -Werror,
// and by clang under AddressSanitizer and UndefinedBehaviorSanitizer. Mid
// way, the daemon is restarted and bumped once: the C watcher reconnects
// and sees that bump.
func TestCAPI(t *testing.T) {
	bin := genidctl(t)
	cCompilers(t)
	builds := []struct {
		name, cc string
		flags    []string
	}{
		{"gcc", "gcc", []string{"-O2"}},
		{"clang", "clang", []string{"-O2"}},
		{"clang-asan-ubsan", "clang", []string{"-O1", "-g", "-fno-omit-frame-pointer",
			"-fsanitize=address,undefined", "-fno-sanitize-recover=all"}},
	}
	for _, b := range builds {
		t.Run(b.name, func(t *testing.T) {
			dir := runDir(t)
			exe := filepath.Join(dir, "api")
			compileC(t, b.cc, exe, "../c/api.c", b.flags...)
			d := startDaemon(t, bin, dir)

			cmd := exec.Command(exe, dir)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			cmd.Env = []string{"ASAN_OPTIONS=detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS=print_stacktrace=1"}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			timer := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
			defer timer.Stop()
			var out []string
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				out = append(out, sc.Text())
				if sc.Text() == "restart" {
					if err := d.kill(syscall.SIGTERM); err != nil {
						t.Fatalf("daemon exit: %v", err)
					}
					d = startDaemon(t, bin, dir)
					mustCtl(t, bin, dir, "bump")
				}
			}
			err = cmd.Wait()
			want := []string{"ok restored", "ok page", "ok watcher", "ok newest", "ok quiet", "ok page ack",
				"ok refusals", "ok admin", "ok close", "restart", "ok reconnect", "PASS"}
			if err != nil || strings.Join(out, "\n") != strings.Join(want, "\n") {
				t.Fatalf("api (%s): %v\nstdout: %q\nstderr:\n%s", b.name, err, out, stderr.String())
			}
		})
	}
}
