package torture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fuzzer is one fuzzer of the project and how many inputs `make torture`
// gives it: together at least fuzzMinInputs, each count chosen from its
// rate on the 2-core machine so that all of them leave most of make
// torture's 30 minutes to the other cases.
type fuzzer struct {
	name   string // the Go fuzz target, or "record-fuzz" for the C one
	pkg    string // the Go package, from the module's root
	inputs int64
	bound  time.Duration
}

const fuzzMinInputs = 10_000_000

var fuzzTargets = []fuzzer{
	{"FuzzDecode", "./internal/wire", 4_000_000, 6 * time.Minute},
	{"FuzzDecodeRecord", "./checkpoint", 2_000_000, 8 * time.Minute},
	{"FuzzAddHooks", "./cli", 300_000, 8 * time.Minute},
	// libFuzzer on the CRIU plugin's reader, under ASan and UBSan (make fuzz-c).
	{"record-fuzz", "", 5_000_000, 6 * time.Minute},
}

// TestFuzz runs every fuzzer of the project at depth, at full size only:
// the Go fuzzers with `go test -fuzz`, the C one with `make fuzz-c`, each
// bounded, from the module's root. What a Go fuzzer found interesting in
// its cache is copied to its package's testdata/fuzz, to be committed
// (a failing input Go writes there itself). The short version runs none:
// `make test` runs each fuzzer briefly (make fuzz).
func TestFuzz(t *testing.T) {
	if !*full {
		record(t, Row{
			Case:  "fuzz",
			Tried: "nothing here: make test runs each fuzzer briefly (make fuzz), make torture at depth",
			Held:  "-",
		})
		return
	}
	var total int64
	for _, f := range fuzzTargets {
		total += f.inputs
	}
	row := record(t, Row{
		Case:  "fuzz",
		Tried: fmt.Sprintf("%d inputs over %d fuzzers (wire, checkpoint record in Go and C, OCI config)", total, len(fuzzTargets)),
		Held:  "0 crashes",
	})
	if total < fuzzMinInputs {
		t.Fatalf("the fuzzers are given %d inputs, fewer than %d", total, fuzzMinInputs)
	}
	root := fuzzModuleRoot(t)
	row.Figures = map[string]float64{}
	for _, f := range fuzzTargets {
		n, took, err := f.run(t, root)
		row.Figures[f.name+"_inputs"] = float64(n)
		row.Figures[f.name+"_seconds"] = took.Seconds()
		if err == nil && n < f.inputs {
			err = fmt.Errorf("ran %d inputs, not %d", n, f.inputs)
		}
		if err != nil {
			row.Failures++
			t.Errorf("%s: %v", f.name, err)
		}
		if f.pkg != "" {
			added, err := fuzzKeepCorpus(root, f)
			if err != nil {
				t.Errorf("%s: keep its corpus: %v", f.name, err)
			}
			row.Figures[f.name+"_corpus_added"] = float64(added)
		}
	}
}

var (
	fuzzGoExecs = regexp.MustCompile(`fuzz: elapsed: \S+, execs: (\d+) `)
	fuzzCRuns   = regexp.MustCompile(`Done (\d+) runs in`)
)

// run runs the fuzzer, bounded, and returns how many inputs it tried.
func (f fuzzer) run(t *testing.T, root string) (int64, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), f.bound)
	defer cancel()
	var cmd *exec.Cmd
	re := fuzzGoExecs
	if f.pkg != "" {
		cmd = exec.CommandContext(ctx, fuzzGoTool(), "test", "-run=^$", "-fuzz=^"+f.name+"$",
			fmt.Sprintf("-fuzztime=%dx", f.inputs), f.pkg)
	} else {
		cmd = exec.CommandContext(ctx, "make", "fuzz-c", fmt.Sprintf("FUZZ_C_RUNS=%d", f.inputs), "FUZZ_C_KEEP=1")
		re = fuzzCRuns
	}
	cmd.Dir = root
	// At the bound, the whole process group goes: go test's fuzzing
	// workers, make's fuzzer.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	t.Logf("%s (at most %v)", strings.Join(cmd.Args, " "), f.bound)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	var n int64
	for _, m := range re.FindAllSubmatch(out, -1) {
		n, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	t.Logf("%s: %d inputs in %.0fs (%.0f/s)", f.name, n, took.Seconds(), float64(n)/took.Seconds())
	if ctx.Err() != nil {
		err = fmt.Errorf("not done in %v: %w", f.bound, ctx.Err())
	}
	if err != nil {
		return n, took, fmt.Errorf("%w\n%s", err, logTail(out, 40))
	}
	return n, took, nil
}

func fuzzGoTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// fuzzModuleRoot is the directory of go.mod above the working directory (the
// package's under go test, the repository's under make torture).
func fuzzModuleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = up
	}
}

// fuzzKeepCorpus copies the inputs Go's fuzzing cache holds for f into
// f.pkg/testdata/fuzz/f.name, the new ones only, and returns how many.
func fuzzKeepCorpus(root string, f fuzzer) (int, error) {
	cache, err := fuzzGoOutput(root, "env", "GOCACHE")
	if err != nil {
		return 0, err
	}
	module, err := fuzzGoOutput(root, "list", "-m")
	if err != nil {
		return 0, err
	}
	src := filepath.Join(cache, "fuzz", module, filepath.Clean(f.pkg), f.name)
	dst := filepath.Join(root, f.pkg, "testdata", "fuzz", f.name)
	entries, err := os.ReadDir(src)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	added := 0
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		target := filepath.Join(dst, e.Name())
		if _, err := os.Stat(target); err == nil {
			continue
		}
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return added, err
		}
		if err := fuzzCopyFile(filepath.Join(src, e.Name()), target); err != nil {
			return added, err
		}
		added++
	}
	return added, nil
}

// fuzzGoOutput runs the go command with args in dir, bounded, and returns its
// output's one line.
func fuzzGoOutput(dir string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, fuzzGoTool(), args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

func fuzzCopyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
