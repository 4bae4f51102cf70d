package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/page"
	"github.com/genid-project/genid/internal/wire"
)

// Where a container sees its scope: the scope's directory, and each of its
// pages alone where readers of the kernel's devices look for one: AWS-LC's
// sysgenid page, and Linux's VMClock device.
const (
	containerRunDir  = genid.DefaultRunDir
	containerPage    = "/dev/sysgenid"
	containerVMClock = "/dev/vmclock0"
)

// scopeMounts are a scope's mounts in a container: a file of the scope's
// directory ("": the directory itself) and where the container has it.
var scopeMounts = []struct {
	file   string
	target string
}{
	{"", containerRunDir},
	{genid.PageFile, containerPage},
	{page.VMClockFile, containerVMClock},
}

// OCI hook stages genidctl oci-hook takes.
const (
	stageCreateRuntime = "createRuntime"
	stagePrestart      = "prestart" // the same, under its older name
	stagePoststop      = "poststop"
)

func ociHookCommand() *cli.Command {
	return &cli.Command{
		Name:      "oci-hook",
		Usage:     "OCI runtime hook: give a container a scope of its own, and remove it with the container",
		ArgsUsage: "createRuntime|prestart|poststop",
		Description: "Run by the container runtime (runc, crun, podman, CRI-O), with the container's state on stdin.\n" +
			"createRuntime (or prestart): creates the scope named after the container's id, bound to the\n" +
			"container's process (the daemon removes it when that ends), and bind-mounts its directory\n" +
			"read-only at " + containerRunDir + ", its page at " + containerPage + " and its VMClock page at\n" +
			containerVMClock + " in the container. When a runtime restores a container (runc runs this\n" +
			"hook then, its state \"stopped\"), it only creates the scope: the CRIU plugin restores the\n" +
			"mounts. poststop: removes the scope.\n" +
			"Set it up with `genidctl oci-config` (a bundle), the hooks.d file, or the CDI spec: see the README.",
		Action: runOCIHook,
	}
}

// hookState is the container's state as runtimes give it to hooks; crun
// adds the root file system's path, as its config has it.
type hookState struct {
	specs.State
	Root string `json:"root,omitempty"`
}

func runOCIHook(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError{errors.New("oci-hook needs its stage: createRuntime, prestart or poststop")}
	}
	stage := c.Args().First()
	b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	if err != nil {
		return fmt.Errorf("oci-hook: the container's state: %w", err)
	}
	var st hookState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("oci-hook: the container's state on stdin: %w", err)
	}
	name, err := scopeName(st.ID)
	if err != nil {
		return fmt.Errorf("oci-hook: %w", err)
	}
	a, err := openAdmin(c)
	if err != nil {
		return err
	}
	defer a.Close()
	switch stage {
	case stageCreateRuntime, stagePrestart:
		if st.Pid <= 0 {
			return fmt.Errorf("oci-hook %s: the container's state has no pid", stage)
		}
		if _, err := a.CreateScope(c.Context, name, genid.ScopeOptions{PID: st.Pid, ExistOK: true}); err != nil {
			return fmt.Errorf("oci-hook: scope %s for container %s: %w", name, st.ID, err)
		}
		if st.Status == specs.StateStopped {
			return nil // a restore: the CRIU plugin restores the mounts
		}
		rootfs, err := containerRoot(st)
		if err != nil {
			a.RemoveScope(c.Context, name)
			return fmt.Errorf("oci-hook: container %s: %w", st.ID, err)
		}
		if err := mountScope(st.Pid, rootfs, filepath.Join(runDir(c), "scopes", name)); err != nil {
			a.RemoveScope(c.Context, name)
			return fmt.Errorf("oci-hook: container %s: %w", st.ID, err)
		}
		return nil
	case stagePoststop:
		if err := a.RemoveScope(c.Context, name); err != nil && !errors.Is(err, genid.ErrNotFound) {
			return fmt.Errorf("oci-hook: scope %s of container %s: %w", name, st.ID, err)
		}
		return nil
	}
	return usageError{fmt.Errorf("oci-hook: stage %q: want createRuntime, prestart or poststop", stage)}
}

