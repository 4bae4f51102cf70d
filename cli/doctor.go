package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/backend"
	"github.com/genid-project/genid/internal/hooks"
	"github.com/genid-project/genid/internal/hwbp"
	"github.com/genid-project/genid/internal/version"
)

// Where genid's pieces go by default.
const (
	defaultHooksDir  = "/etc/genid/hooks.d"
	defaultPlugin    = "/usr/lib/criu/genid-criu.so" // CRIU's default plugin dir
	criuConfig       = "/etc/criu/default.conf"
	doctorCmdTimeout = 5 * time.Second // each check's bound (--timeout)
)

// Results of a check.
const (
	statusOK   = "ok"
	statusWarn = "warn"
	statusFail = "fail"
)

// finding is one line of doctor's report.
type finding struct {
	Check   string `json:"check"`
	Status  string `json:"status"` // ok, warn or fail
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

// doctor checks one host; its fields say where to look, so that a test can
// point it at what a host cannot show.
type doctor struct {
	runDir    string
	criu      string // criu's path, or a name looked up in PATH
	plugin    string
	hooksDir  string   // the daemon's after-restore hooks
	ociHooks  []string // container engines' hooks.d dirs
	cdiDirs   []string
	probe     func() (hwbp.Verdict, string)
	available func() map[string]error
	getenv    func(string) string
	timeout   time.Duration // each exchange with the daemon or criu

	found []finding
}

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check this host for what genid's restore safety needs, with a fix for each problem",
		Description: "Each line is a check: ok, warn or fail, and for a problem, how to fix it: the daemon and its\n" +
			"version; the hypervisor backends; CRIU, genid's plugin and whether it was built for that CRIU;\n" +
			"whether hardware breakpoints fire (else criu needs CRIU_FAULT=130); the sockets and who may bump;\n" +
			"the after-restore hooks; the container engines' integration. Exits 1 when a check fails.",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Value: doctorCmdTimeout, Usage: "bound each check that asks the daemon or runs criu by `DURATION`"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON: {\"ok\": BOOL, \"checks\": [{\"check\", \"status\", \"message\", \"fix\"}]}"},
			&cli.StringFlag{Name: "criu", Value: "criu", Usage: "the criu `PATH` to check (a name is looked up in PATH)"},
			&cli.StringFlag{Name: "plugin", Usage: "the CRIU plugin's `PATH` (default: genid-criu.so in CRIU's plugin dir, " + filepath.Dir(defaultPlugin) + ")"},
			&cli.StringFlag{Name: "hooks-dir", Value: defaultHooksDir, Usage: "the daemon's after-restore hooks `DIR`"},
			&cli.StringSliceFlag{Name: "oci-hooks-dir", Value: cli.NewStringSlice(hooksDir, "/etc/containers/oci/hooks.d"), Usage: "container engines' hooks.d `DIR`s"},
			&cli.StringSliceFlag{Name: "cdi-dir", Value: cli.NewStringSlice(cdiDir, "/var/run/cdi"), Usage: "CDI spec `DIR`s"},
		},
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			d := &doctor{
				runDir: runDir(c), criu: c.String("criu"), plugin: c.String("plugin"), hooksDir: c.String("hooks-dir"),
				ociHooks: c.StringSlice("oci-hooks-dir"), cdiDirs: c.StringSlice("cdi-dir"),
				probe:     func() (hwbp.Verdict, string) { return hwbp.Probe(hwbp.DefaultTimeout) },
				available: func() map[string]error { return backend.Availability(backend.Options{}) },
				getenv:    os.Getenv,
				timeout:   c.Duration("timeout"),
			}
			if d.timeout <= 0 {
				return usageError{fmt.Errorf("doctor: --timeout %v: must be positive", d.timeout)}
			}
			d.run(c.Context)
			if err := d.print(os.Stdout, c.Bool("json")); err != nil {
				return err
			}
			if !d.ok() {
				return cli.Exit("", exitFailure)
			}
			return nil
		},
	}
}

