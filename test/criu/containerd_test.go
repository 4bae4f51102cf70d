package criu

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/proctest"
	"github.com/genid-project/genid/internal/servertest"
)

// The test bed's containerd config, as a node that uses CDI has it: the
// CRI plugin with CDI on (the spec dirs podman reads too), runc through its
// shim, host networking only (no CNI), and a pause image made in the bed.
const (
	containerdConfig = "/etc/containerd/config.toml"
	containerdSocket = "/run/containerd/containerd.sock"
	pauseImage       = "localhost/pause:latest"
	makeImage        = "/usr/local/libexec/genid-testbed/make-image"
)

// startContainerd runs the bed's containerd for the test and returns a CRI
// client of it.
func startContainerd(t *testing.T) cri.RuntimeServiceClient {
	t.Helper()
	if _, err := exec.LookPath("containerd"); err != nil {
		t.Fatalf("containerd: %v: run through `make e2e-criu`, inside the test bed", err)
	}
	log := &proctest.Buffer{}
	cmd := exec.Command("containerd", "--config", containerdConfig)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("containerd's log:\n%s", tail(log.String(), 60))
		}
	})
	servertest.WaitFor(t, "containerd's socket", func() bool {
		_, err := os.Stat(containerdSocket)
		return err == nil
	})
	conn, err := grpc.NewClient("unix://"+containerdSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return cri.NewRuntimeServiceClient(conn)
}

// 4. A container that containerd's CRI (as kubelet drives it) starts with
// the CDI device genid.io/scope=container gets its own scope, named after
// it, mounted where its processes look; the scope goes with it.
func TestContainerdCDI(t *testing.T) {
	h := newHostAt(t, genid.DefaultRunDir)
	h.start(3)
	// The images, from podman's store to containerd's, as a node would
	// preload them (no registry is reachable); the CDI spec, as the
	// operator installs it.
	e := newEngine(t, h, "runc")
	e.makeImage()
	app, pause := filepath.Join(t.TempDir(), "app.tar"), filepath.Join(t.TempDir(), "pause.tar")
	e.mustPodman("save", "--format", "docker-archive", "-o", app, podmanImage)
	for _, argv := range [][]string{
		{makeImage, "pause"}, // in podman's default store
		{"podman", "save", "--format", "docker-archive", "-o", pause, pauseImage},
	} {
		if out, err := runBounded(exec.Command(argv[0], argv[1:]...), commandTimeout); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	}
	rt := startContainerd(t)
	for _, archive := range []string{app, pause} {
		if out, err := runBounded(exec.Command("ctr", "--namespace", "k8s.io", "image", "import", archive), commandTimeout); err != nil {
			t.Fatalf("ctr image import %s: %v\n%s", archive, err, out)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	podCfg := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: "genid-pod", Namespace: "default", Uid: "genid-pod-uid"},
		Linux: &cri.LinuxPodSandboxConfig{
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE}},
		},
	}
	pod, err := rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	t.Cleanup(func() {
		rt.StopPodSandbox(context.Background(), &cri.StopPodSandboxRequest{PodSandboxId: pod.PodSandboxId})
		rt.RemovePodSandbox(context.Background(), &cri.RemovePodSandboxRequest{PodSandboxId: pod.PodSandboxId})
	})
	out := t.TempDir()
	os.Chmod(out, 0o777)
	ctr, err := rt.CreateContainer(ctx, &cri.CreateContainerRequest{
		PodSandboxId:  pod.PodSandboxId,
		SandboxConfig: podCfg,
		Config: &cri.ContainerConfig{
			Metadata:   &cri.ContainerMetadata{Name: "app"},
			Image:      &cri.ImageSpec{Image: podmanImage},
			Command:    []string{"sh", "-c", pctrScript},
			Mounts:     []*cri.Mount{{ContainerPath: "/out", HostPath: out}},
			CDIDevices: []*cri.CDIDevice{{Name: "genid.io/scope=container"}},
		},
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if err := os.WriteFile(filepath.Join(out, "ack"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	st, err := rt.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: ctr.ContainerId, Verbose: true})
	if err != nil {
		t.Fatalf("ContainerStatus: %v", err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil || info.Pid <= 0 {
		t.Fatalf("the container's pid: %v %q", err, st.Info["info"])
	}
	var sc string
	servertest.WaitFor(t, "the container's scope", func() bool {
		sc = h.scopeOfPID(info.Pid)
		return sc != ""
	})
	if sc != ctr.ContainerId {
		t.Fatalf("the container's scope is %q, not its id %s", sc, ctr.ContainerId)
	}
	servertest.WaitFor(t, "the container's watcher", func() bool { return h.scopeStatus(sc).Watchers == 1 })
	waitLine(t, filepath.Join(out, "mmap.out"), "0")
	h.mustCtl("bump", "--scope", sc, "--min", "7", "--reason", "test")
	waitLine(t, filepath.Join(out, "watch.out"), "7")
	waitLine(t, filepath.Join(out, "mmap.out"), "7")
	if _, err := h.ctl("wait-watchers", "--scope", sc, "--timeout", "15s"); err != nil {
		t.Fatal(err)
	}
	if g := h.gen(); g != 3 {
		t.Fatalf("the host's generation moved to %d", g)
	}
	if r, err := rt.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: ctr.ContainerId, Cmd: []string{"genidctl", "get"}, Timeout: 10}); err != nil ||
		strings.TrimSpace(string(r.Stdout)) != strconv.Itoa(7) {
		t.Fatalf("genidctl get in the container: %v %+v", err, r)
	}
	if _, err := rt.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: ctr.ContainerId, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if _, err := rt.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: ctr.ContainerId}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	servertest.WaitFor(t, "the container's scope to go", func() bool { return !h.hasScope(sc) })
}
