// Command seeds feeds the C fuzzer of the checkpoint record
// (plugin/criu/fuzz/record_fuzz.c) and checks it against the Go reader.
//
//	seeds DIR                 writes seed records into DIR: records the Go
//	                          writer made, and the Go fuzzer's corpus
//	seeds -check FUZZER DIR...  runs the C reader (FUZZER, with
//	                          GENID_FUZZ_VERDICT) on every file of the DIRs and
//	                          fails where it and checkpoint.DecodeRecord
//	                          disagree on accepting it
//
// One record format, two readers: the plugin's in C, the Go one for
// genidctl and go-criu programs. The check holds them to one verdict on what
// the fuzzers found.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/genid-project/genid/checkpoint"
)

func main() {
	check := flag.String("check", "", "the C fuzzer to compare with the Go reader")
	flag.Parse()
	var err error
	switch {
	case *check != "" && flag.NArg() > 0:
		err = compare(*check, flag.Args())
	case *check == "" && flag.NArg() == 1:
		err = writeSeeds(flag.Arg(0))
	default:
		fmt.Fprintln(os.Stderr, "usage: seeds DIR | seeds -check FUZZER DIR...")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "seeds:", err)
		os.Exit(1)
	}
}

func u32p(v uint32) *uint32 { return &v }

// samples are records as the plugin and the Go writer make them.
func samples() map[string]*checkpoint.Record {
	t := time.Unix(1790000000, 0)
	long := strings.Repeat("n", 64)
	many := make([]checkpoint.Socket, 40)
	for i := range many {
		many[i] = checkpoint.Socket{Inode: uint32(1000 + i), Watcher: i%2 == 0, Nonblock: i%3 == 0, Acked: uint32(i), Scope: "c", Path: "/run/genid/scopes/c/genid.sock"}
	}
	return map[string]*checkpoint.Record{
		"empty": {Time: t, RunDir: "/run/genid"},
		"host":  {Time: t, Writer: "action-script", RunDir: "/run/genid", Scopes: []checkpoint.ScopeRecord{{Generation: u32p(5)}}},
		"plugin": {Time: t, RunDir: "/run/genid", Scopes: []checkpoint.ScopeRecord{
			{Generation: u32p(5)},
			{Name: "c1", Generation: u32p(9), Mounts: []checkpoint.Mount{{ID: 111, Path: "/run/genid"}, {ID: 112, File: true, Path: "/dev/sysgenid"}}},
			{Name: "c2"},
		}, Sockets: []checkpoint.Socket{
			{Inode: 4242, Watcher: true, Nonblock: true, Acked: 9, Scope: "c1", Path: "/run/genid/scopes/c1/genid.sock"},
			{Inode: 4243, Scope: "", Path: "/run/genid/genid.sock"},
		}},
		"limits": {Time: t, Writer: strings.Repeat("w", 255), RunDir: "/" + strings.Repeat("r", 4095), Scopes: []checkpoint.ScopeRecord{
			{Name: long, Generation: u32p(4294967294), Mounts: []checkpoint.Mount{{ID: 4294967295, File: true, Path: "/" + strings.Repeat("p", 4095)}}},
			{Name: "a.b_c-d", Generation: u32p(0)},
		}, Sockets: []checkpoint.Socket{{Inode: 4294967295, Watcher: true, Acked: 4294967294, Scope: long, Path: "/" + strings.Repeat("s", 107)}}},
		"sockets": {Time: t, RunDir: "/run/genid", Scopes: []checkpoint.ScopeRecord{{Name: "c", Generation: u32p(3)}}, Sockets: many},
		// Version 3: a container with its VMClock page mounted.
		"vmclock": {Time: t, RunDir: "/run/genid", Scopes: []checkpoint.ScopeRecord{
			{Name: "c1", Generation: u32p(7), Mounts: []checkpoint.Mount{
				{ID: 111, Path: "/run/genid"}, {ID: 112, File: true, Path: "/dev/sysgenid"}, {ID: 113, File: true, VMClock: true, Path: "/dev/vmclock0"},
			}},
		}},
	}
}

func writeSeeds(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, r := range samples() {
		b, err := r.Encode()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	// The Go fuzzer's corpus, in its own encoding.
	corpus, _ := filepath.Glob("checkpoint/testdata/fuzz/FuzzDecodeRecord/*")
	for _, f := range corpus {
		b, err := goCorpusBytes(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "go-"+filepath.Base(f)), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// goCorpusBytes reads a file of Go's fuzz corpus holding one []byte.
func goCorpusBytes(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	head, body, _ := strings.Cut(string(b), "\n")
	body = strings.TrimSpace(body)
	if head != "go test fuzz v1" || !strings.HasPrefix(body, "[]byte(") || !strings.HasSuffix(body, ")") {
		return nil, fmt.Errorf("%s: not a Go fuzz corpus file of one []byte", path)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(body, "[]byte("), ")"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return []byte(s), nil
}

// compare runs the C reader on every file of dirs, a batch at a time, and
// compares each verdict with the Go reader's.
func compare(fuzzer string, dirs []string) error {
	var files []string
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.Type().IsRegular() {
				files = append(files, filepath.Join(d, e.Name()))
			}
		}
	}
	var bad []string
	for len(files) > 0 {
		batch := files[:min(len(files), 500)]
		files = files[len(batch):]
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, fuzzer, batch...)
		cmd.Env = append(os.Environ(), "GENID_FUZZ_VERDICT=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", fuzzer, err, stderr.String())
		}
		verdicts := map[string]string{} // by hash
		for _, l := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
			h, v, _ := strings.Cut(l, " ")
			verdicts[h] = v
		}
		for _, f := range batch {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			h := fnv.New64a()
			h.Write(b)
			v, ok := verdicts[fmt.Sprintf("%016x", h.Sum64())]
			if !ok {
				return fmt.Errorf("%s gave no verdict on %s", fuzzer, f)
			}
			_, goErr := checkpoint.DecodeRecord(b)
			if (v == "accept") != (goErr == nil) {
				bad = append(bad, fmt.Sprintf("%s: C %s, Go %v", f, v, goErr))
			}
		}
	}
	if len(bad) > 0 {
		return errors.New("the C and Go readers disagree:\n" + strings.Join(bad, "\n"))
	}
	return nil
}
