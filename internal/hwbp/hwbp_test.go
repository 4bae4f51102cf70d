package hwbp

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The probe agrees with hack/hwbp-probe.c, the test bed's, on this
// machine, whichever way the machine goes.
func TestProbeAgreesWithC(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		if v, _ := Probe(DefaultTimeout); v != NotX86 {
			t.Fatalf("verdict %q off x86", v)
		}
		return
	}
	bin := filepath.Join(t.TempDir(), "hwbp-probe")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "cc", "-O2", "-o", bin, "../../hack/hwbp-probe.c").CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	out, _ := exec.CommandContext(ctx, bin).Output()
	want := Verdict(strings.SplitN(strings.TrimSpace(string(out)), ":", 2)[0])
	start := time.Now()
	got, why := Probe(DefaultTimeout)
	t.Logf("C probe: %s; Go probe: %s %s (%v)", strings.TrimSpace(string(out)), got, why, time.Since(start))
	if want != Fire && want != Never {
		t.Fatalf("the C probe could not tell: %s", out)
	}
	if got != want {
		t.Fatalf("Go probe %q (%s), C probe %q", got, why, out)
	}
	if got == Never && time.Since(start) > DefaultTimeout+5*time.Second {
		t.Errorf("the probe took %v: its bound is %v", time.Since(start), DefaultTimeout)
	}
}

// The child, run by itself, just calls the function and exits 0.
func TestChildExits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), ChildEnv+"=1")
	if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
		t.Fatalf("child: %v %q", err, out)
	}
}
