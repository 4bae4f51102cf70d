// Command seeds feeds the C fuzzer of the checkpoint record
// (plugin/criu/fuzz/record_fuzz.c) and checks it against the Go reader.
//
//	seeds DIR                 writes seed records into DIR: records the Go
//	                          writer made, and the Go fuzzer's corpus
//	seeds -check FUZZER DIR...  runs the C reader (FUZZER, with
//	                          GENID_FUZZ_VERDICT) on every file of the DIRs and
//	                          fails where it and checkpoint.DecodeRecord
//	                          disagree on accepting it
//	seeds -roundtrip HARNESS DIR...  the same with the C reader and writer
//	                          (record_roundtrip.c), and fails where a
//	                          record the C writer wrote back is not the Go
//	                          writer's encoding of what it read; with
//	                          -largest, also on a record of MaxRecord bytes
//	                          and one a byte longer (seconds more)
//
// One record format, two readers: the plugin's in C, the Go one for
// genidctl and go-criu programs; and two writers, the plugin's and the Go
// one. The checks hold them to one verdict on what the fuzzers found, and
// the writers to one encoding of what was read.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
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
	roundtrip := flag.String("roundtrip", "", "the C round trip (record_roundtrip) to compare with the Go reader and writer")
	big := flag.Bool("largest", false, "-roundtrip: also the largest record, and one a byte larger")
	flag.Parse()
	var err error
	switch {
	case *check != "" && *roundtrip == "" && flag.NArg() > 0:
		err = compare(*check, false, false, flag.Args())
	case *roundtrip != "" && *check == "" && flag.NArg() > 0:
		err = compare(*roundtrip, true, *big, flag.Args())
	case *check == "" && *roundtrip == "" && flag.NArg() == 1:
		err = writeSeeds(flag.Arg(0))
	default:
		fmt.Fprintln(os.Stderr, "usage: seeds DIR | seeds -check FUZZER DIR... | seeds [-largest] -roundtrip HARNESS DIR...")
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
		// Each character at the edge of a name's ranges, taken.
		"names": {Time: t, RunDir: "/run/genid", Scopes: []checkpoint.ScopeRecord{{Name: "azAZ09"}, {Name: "_x"}, {Name: "x.-_"}},
			Sockets: []checkpoint.Socket{{Inode: 1, Scope: "azAZ09", Path: "/a"}, {Inode: 2, Scope: "x.-_", Path: "/b"}}},
		// Sockets as short as they can be (12 bytes), filling the record.
		"sockets-min": {Time: t, Scopes: []checkpoint.ScopeRecord{{}}, Sockets: make([]checkpoint.Socket, 10)},
		// The longest paths the plugin writes back: its run dir is a
		// PATH_MAX buffer, one byte short of a record's paths.
		"limits-written": {Time: t, RunDir: "/" + strings.Repeat("r", 4094), Scopes: []checkpoint.ScopeRecord{
			{Name: long, Generation: u32p(1), Mounts: []checkpoint.Mount{{ID: 1, Path: "/" + strings.Repeat("p", 4095)}}},
		}, Sockets: []checkpoint.Socket{{Inode: 1, Scope: long, Path: "/" + strings.Repeat("s", 107)}}},
		// Version 3: a container with its VMClock page mounted.
		"vmclock": {Time: t, RunDir: "/run/genid", Scopes: []checkpoint.ScopeRecord{
			{Name: "c1", Generation: u32p(7), Mounts: []checkpoint.Mount{
				{ID: 111, Path: "/run/genid"}, {ID: 112, File: true, Path: "/dev/sysgenid"}, {ID: 113, File: true, VMClock: true, Path: "/dev/vmclock0"},
			}},
		}},
	}
}

