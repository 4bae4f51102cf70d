package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
			want := []string{"ok restored", "ok refused", "ok page", "ok page wait", "ok watcher", "ok newest", "ok quiet", "ok page ack",
				"ok refusals", "ok admin", "ok close", "restart", "ok reconnect", "PASS"}
			if err != nil || strings.Join(out, "\n") != strings.Join(want, "\n") {
				t.Fatalf("api (%s): %v\nstdout: %q\nstderr:\n%s", b.name, err, out, stderr.String())
			}
		})
	}
}

// TestInstallDev: `make install-dev` into a DESTDIR installs genid.h and a
// genid.pc that pkg-config finds there, and its flags alone build a C
// program on genid.h.
func TestInstallDev(t *testing.T) {
	cCompilers(t)
	dest := t.TempDir()
	if b, err := exec.Command("make", "-C", "../..", "install-dev", "DESTDIR="+dest, "PREFIX=/usr").CombinedOutput(); err != nil {
		t.Fatalf("make install-dev: %v\n%s", err, b)
	}
	for _, f := range []string{"usr/include/genid/genid.h", "usr/share/pkgconfig/genid.pc"} {
		if st, err := os.Stat(filepath.Join(dest, f)); err != nil || st.Mode().Perm() != 0o644 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	pc := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("pkg-config", args...)
		cmd.Env = append(os.Environ(), "PKG_CONFIG_SYSROOT_DIR="+dest, "PKG_CONFIG_PATH="+filepath.Join(dest, "usr/share/pkgconfig"))
		b, err := cmd.Output()
		if err != nil {
			t.Fatalf("pkg-config %v: %v", args, err)
		}
		return strings.TrimSpace(string(b))
	}
	cflags := pc("--cflags", "genid")
	if cflags != "-I"+filepath.Join(dest, "usr/include/genid") {
		t.Fatalf("pkg-config --cflags genid: %q", cflags)
	}
	if v := pc("--modversion", "genid"); v != "1" {
		t.Fatalf("pkg-config --modversion genid: %q, want the protocol's version 1", v)
	}
	exe := filepath.Join(t.TempDir(), "watchdog")
	args := append(slices.Clone(cFlags), cflags, "-pthread", "-o", exe, "../../examples/c/watchdog.c")
	if b, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
		t.Fatalf("cc %v: %v\n%s", args, err, b)
	}
}