// scopeName is the scope of a container: its id, which runc lets hold '+',
// made a scope name.
func scopeName(id string) (string, error) {
	name := strings.Map(func(r rune) rune {
		if r == '+' {
			return '_'
		}
		return r
	}, id)
	if err := wire.CheckName(name); err != nil {
		return "", fmt.Errorf("container id %q makes no scope name: %v", id, err)
	}
	return name, nil
}

// containerRoot is the container's root file system, as a path in its
// mount namespace before it pivots there: crun tells it in the state;
// otherwise it is the bundle's config's root.path, relative to the bundle.
func containerRoot(st hookState) (string, error) {
	root := st.Root
	if root == "" {
		b, err := os.ReadFile(filepath.Join(st.Bundle, "config.json"))
		if err != nil {
			return "", fmt.Errorf("the bundle's config: %w", err)
		}
		var spec struct {
			Root *specs.Root `json:"root"`
		}
		if err := json.Unmarshal(b, &spec); err != nil || spec.Root == nil {
			return "", fmt.Errorf("%s: no root.path: %v", filepath.Join(st.Bundle, "config.json"), err)
		}
		root = spec.Root.Path
	}
	if !filepath.IsAbs(root) {
		root = filepath.Join(st.Bundle, root)
	}
	return root, nil
}

// mountScope bind-mounts the scope's directory read-only at /run/genid, its
// page at /dev/sysgenid and its VMClock page at /dev/vmclock0 (over the
// device, if the container has the VM's: the scope's counter moves on a VM
// restore too), in the mount namespace of process pid (the
// container's, not yet pivoted into rootfs). The mounts are made where the
// host's paths are, then moved into that namespace; the paths in the
// container are resolved within rootfs, so that a symbolic link of the
// image cannot point them elsewhere.
func mountScope(pid int, rootfs, dir string) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread has joined the container's mount
		// namespace, and goes with this goroutine.
		runtime.LockOSThread()
		errc <- mountIn(pid, rootfs, dir)
	}()
	return <-errc
}

func mountIn(pid int, rootfs, dir string) error {
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
	trees := make([]int, len(scopeMounts))
	for i, m := range scopeMounts {
		src := filepath.Join(dir, m.file)
		fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			return fmt.Errorf("open_tree %s: %w", src, err)
		}
		defer unix.Close(fd)
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, attr); err != nil {
			return fmt.Errorf("read-only %s: %w", src, err)
		}
		trees[i] = fd
	}
	ns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("the container's mount namespace: %w", err)
	}
	defer unix.Close(ns)
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	if err := unix.Setns(ns, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("join the container's mount namespace: %w", err)
	}
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("the container's root %s: %w", rootfs, err)
	}
	defer unix.Close(root)
	for i, m := range scopeMounts {
		fd, err := mountPoint(root, m.target, m.file != "")
		if err != nil {
			return fmt.Errorf("mount point %s: %w", m.target, err)
		}
		err = unix.MoveMount(trees[i], "", fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("mount on %s: %w", m.target, err)
		}
	}
	return nil
}

// mountPoint opens (creating it if missing) path in the root file system
// root as a mount point: a directory, or an empty file. Every component is
// resolved within root (RESOLVE_IN_ROOT).
func mountPoint(root int, path string, file bool) (int, error) {
	rel := strings.TrimPrefix(path, "/")
	parent, base := filepath.Dir(rel), filepath.Base(rel)
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	dfd, err := unix.Openat2(root, parent, how)
	if errors.Is(err, unix.ENOENT) {
		// Its parent (/run, /dev) is missing from the image: make it.
		if err := unix.Mkdirat(root, parent, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, err
		}
		dfd, err = unix.Openat2(root, parent, how)
	}
	if err != nil {
		return -1, err
	}
	defer unix.Close(dfd)
	if file {
		if err := unix.Mknodat(dfd, base, unix.S_IFREG|0o444, 0); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, err
		}
	} else if err := unix.Mkdirat(dfd, base, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, err
	}
	return unix.Openat2(dfd, base, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS})
}
