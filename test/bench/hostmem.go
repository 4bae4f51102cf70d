package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// What a daemon costs the machine, not only its RSS: a page file that
// stays in the run dir's tmpfs but is not mapped still takes its page, and
// the kernel's share of a scope (its socket, its directory's inodes and
// dentries) is nowhere in the RSS. The daemon runs in a memory cgroup of
// its own, which is charged with all three: its anonymous memory, the
// pages of the files it wrote (page cache and shmem), and the kernel
// memory it allocated.

// memcg is a memory cgroup the bench made for one daemon.
type memcg struct {
	dir string
	v2  bool
}

// memcgRoots are where a memory controller may be mounted: v2's unified
// hierarchy (if it has the controller), v1's memory hierarchy.
var memcgRoots = []struct {
	dir string
	v2  bool
}{{"/sys/fs/cgroup", true}, {"/sys/fs/cgroup/unified", true}, {"/sys/fs/cgroup/memory", false}}

// newMemcg moves process pid into a new memory cgroup; an error if the
// machine has no memory controller the bench can use.
func newMemcg(pid int) (*memcg, error) {
	for _, r := range memcgRoots {
		if r.v2 {
			b, err := os.ReadFile(filepath.Join(r.dir, "cgroup.subtree_control"))
			if err != nil || !strings.Contains(" "+string(b)+" ", " memory") {
				continue
			}
		} else if _, err := os.Stat(filepath.Join(r.dir, "memory.usage_in_bytes")); err != nil {
			continue
		}
		dir, err := os.MkdirTemp(r.dir, "genid-bench-")
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			os.Remove(dir)
			return nil, err
		}
		return &memcg{dir: dir, v2: r.v2}, nil
	}
	return nil, errors.New("no memory cgroup controller")
}

// remove removes the cgroup, once its process has exited: what is still
// charged to it moves to its parent.
func (m *memcg) remove() {
	if m != nil {
		os.Remove(m.dir)
	}
}

// memSample is a daemon's memory at one moment, in bytes.
type memSample struct {
	// Charged to its cgroup (0 without one): anonymous memory, file pages
	// (page cache and shmem: the files it wrote), kernel memory.
	anon, file, kernel int64
	// From /proc/PID/status: anonymous, and file-backed (RssFile+RssShmem:
	// the pages it maps) resident memory.
	rssAnon, rssFile int64
	// Allocated bytes of the regular files in its run dir and state dir.
	files int64
}

// charged is what the cgroup holds: all the daemon costs the machine.
func (s memSample) charged() int64 { return s.anon + s.file + s.kernel }

// sub is s - o, field by field.
func (s memSample) sub(o memSample) memSample {
	return memSample{s.anon - o.anon, s.file - o.file, s.kernel - o.kernel,
		s.rssAnon - o.rssAnon, s.rssFile - o.rssFile, s.files - o.files}
}

// div is s / n, field by field.
func (s memSample) div(n int64) memSample {
	return memSample{s.anon / n, s.file / n, s.kernel / n, s.rssAnon / n, s.rssFile / n, s.files / n}
}

// memory samples d's memory, in cg if not nil.
func (d *daemon) memory(cg *memcg) (memSample, error) {
	s := memSample{rssAnon: d.status("RssAnon:"), rssFile: d.status("RssFile:") + d.status("RssShmem:")}
	for _, dir := range []string{d.dir, d.state} {
		n, err := fileBytes(dir)
		if err != nil {
			return s, err
		}
		s.files += n
	}
	if cg == nil {
		return s, nil
	}
	st, err := readKeyed(filepath.Join(cg.dir, "memory.stat"))
	if err != nil {
		return s, err
	}
	if cg.v2 {
		s.anon, s.file, s.kernel = st["anon"], st["file"], st["kernel"]
		return s, nil
	}
	s.anon, s.file = st["rss"], st["cache"]
	b, err := os.ReadFile(filepath.Join(cg.dir, "memory.kmem.usage_in_bytes"))
	if err == nil {
		s.kernel, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	return s, err
}

// fileBytes sums the allocated bytes of the regular files under dir: what
// they take in a tmpfs, or in the page cache once read or written.
func fileBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) { // removed meanwhile
				return nil
			}
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		info, err := e.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		n += info.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	return n, err
}

// readKeyed reads a file of "key value" lines.
func readKeyed(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, k, err)
		}
		out[k] = n
	}
	return out, nil
}