// rejects are records both readers refuse, each one past a limit of the
// format or the edge of a rule: a sample, edited.
func rejects() map[string][]byte {
	t := time.Unix(1790000000, 0)
	enc := func(r *checkpoint.Record) []byte {
		b, err := r.Encode()
		if err != nil {
			panic(err)
		}
		return b
	}
	out := map[string][]byte{}
	// A scope's name with a character next to its ranges, or starting
	// with '.' or '-'.
	for i, n := range []string{"x`", "x{", "x@", "x[", "x/", "x:", ".x", "-x"} {
		out[fmt.Sprintf("reject-name-%d", i)] = enc(&checkpoint.Record{Time: t, Scopes: []checkpoint.ScopeRecord{{Name: n}}})
	}
	// The header: the magic, the versions around those known, the
	// reserved bytes.
	plugin := enc(samples()["plugin"])
	for i, edit := range []struct {
		at int
		b  byte
	}{{7, 'Q'}, {8, 1}, {8, 4}, {9, 1}, {10, 1}, {11, 1}} {
		b := append([]byte(nil), plugin...)
		b[edit.at] = edit.b
		out[fmt.Sprintf("reject-head-%d", i)] = b
	}
	// One socket more than the record can hold.
	b := enc(samples()["sockets-min"])
	b[len(b)-10*12-4]++
	out["reject-sockets-min"] = b
	// A socket's path one byte past sun_path (the writer refuses it: the
	// record of a path at the limit, its length and bytes one longer).
	path := "/" + strings.Repeat("s", 107)
	b = enc(&checkpoint.Record{Time: t, Scopes: []checkpoint.ScopeRecord{{}}, Sockets: []checkpoint.Socket{{Path: path}}})
	at := bytes.Index(b, []byte(path)) - 2
	long := append(binary.LittleEndian.AppendUint16(append([]byte(nil), b[:at]...), uint16(len(path)+1)), 's')
	long = append(long, b[at+2:]...)
	binary.LittleEndian.PutUint32(long[12:], uint32(len(long)-16))
	out["reject-socket-path"] = long
	return out
}

// rejectWhy pins the C reader's reason for a reject where the reason is
// all that tells its check from a later one: the count of sockets is
// bounded before any is read (no socket is kept of a count the record
// cannot hold); without the bound, the loop reads them until cut short.
var rejectWhy = map[string]string{
	"reject-sockets-min": "more sockets than the record could hold",
}