func (d *doctor) add(check, status, msg, fix string) {
	d.found = append(d.found, finding{Check: check, Status: status, Message: msg, Fix: fix})
}

// ok tells whether no check failed.
func (d *doctor) ok() bool {
	return !slices.ContainsFunc(d.found, func(f finding) bool { return f.Status == statusFail })
}

// run makes every check.
func (d *doctor) run(ctx context.Context) {
	st := d.checkDaemon(ctx)
	d.checkBackends(st)
	criuVersion := d.checkCRIU(ctx)
	d.checkPlugin(criuVersion)
	d.checkBreakpoints(criuVersion != "")
	if st != nil {
		d.checkSockets()
	}
	d.checkHooks()
	d.checkContainers()
}

func (d *doctor) print(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			OK     bool      `json:"ok"`
			Checks []finding `json:"checks"`
		}{d.ok(), d.found})
	}
	for _, f := range d.found {
		fmt.Fprintf(w, "%-4s  %-15s %s\n", f.Status, f.Check, f.Message)
		if f.Fix != "" {
			fmt.Fprintf(w, "      %-15s fix: %s\n", "", f.Fix)
		}
	}
	return nil
}

// checkDaemon: reachable on the host scope's socket, and its version.
func (d *doctor) checkDaemon(ctx context.Context) *genid.Status {
	start := fmt.Sprintf("start it: genidctl --run-dir %s daemon (or its systemd unit)", d.runDir)
	cl, err := genid.Open(d.runDir)
	if err != nil {
		d.add("daemon", statusFail, fmt.Sprintf("no daemon has served %s: %v", d.runDir, err), start)
		return nil
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	st, err := cl.Status(ctx)
	if err != nil {
		d.add("daemon", statusFail, fmt.Sprintf("not reachable at %s: %v", cl.SocketPath(), err), start)
		return nil
	}
	msg := fmt.Sprintf("running on %s, version %s; host scope at generation %d, %d watchers (%d outdated)",
		d.runDir, orUnknown(st.Version), st.Generation, st.Watchers, st.Outdated)
	switch {
	case st.Version == "":
		d.add("daemon", statusWarn, msg, "the daemon predates versions in status: restart it with this genidctl")
	case st.Version != version.String():
		d.add("daemon", statusWarn, msg+"; this genidctl is "+version.String(), "restart the daemon after an upgrade, so that both are one version")
	default:
		d.add("daemon", statusOK, msg, "")
	}
	return st
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// checkBackends: which backends the daemon runs, and why the others are
// off on this machine.
func (d *doctor) checkBackends(st *genid.Status) {
	avail := d.available()
	var active []string
	if st != nil {
		active = st.Backends
	}
	for _, name := range backend.Names() {
		why := avail[name]
		check := "backend " + name
		switch {
		case slices.Contains(active, name):
			d.add(check, statusOK, "active: a VM restore or clone bumps every scope", "")
		case why == nil && st != nil:
			d.add(check, statusWarn, "this machine has it, but the daemon does not run it",
				"run the daemon with --backends auto (the default); if it runs it and it stopped, its log says why")
		case why == nil:
			d.add(check, statusWarn, "this machine has it; the daemon is not running to use it", "start the daemon")
		case len(active) > 0:
			d.add(check, statusOK, "off: "+why.Error(), "")
		default:
			d.add(check, statusWarn, "off: "+why.Error()+"; no backend is active: a VM restore or clone is not seen",
				"on a VM, give it a VM generation ID device (QEMU: -device vmgenid); on bare metal, ignore this")
		}
	}
}

// checkCRIU: criu is installed, and which version. It returns the version,
// "" if there is no criu.
func (d *doctor) checkCRIU(ctx context.Context) string {
	path, err := exec.LookPath(d.criu)
	if err != nil {
		d.add("criu", statusWarn, fmt.Sprintf("%s not found: checkpoint/restore of processes and containers is not used here", d.criu),
			"install CRIU 4.x (Debian: apt-get install criu) if containers or processes are checkpointed on this host")
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	out, err := commandOutput(ctx, path, "--version")
	v := criuVersion(out)
	if err != nil || v == "" {
		d.add("criu", statusFail, fmt.Sprintf("%s --version: %v %q", path, err, strings.TrimSpace(string(out))), "reinstall CRIU")
		return ""
	}
	if major(v) < 4 {
		d.add("criu", statusFail, fmt.Sprintf("%s is CRIU %s: genid's plugin needs 4.x", path, v), "install CRIU 4.x")
		return v
	}
	d.add("criu", statusOK, fmt.Sprintf("%s is CRIU %s", path, v), "")
	return v
}

// criuVersion reads "Version: X.Y[.Z]" from criu --version.
func criuVersion(out []byte) string {
	for line := range strings.SplitSeq(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// major is a version's first number (-1 if none).
func major(v string) int {
	n, err := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	if err != nil {
		return -1
	}
	return n
}

// minor is a version's major.minor.
func minor(v string) string {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + parts[1]
}

// checkPlugin: genid's plugin is where CRIU loads it, safe to load as root,
// and built for the CRIU installed.
func (d *doctor) checkPlugin(criuVer string) {
	path := d.plugin
	if path == "" {
		dir := filepath.Dir(defaultPlugin)
		if libdir := criuLibdir(criuConfig); libdir != "" {
			dir = libdir
		}
		path = filepath.Join(dir, filepath.Base(defaultPlugin))
	}
	install := "make install-plugin (installs it in " + filepath.Dir(defaultPlugin) + ", where CRIU and runc load it)"
	if _, err := os.Stat(path); err != nil {
		if criuVer == "" {
			d.add("criu plugin", statusOK, "not installed, and not needed without criu", "")
			return
		}
		d.add("criu plugin", statusFail, fmt.Sprintf("%s: %v: a restore would not bump a container's scope nor wake restored watchers", path, err), install)
		return
	}
	if err := hooks.Trusted(path, []uint32{0, uint32(os.Geteuid())}); err != nil {
		d.add("criu plugin", statusFail, fmt.Sprintf("criu, as root, would load code others may write: %v", err), "chown root:root and chmod 0644 the plugin and its directories")
		return
	}
	p, err := readPlugin(path)
	if err != nil {
		d.add("criu plugin", statusFail, fmt.Sprintf("%s: %v", path, err), install)
		return
	}
	msg := fmt.Sprintf("%s: plugin API %s", path, p.APIVersion.api())
	if p.APIVersion != criuPluginAPI {
		d.add("criu plugin", statusFail, msg+fmt.Sprintf(", CRIU 4's is %s: CRIU would refuse it", pluginAPI(criuPluginAPI).api()), "rebuild it against this CRIU's headers: make plugin install-plugin")
		return
	}
	switch {
	case p.BuiltFor == "":
		d.add("criu plugin", statusWarn, msg+"; it does not say which CRIU it was built for (built before genid_criu_built_for)", "rebuild it: make plugin install-plugin")
	case criuVer == "":
		d.add("criu plugin", statusWarn, msg+fmt.Sprintf(", built for CRIU %s; no criu to load it", p.BuiltFor), "")
	case minor(p.BuiltFor) != minor(criuVer):
		d.add("criu plugin", statusWarn, msg+fmt.Sprintf(", built for CRIU %s, but criu is %s", p.BuiltFor, criuVer), "rebuild it against this CRIU's headers (libcriu-dev): make plugin install-plugin")
	default:
		d.add("criu plugin", statusOK, msg+fmt.Sprintf(", built for CRIU %s", p.BuiltFor), "")
	}
}

// criuLibdir reads the plugin dir a CRIU configuration file sets ("libdir
// DIR"), "" if none.
func criuLibdir(conf string) string {
	b, err := os.ReadFile(conf)
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(strings.ReplaceAll(line, "=", " "))
		if len(f) == 2 && strings.TrimLeft(f[0], "-") == "libdir" {
			return f[1]
		}
	}
	return ""
}

// checkBreakpoints: do x86 hardware breakpoints fire here? Where they do
// not, criu hangs unless CRIU_FAULT=130.
func (d *doctor) checkBreakpoints(haveCRIU bool) {
	v, why := d.probe()
	fix := "give criu CRIU_FAULT=130 in its environment: runc, crun and containerd pass theirs on (systemd: Environment=CRIU_FAULT=130); " +
		"podman does not: name a wrapper as its runtime that exports it (see docs/criu.md, \"On a VM where hardware breakpoints never fire\")"
	switch {
	case v == hwbp.Fire || v == hwbp.NotX86:
		d.add("hw breakpoints", statusOK, string(v), "")
	case v == hwbp.Error:
		d.add("hw breakpoints", statusWarn, "the probe could not tell: "+why, "")
	case !haveCRIU:
		d.add("hw breakpoints", statusWarn, "never fire here ("+why+"): criu would hang here without CRIU_FAULT=130", fix)
	case d.getenv("CRIU_FAULT") == "130":
		d.add("hw breakpoints", statusWarn, "never fire here ("+why+"); CRIU_FAULT=130 is set in this environment: make sure criu's has it too", fix)
	default:
		d.add("hw breakpoints", statusFail, "never fire here ("+why+"): criu dump and restore hang", fix)
	}
}

// checkSockets: the admin socket's mode, and so who may bump; the host
// scope's socket open to every user.
func (d *doctor) checkSockets() {
	admin := filepath.Join(d.runDir, genid.AdminSocketFile)
	fi, err := os.Stat(admin)
	if err != nil {
		d.add("admin socket", statusFail, fmt.Sprintf("%s: %v: nobody can bump, restores cannot reach the daemon", admin, err), "start the daemon")
	} else {
		st := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		who := fmt.Sprintf("%s %#o %s:%s: ", admin, mode, userName(st.Uid), groupName(st.Gid))
		switch {
		case mode&0o007 != 0:
			d.add("admin socket", statusWarn, who+"anyone may connect (the daemon still serves only administrators)",
				"restart the daemon: it makes the socket 0600, or 0660 with --admin-group")
		case mode&0o070 != 0:
			d.add("admin socket", statusOK, who+fmt.Sprintf("root, uid %d and the members of group %s may bump, create scopes and restore", st.Uid, groupName(st.Gid)), "")
		case st.Uid == 0:
			d.add("admin socket", statusOK, who+"only root may bump (a non-root criu needs the daemon's --admin-group)", "")
		default:
			d.add("admin socket", statusOK, who+fmt.Sprintf("only root and uid %d may bump (a non-root criu needs the daemon's --admin-group)", st.Uid), "")
		}
	}
	sock := filepath.Join(d.runDir, genid.SocketFile)
	if fi, err := os.Stat(sock); err == nil && fi.Mode().Perm()&0o006 != 0o006 {
		d.add("socket", statusWarn, fmt.Sprintf("%s %#o: other users cannot watch", sock, fi.Mode().Perm()), "restart the daemon: it makes the socket 0666")
	} else if err == nil {
		d.add("socket", statusOK, fmt.Sprintf("%s %#o: every user may watch the host scope", sock, fi.Mode().Perm()), "")
	}
}

func userName(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return u.Username
	}
	return strconv.FormatUint(uint64(uid), 10)
}

func groupName(gid uint32) string {
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
		return g.Name
	}
	return strconv.FormatUint(uint64(gid), 10)
}

// checkHooks: the after-restore hooks the daemon would run, or refuse: it
// takes those of root and of its own user, who owns its admin socket.
func (d *doctor) checkHooks() {
	owners := []uint32{0}
	if fi, err := os.Stat(filepath.Join(d.runDir, genid.AdminSocketFile)); err == nil {
		owners = append(owners, fi.Sys().(*syscall.Stat_t).Uid)
	}
	list, refused, err := hooks.List(d.hooksDir, owners)
	switch {
	case err != nil:
		d.add("hooks", statusFail, fmt.Sprintf("%s: %v", d.hooksDir, err), "chown root and chmod go-w the directory and those above it")
	case len(refused) > 0:
		var names []string
		for _, r := range refused {
			names = append(names, r.Name+": "+r.Error)
		}
		d.add("hooks", statusFail, fmt.Sprintf("%s: the daemon would not run %s", d.hooksDir, strings.Join(names, "; ")), "chown root and chmod go-w each hook")
	case len(list) == 0:
		d.add("hooks", statusOK, fmt.Sprintf("no after-restore hooks in %s", d.hooksDir), "")
	default:
		var names []string
		for _, h := range list {
			names = append(names, h.Name)
		}
		d.add("hooks", statusOK, fmt.Sprintf("%s: run on each bump: %s", d.hooksDir, strings.Join(names, ", ")), "")
	}
}

// checkContainers: genid's hooks.d files or CDI spec, and the genidctl they
// run.
func (d *doctor) checkContainers() {
	type install struct {
		file string
		argv []string // the hook's path and args
	}
	var found []install
	for _, dir := range d.ociHooks {
		for _, stage := range []string{stageCreateRuntime, stagePoststop} {
			path := filepath.Join(dir, fmt.Sprintf("%s-%s.json", hooksFileBase, stage))
			var h struct {
				Hook struct {
					Path string   `json:"path"`
					Args []string `json:"args"`
				} `json:"hook"`
			}
			if readJSON(path, &h) {
				found = append(found, install{path, append([]string{h.Hook.Path}, h.Hook.Args...)})
			}
		}
	}
	for _, dir := range d.cdiDirs {
		path := filepath.Join(dir, cdiSpecName)
		var spec struct {
			Devices []struct {
				ContainerEdits struct {
					Hooks []struct {
						Path string   `json:"path"`
						Args []string `json:"args"`
					} `json:"hooks"`
				} `json:"containerEdits"`
			} `json:"devices"`
		}
		if readJSON(path, &spec) {
			for _, dev := range spec.Devices {
				for _, h := range dev.ContainerEdits.Hooks {
					found = append(found, install{path, append([]string{h.Path}, h.Args...)})
				}
			}
		}
	}
	if len(found) == 0 {
		d.add("containers", statusWarn, fmt.Sprintf("no genid hooks in %s nor CDI spec in %s: containers get no scope of their own",
			strings.Join(d.ociHooks, ", "), strings.Join(d.cdiDirs, ", ")),
			"genidctl hooks-d (podman, CRI-O) or genidctl cdi-spec (containerd, podman --device genid.io/scope=container)")
		return
	}
	files := map[string]bool{}
	for _, in := range found {
		files[in.file] = true
		bin := in.argv[0]
		if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm()&0o111 == 0 || !fi.Mode().IsRegular() {
			d.add("containers", statusFail, fmt.Sprintf("%s runs %s, which is missing or not executable", in.file, bin),
				"install genidctl there, or write the file again with --genidctl PATH")
			return
		}
		if dir := argAfter(in.argv, "--run-dir"); dir != "" && dir != d.runDir {
			d.add("containers", statusWarn, fmt.Sprintf("%s gives containers the scopes of %s, not of %s", in.file, dir, d.runDir),
				"write the file again with --run-dir "+d.runDir)
			return
		}
	}
	d.add("containers", statusOK, "a scope per container through "+strings.Join(slices.Sorted(maps.Keys(files)), ", "), "")
}

// argAfter returns the argument after flag in argv, "" if none.
func argAfter(argv []string, flag string) string {
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}

// readJSON reads a JSON file into v; false if it is missing or unreadable.
func readJSON(path string, v any) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	return json.Unmarshal(b, v) == nil
}

// commandOutput runs a program, bounded by ctx, and returns its output.
func commandOutput(ctx context.Context, path string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.WaitDelay = time.Second
	return cmd.CombinedOutput()
}