// largest writes a record of checkpoint.MaxRecord bytes exactly, and one
// a byte longer, into dir (not seeds: libFuzzer would grow its inputs to
// that size), and checks that the Go reader takes the first and refuses
// the second: two readers that refused both would agree, and test no
// limit. (Seconds under the race detector: make fuzz-c runs it, no unit
// test.)
func largest(dir string) error {
	full := "/" + strings.Repeat("m", 4095)
	r := &checkpoint.Record{Time: time.Unix(1790000000, 0), RunDir: "/", Scopes: []checkpoint.ScopeRecord{{Generation: u32p(1)}}}
	b, err := r.Encode()
	if err != nil {
		return err
	}
	const each = 4 + 1 + 2 + 4096 // a mount of the longest path
	n, rest := (checkpoint.MaxRecord-len(b))/each, (checkpoint.MaxRecord-len(b))%each
	ms := make([]checkpoint.Mount, n, n+1)
	for i := range ms {
		ms[i] = checkpoint.Mount{ID: uint32(i), Path: full}
	}
	if rest > 7 {
		ms = append(ms, checkpoint.Mount{ID: uint32(n), Path: full[:rest-7]})
	} else {
		r.RunDir += strings.Repeat("r", rest)
	}
	r.Scopes[0].Mounts = ms
	for _, name := range []string{"max", "max+1"} {
		if name == "max+1" {
			r.RunDir += "r"
		}
		b, err := r.Encode()
		if err != nil {
			return err
		}
		if _, err := checkpoint.DecodeRecord(b); (err == nil) != (name == "max") {
			return fmt.Errorf("%s, %d bytes: the Go reader says %v", name, len(b), err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
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
	for name, b := range rejects() {
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
// compares each verdict with the Go reader's; with roundtrip, fuzzer is
// record_roundtrip, and what it wrote back must be what the Go writer
// writes; big adds the largest records (largest).
func compare(fuzzer string, roundtrip, big bool, dirs []string) error {
	var files []string
	seen := map[uint64]bool{} // the same bytes in two dirs are run once
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if !e.Type().IsRegular() {
				continue
			}
			f := filepath.Join(d, e.Name())
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			h := fnv.New64a()
			h.Write(b)
			if !seen[h.Sum64()] {
				seen[h.Sum64()] = true
				files = append(files, f)
			}
		}
	}
	var written string // the C writer's files, by the input's hash
	if roundtrip {
		d, err := os.MkdirTemp("", "seeds-roundtrip-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		written = filepath.Join(d, "written")
		if err := os.Mkdir(written, 0o755); err != nil {
			return err
		}
	}
	if roundtrip && big {
		if err := largest(filepath.Dir(written)); err != nil {
			return err
		}
		files = append(files, filepath.Join(filepath.Dir(written), "max"), filepath.Join(filepath.Dir(written), "max+1"))
	}
	why := map[string]string{} // by hash
	for name, b := range rejects() {
		if w, ok := rejectWhy[name]; ok {
			h := fnv.New64a()
			h.Write(b)
			why[fmt.Sprintf("%016x", h.Sum64())] = w
		}
	}
	var bad []string
	for len(files) > 0 {
		batch := files[:min(len(files), 500)]
		files = files[len(batch):]
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, fuzzer, batch...)
		cmd.Env = append(os.Environ(), "GENID_FUZZ_VERDICT=1")
		if roundtrip {
			cmd.Env = append(cmd.Env, "GENID_ROUNDTRIP_OUT="+written)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		// The C writer stamps the record with its time: whole seconds.
		start := time.Now().Truncate(time.Second)
		out, err := cmd.Output()
		end := time.Now()
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", fuzzer, err, tail(stderr.String(), 4000))
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
			if w, ok := why[fmt.Sprintf("%016x", h.Sum64())]; ok && v != "reject: "+w {
				bad = append(bad, fmt.Sprintf("%s: C %s, not %q", f, v, "reject: "+w))
			}
			rec, goErr := checkpoint.DecodeRecord(b)
			if (v == "accept") != (goErr == nil) {
				bad = append(bad, fmt.Sprintf("%s: C %s, Go %v", f, v, goErr))
			} else if roundtrip {
				if err := wroteBack(filepath.Join(written, fmt.Sprintf("%016x", h.Sum64())), rec, start, end); err != nil {
					bad = append(bad, fmt.Sprintf("%s: written back: %v", f, err))
				}
			}
		}
	}
	if len(bad) > 0 {
		return errors.New("the C and Go readers and writers disagree:\n" + strings.Join(bad, "\n"))
	}
	return nil
}

// pluginRunDirMax is the longest run dir the plugin has (its PATH_MAX
// buffer): a record with a longer one is read, not written back.
const pluginRunDirMax = 4095

// wroteBack checks the C writer's file for the record read (nil: the
// input was rejected): the Go writer's encoding of that record, with the C
// writer's stamp (a time between start and end, writer "") and the lowest
// version that holds it (Version 0).
func wroteBack(path string, read *checkpoint.Record, start, end time.Time) error {
	b, err := os.ReadFile(path)
	if read == nil || len(read.RunDir) > pluginRunDirMax {
		if err == nil {
			return errors.New("a record the C reader should not have taken, or could not write, was written")
		}
		return nil
	}
	if err != nil {
		return err
	}
	got, err := checkpoint.DecodeRecord(b)
	if err != nil {
		return fmt.Errorf("the Go reader rejects it: %w", err)
	}
	if got.Time.Before(start) || got.Time.After(end) {
		return fmt.Errorf("stamped %v, not between %v and %v", got.Time, start, end)
	}
	want := *read
	want.Version, want.Writer, want.Time = 0, "", got.Time
	wb, err := want.Encode()
	if err != nil {
		return err
	}
	if !bytes.Equal(b, wb) {
		i := 0
		for i < min(len(b), len(wb)) && b[i] == wb[i] {
			i++
		}
		return fmt.Errorf("%d bytes, the Go writer's %d, differing from byte %d: %x, the Go writer's %x",
			len(b), len(wb), i, b[i:min(len(b), i+16)], wb[i:min(len(wb), i+16)])
	}
	return nil
}

func tail(s string, n int) string { return s[max(0, len(s)-n):] }
