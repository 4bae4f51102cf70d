#!/usr/bin/env bash
# hack/testbed.sh - a Debian trixie test bed with CRIU 4.x, runc, crun, podman 5, containerd 1.7,
# gcc and busybox, for testing genid's CRIU plugin and daemon on a host whose own CRIU is too old.
#
# Usage (as root):
#   hack/testbed.sh build                      build the rootfs if not cached; last stdout line = path
#   hack/testbed.sh path                       print the cached rootfs path (exit 1 if not built)
#   hack/testbed.sh run [OPTIONS] -- CMD ARGS  run CMD inside the rootfs (exit status = CMD's)
#   hack/testbed.sh selftest                   build if needed, then check criu/runc/gcc/podman/
#                                              containerd; PASS/FAIL
#
# run OPTIONS:
#   --bind HOST[:GUEST]     bind-mount a host file or directory into the guest (rw; GUEST defaults
#                           to HOST). A missing mount point is created in the run's own overlay,
#                           never in the cached rootfs.
#   --ro-bind HOST[:GUEST]  same, read-only
#   --tmpfs GUEST           mount a fresh, writable tmpfs on GUEST (e.g. /etc/criu for a runc.conf)
#   --env NAME=VALUE        set a variable (the guest starts from a clean environment:
#                           PATH, HOME=/root, LANG=C.UTF-8, TERM)
#   -w, --workdir DIR       working directory inside the guest (default /)
#   --rw                    keep the root writable (writes go to the run's overlay, dropped at exit)
#   --timeout SECS          after SECS seconds, SIGTERM to CMD, then 10 s later SIGKILL to every
#                           process of the run; the run then exits 124
#
# Inside a run: private mount + pid namespaces; a bash is pid 1 (and, unless stdin is a
# terminal, leader of a new session) and CMD its child. When CMD exits, every process it left
# behind, runc containers included, is killed. The root is an overlay of the cached rootfs and a
# per-run tmpfs, mounted read-only: a run never changes the cache, even when killed. /tmp,
# /var/tmp, /run, /root, /dev, /dev/shm, and the stores and spec dirs of podman and containerd
# (/var/lib/containers, /var/lib/containerd, /etc/cdi) are per-run tmpfs. proc and sysfs are
# fresh. /sys/fs/cgroup: on a cgroup v1 host, a tmpfs with a bind mount of each of the host's
# v1 hierarchies (and its symlinks, e.g. cpu -> cpu,cpuacct) but not the v2 "unified" one (crun
# refuses such a "hybrid" mode), so runc, crun and criu all see plain v1; on a v2 host, the
# host's tree. On such a hybrid host every process of a run is also in a v2 cgroup of its own,
# genid-testbed/run-PID, removed when the run ends (see run_cgroup2: criu dumps a task's whole
# v2 subtree). All fds above 2 are closed before CMD starts and a host
# /dev/null on fds 0-2 becomes the guest's, so processes that CRIU must dump only hold the
# caller's other stdio (redirect those too before dumping: see selftest).
# Nothing is left mounted on the host. Concurrent runs are fine; runc container ids (and so
# their cgroup paths) must be unique across concurrent runs: every run's pid namespace gives
# the same pids, so a pid is not a unique id.
# `run` builds the rootfs if it is missing, holding the rootfs's run lock from before the check
# to the end of the run, so no concurrent build of another script version can remove it in
# between. A build removes the rootfses of other versions only once they have been idle for
# GENID_KEEP_HOURS (default 24) and no run holds them.
#
# Containers (all as root, inside a run):
#   podman 5.4: /etc/containers/containers.conf (default runtime crun, also runc; cgroupfs; no
#     network unless asked; k8s-file logs) and storage.conf (vfs, in the run's tmpfs).
#     podman run -d, container checkpoint --export F, container restore --import F --name N
#     work with --runtime crun and runc, and so does --device VENDOR/CLASS=NAME with a CDI spec
#     in /etc/cdi or /var/run/cdi.
#   /usr/local/libexec/genid-testbed/runtimes/{crun,runc}: the runtimes podman and containerd's
#     CRI plugin run: they give criu CRIU_FAULT from the run's fact run.criu_fault (below),
#     since podman does not pass its environment on.
#   /usr/local/libexec/genid-testbed/make-image NAME [CMD ARG...]: localhost/NAME:latest, a
#     busybox-static image (podman import; no registry is reachable; each run starts with an
#     empty store, so call it first: about a second). For containerd:
#     podman save --format docker-archive -o F localhost/NAME:latest; ctr image import F.
#   containerd 1.7: not started with the run; a test starts it with
#     containerd --config /etc/containerd/config.toml (socket /run/containerd/containerd.sock,
#     CRI included: enable_cdi, cdi_spec_dirs /etc/cdi and /var/run/cdi,
#     restrict_oom_score_adj, overlayfs, runc through the wrapper, sandbox image
#     localhost/pause:latest, no CNI: host-network sandboxes only).
#   Cgroups that podman and containerd leave behind when a run ends without removing its
#   containers stay (empty) in the host's tree, and so does one v2 cgroup per crun restore
#   (crun gives criu the container's cgroup as the root of every hierarchy, v2 included).
#
# The rootfs records what was installed in /etc/genid-testbed: the cache key, suite, mirror,
# build time, and one "deb.PACKAGE=VERSION" line per package (Debian versions are not pinned:
# a rebuild takes what the suite has that day; the tests check the properties they rely on).
#
# Environment:
#   GENID_CACHE   cache directory (default /var/cache/genid); holds rootfs-<hash>/ and debs/
#   GENID_MIRROR  Debian mirror URL; default: read from this machine's apt sources
#   GENID_KEEP_HOURS  idle hours before a build removes the rootfs of another script version
#
# Hardware breakpoints: CRIU stops a parasite with an x86 debug-register breakpoint, which on
# some virtual machines (Firecracker microVMs among them) never fires, so that every criu dump
# and restore hangs. Each run asks hack/hwbp-probe.c, built into the rootfs, whether they fire
# on the machine it runs on now (a cached bed may be used on a clone of another machine), and
# only where they do not does it give CMD CRIU_FAULT=130, CRIU's own switch to trap the syscall
# instead (runc, crun and containerd pass their environment on to criu; for podman, which does
# not, the runtime wrappers above read the fact). The run adds what it found to the facts
# in /etc/genid-testbed (in its overlay, not the cache):
#   run.hw_breakpoints=fire|never|error   the probe's verdict
#   run.hw_breakpoints.detail=...         its reason, for never and error
#   run.criu_fault=130|none               what CMD got in CRIU_FAULT
# A caller's own --env CRIU_FAULT=... wins over the probe's.
#
# The cache key is the first 16 hex digits of the sha256 of this file, the probe's source and
# the files (names and contents) in hack/testbed/: editing any of them means a rebuild
# (downloaded .debs are kept in $GENID_CACHE/debs, so a rebuild downloads little).

set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
PROBE_SRC=$(dirname "$SELF")/hwbp-probe.c
# Where the build installs the probe in the rootfs.
PROBE_BIN=/usr/local/libexec/genid-testbed/hwbp-probe
# Config files and scripts that the build installs in the rootfs (see install_files).
FILES_DIR=$(dirname "$SELF")/testbed
# Where the build installs the runtime wrappers and make-image.
LIBEXEC=/usr/local/libexec/genid-testbed
CACHE=${GENID_CACHE:-/var/cache/genid}
SUITE=trixie
ARCH=amd64
# criu (4.x in trixie), runc, iptables (CRIU's network lock for container netns), gcc + libc6-dev
# + libcriu-dev (criu/criu-plugin.h) to build a C plugin, busybox-static for container rootfses,
# jq to edit runc's config.json.
# Containers: podman (5.4; brings conmon, netavark and containers-common as dependencies),
# crun (podman's default runtime; podman would take runc alone, and crun is what it is mostly
# run with), conmon (podman's container monitor, named for clarity), libcriu2 (crun dlopens
# libcriu.so.2 to checkpoint and restore: only recommended by crun), iproute2 (CRIU runs `ip`
# to dump and restore a container's network namespace), uidmap (newuidmap/newgidmap for
# podman's --userns and user-namespaced containers), procps (ps, pgrep and pkill for tests),
# containerd (1.7: the daemon, its runc shim v2 and ctr).
# systemd (257: never started by a run; a test boots it as pid 1 of a pid namespace of its own,
# see test/systemd), for genid's units and its package installed with dpkg.
PACKAGES=(criu runc iptables gcc libc6-dev libcriu-dev busybox-static jq
  podman crun conmon libcriu2 iproute2 uidmap procps containerd systemd)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'testbed: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cache_hash() {
  local f
  {
    cat "$SELF" "$PROBE_SRC"
    for f in "$FILES_DIR"/*; do printf '\n%s\n' "${f##*/}"; cat "$f"; done
  } | sha256sum | cut -c1-16
}
rootfs_path() { printf '%s/rootfs-%s\n' "$CACHE" "$(cache_hash)"; }
lock_path() { printf '%s/.%s.lock\n' "$CACHE" "$(basename "$1")"; }
# An empty dir on which each run mounts its own tmpfs (in its private mount namespace).
scratch_path() { printf '%s/.run\n' "$CACHE"; }

need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }

# ---------------------------------------------------------------------------------------------
# Mirror: read the Debian main archive's URL from this machine's apt sources.
# ---------------------------------------------------------------------------------------------

# Prints "URI SUITE" pairs for every enabled "deb" source, both formats.
apt_source_pairs() {
  local f
  # One-line format: deb [options] URI SUITE COMPONENTS...
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
  done
  # deb822 format: stanzas separated by blank lines, fields Types/URIs/Suites/Enabled.
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
      {
        types = uris = suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^#/ || line !~ /^[A-Za-z-]+:/) continue
          key = tolower(substr(line, 1, index(line, ":") - 1))
          val = substr(line, index(line, ":") + 1)
          gsub(/^[ \t]+|[ \t]+$/, "", val)
          if (key == "types") types = val
          else if (key == "uris") uris = val
          else if (key == "suites") suites = val
          else if (key == "enabled") enabled = tolower(val)
        }
        if (types !~ /(^| )deb( |$)/ || enabled == "no" || uris == "") next
        split(uris, u, /[ \t]+/); n = split(suites, s, /[ \t]+/)
        for (j = 1; j <= n; j++) print u[1], s[j]
      }' "$f"
  done
}

detect_mirror() {
  if [[ -n ${GENID_MIRROR:-} ]]; then printf '%s\n' "${GENID_MIRROR%/}"; return; fi
  local codename uri suite best="" fallback=""
  # shellcheck disable=SC1091
  codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
  while read -r uri suite; do
    [[ $uri =~ ^(https?|ftp|file):// ]] || continue      # skip cdrom:, mirror+file:, ...
    [[ $suite == *-security || $uri == *security* ]] && continue
    # The main archive is the one carrying the release suite itself (bookworm, not
    # bookworm-updates or -backports); any other non-security Debian source is a fallback.
    if [[ -n $codename && $suite == "$codename" ]]; then best=${best:-$uri}
    elif [[ $suite =~ ^[a-z]+$ && ${uri%/} == */debian ]]; then fallback=${fallback:-$uri}
    fi
  done < <(apt_source_pairs)
  uri=${best:-$fallback}
  [[ -n $uri ]] || die "no Debian main archive found in the apt sources; set GENID_MIRROR"
  printf '%s\n' "${uri%/}"
}

# ---------------------------------------------------------------------------------------------
# Host packages
# ---------------------------------------------------------------------------------------------

apt_install() {
  # Try with the current package lists first; update them only if that fails
  # (no lists yet, or stale lists pointing at files the mirror no longer has).
  log "installing host packages: $*"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; then
    DEBIAN_FRONTEND=noninteractive apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2
  fi
}

ensure_host_tools() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v wget >/dev/null || missing+=(wget)
  command -v gpgv >/dev/null || missing+=(gpgv)
  [[ -r $KEYRING ]] || missing+=(debian-archive-keyring)
  command -v unshare >/dev/null && command -v flock >/dev/null || missing+=(util-linux)
  command -v pivot_root >/dev/null || missing+=(util-linux)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
}

# If apt itself goes through a proxy, let debootstrap's and our wget do the same.
apt_proxy_env() {
  local p=""
  [[ -n ${http_proxy:-} ]] && return 0
  eval "$(apt-config shell p Acquire::http::Proxy)"
  if [[ -n $p && $p != DIRECT ]]; then export http_proxy=$p; fi
}

# The host keyring must verify the target suite's InRelease. bookworm's debian-archive-keyring
# (2023.3+deb12u2) already carries the trixie keys, and trixie's InRelease is also signed with the
# bookworm archive key; an older host keyring is upgraded from the host's own (signed) sources.
# debootstrap --no-check-gpg is only the last resort, and only when the caller explicitly sets
# GENID_INSECURE_NO_CHECK_GPG=1; otherwise the build stops with an error.
check_keyring() {
  local mirror=$1 tmp rc=0
  tmp=$(mktemp)
  if ! wget -q -O "$tmp" "$mirror/dists/$SUITE/InRelease"; then
    rm -f "$tmp"; die "cannot download $mirror/dists/$SUITE/InRelease"
  fi
  gpgv --keyring "$KEYRING" "$tmp" >/dev/null 2>&1 || rc=$?
  if ((rc != 0)); then
    log "host keyring cannot verify $SUITE; upgrading debian-archive-keyring from the host's sources"
    DEBIAN_FRONTEND=noninteractive apt-get update >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --only-upgrade debian-archive-keyring >&2 || true
    rc=0; gpgv --keyring "$KEYRING" "$tmp" >/dev/null 2>&1 || rc=$?
  fi
  rm -f "$tmp"
  if ((rc != 0)); then
    if [[ ${GENID_INSECURE_NO_CHECK_GPG:-} == 1 ]]; then
      log "WARNING: cannot verify $SUITE's signature; building WITHOUT signature checks"
      return 1
    fi
    die "$KEYRING cannot verify $SUITE's InRelease; install a newer debian-archive-keyring" \
      "(or, insecurely, set GENID_INSECURE_NO_CHECK_GPG=1)"
  fi
}

# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------

cmd_path() {
  local root; root=$(rootfs_path)
  [[ -d $root ]] || { log "not built: $root (run: $0 build)"; return 1; }
  printf '%s\n' "$root"
}

# Share-locks the run lock of rootfs $1 on fd 9, for as long as this shell lives. A remover
# deletes the lock file with the rootfs: if that happened between our open and our flock, the
# lock we hold protects nothing, so open the new file and lock again. The lock's mtime is the
# rootfs's last use (see remove_old_rootfs); ">>" so that opening it does not change that.
lock_shared() {
  local lock; lock=$(lock_path "$1")
  while :; do
    exec 9>>"$lock"
    flock -s 9
    [[ $lock -ef /proc/self/fd/9 ]] && break
    exec 9>&-
  done
  touch "$lock"
}

# When rootfs $1 was last used, in seconds since the epoch: the mtime of its lock (touched by
# build and run), or the atime of its /usr/bin/env (older versions of this script touch no lock,
# but every run execs env; relatime updates that at least daily).
last_use() {
  local a=0 b=0
  a=$(stat -c %Y "$(lock_path "$1")" 2>/dev/null) || a=0
  b=$(stat -c %X "$1/usr/bin/env" 2>/dev/null) || b=0
  printf '%s\n' "$((a > b ? a : b))"
}

# Removes the rootfs-* dirs of other script versions that have been idle for GENID_KEEP_HOURS
# and that no run is using (a run holds a shared lock). The idle time is what protects a
# checkout of another version between its `build` and its `run`, when it holds no lock yet.
remove_old_rootfs() {
  local keep=$1 d lock idle max_idle
  max_idle=$((${GENID_KEEP_HOURS:-24} * 3600))
  for d in "$CACHE"/rootfs-*/; do
    d=${d%/}
    [[ -d $d && $d != "$keep" ]] || continue
    idle=$(($(date +%s) - $(last_use "$d")))
    if ((idle < max_idle)); then
      log "keeping old $d: used $((idle / 60)) min ago"
      continue
    fi
    lock=$(lock_path "$d")
    (
      exec 7>>"$lock"
      if flock -xn 7; then
        log "removing old $d (idle $((idle / 3600)) h)"
        rm -rf --one-file-system "$d" "$lock"
      else
        log "keeping old $d: in use"
      fi
    )
  done
}

# The manifest of rootfs $1: what it is, and the version of every package it was asked for.
write_manifest() {
  local dir=$1 mirror=$2
  printf 'hash=%s\nsuite=%s\nmirror=%s\nbuilt=%s\n' "$(cache_hash)" "$SUITE" "$mirror" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  # shellcheck disable=SC2016  # ${Package} is dpkg-query's, not ours
  chroot "$dir" dpkg-query -W -f='deb.${Package}=${Version}\n' "${PACKAGES[@]}" ||
    die "cannot list the installed packages"
}

# Installs the bed's own files (hack/testbed/) in rootfs $1.
install_files() {
  local dir=$1
  install -D -m 0755 "$FILES_DIR/runtime-wrapper.sh" "$dir$LIBEXEC/runtimes/crun"
  install -D -m 0755 "$FILES_DIR/runtime-wrapper.sh" "$dir$LIBEXEC/runtimes/runc"
  install -D -m 0755 "$FILES_DIR/make-image.sh" "$dir$LIBEXEC/make-image"
  install -D -m 0644 "$FILES_DIR/containers.conf" "$dir/etc/containers/containers.conf"
  install -D -m 0644 "$FILES_DIR/storage.conf" "$dir/etc/containers/storage.conf"
  install -D -m 0644 "$FILES_DIR/containerd.toml" "$dir/etc/containerd/config.toml"
}

cmd_build() {
  need_root
  local root tmp mirror keyopt=() blog
  root=$(rootfs_path)
  if [[ -d $root ]]; then touch "$(lock_path "$root")"; printf '%s\n' "$root"; return; fi

  mkdir -p "$CACHE/debs"
  # One build at a time; a second builder waits and then finds the finished rootfs.
  exec 8>"$CACHE/.build.lock"
  flock 8
  if [[ -d $root ]]; then exec 8>&-; printf '%s\n' "$root"; return; fi
  # Left-overs of interrupted builds (we hold the build lock, so nobody is using them).
  rm -rf --one-file-system "$CACHE"/.tmp-rootfs-*

  ensure_host_tools
  apt_proxy_env
  mirror=$(detect_mirror)
  log "mirror: $mirror"
  if check_keyring "$mirror"; then keyopt=(--keyring="$KEYRING"); else keyopt=(--no-check-gpg); fi

  # Build next to the final path; rename only when complete, so an interrupted build never
  # looks finished.
  tmp=$(mktemp -d "$CACHE/.tmp-rootfs-$(cache_hash).XXXXXX")
  chmod 0755 "$tmp"
  trap 'rm -rf --one-file-system "$tmp"' EXIT
  blog="$CACHE/build.log"
  log "debootstrap $SUITE into $tmp (log: $blog)"
  local t0=$SECONDS
  if ! debootstrap --variant=minbase --arch="$ARCH" --components=main \
      --include="$(IFS=,; printf '%s' "${PACKAGES[*]}")" --cache-dir="$CACHE/debs" \
      "${keyopt[@]}" "$SUITE" "$tmp" "$mirror" >"$blog" 2>&1; then
    tail -n 30 "$blog" >&2
    [[ -f $tmp/debootstrap/debootstrap.log ]] && tail -n 30 "$tmp/debootstrap/debootstrap.log" >&2
    if grep -qiE 'signature|NO_PUBKEY|unknown key|EXPKEYSIG' "$blog"; then
      log "hint: signature problem; upgrade debian-archive-keyring on the host"
    fi
    die "debootstrap failed"
  fi
  log "debootstrap took $((SECONDS - t0)) s"

  # Trim: no package lists or docs are needed (there is no network inside anyway).
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* \
    "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* "$tmp"/usr/share/info/*
  # Mount points the tests are likely to use, so that a read-only rootfs can take them, and
  # those of the per-run tmpfses (see cmd_init).
  mkdir -p "$tmp/etc/criu" "$tmp/usr/lib/criu" "$tmp/src" "$tmp/etc/cdi" \
    "$tmp/var/lib/containers" "$tmp/var/lib/containerd"
  install_files "$tmp"
  # The hardware breakpoint probe, built with the bed's own compiler.
  mkdir -p "$tmp${PROBE_BIN%/*}"
  cp "$PROBE_SRC" "$tmp${PROBE_BIN%/*}/hwbp-probe.c"
  chroot "$tmp" gcc -std=gnu11 -O2 -Wall -Wextra -Werror -o "$PROBE_BIN" "${PROBE_BIN%/*}/hwbp-probe.c" >&2 ||
    die "cannot build the hardware breakpoint probe"
  # Sanity checks before publishing.
  local f
  for f in usr/sbin/criu usr/sbin/runc usr/bin/gcc usr/bin/busybox usr/bin/jq \
      usr/include/criu/criu-plugin.h usr/bin/umount usr/bin/env "${PROBE_BIN#/}" \
      usr/bin/podman usr/bin/crun usr/bin/conmon usr/bin/containerd usr/bin/ctr \
      usr/bin/containerd-shim-runc-v2 usr/bin/ip usr/lib/x86_64-linux-gnu/libcriu.so.2 \
      usr/lib/systemd/systemd usr/bin/systemctl usr/bin/systemd-analyze \
      "${LIBEXEC#/}/runtimes/crun" "${LIBEXEC#/}/runtimes/runc" "${LIBEXEC#/}/make-image"; do
    [[ -e $tmp/$f ]] || die "built rootfs lacks /$f"
  done
  write_manifest "$tmp" "$mirror" >"$tmp/etc/genid-testbed"
  sed 's/^/testbed: manifest: /' "$tmp/etc/genid-testbed" >&2

  mv -T "$tmp" "$root"
  trap - EXIT
  touch "$(lock_path "$root")"
  exec 8>&-
  remove_old_rootfs "$root"
  log "rootfs size: $(du -sh --one-file-system "$root" | cut -f1)"
  printf '%s\n' "$root"
}

# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------

usage_run() { die "usage: $0 run [--bind H[:G]] [--ro-bind H[:G]] [--tmpfs G] [--env K=V] [-w DIR] [--rw] [--timeout SECS] -- CMD ARGS..."; }

cmd_run() {
  need_root
  local root args=() a
  # Validate the options here (the same list is parsed again by __init).
  while (($#)); do
    a=$1
    case $a in
      --bind|--ro-bind|--tmpfs|--env|-w|--workdir) (($# >= 2)) || usage_run; args+=("$1" "$2"); shift 2 ;;
      --timeout) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage_run; args+=("$1" "$2"); shift 2 ;;
      --rw) args+=("$1"); shift ;;
      --) shift; break ;;
      *) usage_run ;;
    esac
  done
  (($#)) || usage_run
  root=$(rootfs_path)
  [[ $root != *[,:]* ]] || die "the cache path must not contain ',' or ':' (overlayfs options): $root"
  # The shared lock keeps a concurrent build of another version from removing this rootfs, from
  # before we look for it to the end of the run. fd 9 stays in this (waiting) shell only: it is
  # closed for the namespaced child.
  mkdir -p "$CACHE"
  lock_shared "$root"
  if [[ ! -d $root ]]; then
    (cmd_build) >/dev/null || die "cannot build the rootfs"
  fi
  mkdir -p "$(scratch_path)"
  local rc=0 sess=()
  # Without a new session, the guest's processes would stay in the caller's session, whose
  # leader is outside the pid namespace, and criu dump refuses them even with --shell-job ("A
  # session leader of N is outside of its pid namespace"). So pid 1 gets a new session, unless
  # stdin is a terminal (an interactive "run -- bash" keeps its controlling terminal).
  [[ -t 0 ]] || sess=(setsid -w)
  # --kill-child: if this shell dies, the guest's pid 1 gets SIGKILL and with it every process
  # of the run. unshare -m makes all mounts private by default; --mount-proc is just so the
  # pre-pivot part of __init sees its own pid namespace in /proc.
  local v2=() cg2
  if cg2=$(run_cgroup2); then
    v2=(--cgroup2 "$cg2")
    # shellcheck disable=SC2064  # expand $cg2 now, on purpose
    trap "remove_cgroup_tree '$cg2' 50" EXIT
  fi
  unshare --mount --pid --fork --kill-child --mount-proc -- \
    "${sess[@]}" bash "$SELF" __init "$root" "${v2[@]}" "${args[@]}" -- "$@" 9>&- || rc=$?
  exit "$rc"
}

# The v2 hierarchy of a "hybrid" host (v1 controllers, plus systemd's empty v2 tree on
# /sys/fs/cgroup/unified), which the guest does not see (see mount_cgroups) but its processes
# are still members of. criu dumps the whole subtree of a task's v2 cgroup, and restores it under
# the new container's cgroup: with the guest in the v2 root, each dump would walk every cgroup
# of the host, and each restore would add a copy of them all (the tree doubles per restore; at
# 200,000 cgroups a podman checkpoint took 70 s). So each run's processes get their own empty
# v2 cgroup, $V2/genid-testbed/run-PID (PID: the host's `run` shell, which removes it at the
# end), created here after removing those of runs that are gone. Prints its path; fails where
# there is no such hierarchy (v1 only, or pure v2: there the runtimes make their own cgroups).
run_cgroup2() {
  local v2=/sys/fs/cgroup/unified d pid
  [[ $(stat -f -c %T /sys/fs/cgroup 2>/dev/null) != cgroup2fs &&
    $(stat -f -c %T "$v2" 2>/dev/null) == cgroup2fs ]] || return 1
  for d in "$v2"/genid-testbed/run-*/; do
    d=${d%/}
    pid=${d##*/run-}
    [[ -d $d && $pid =~ ^[0-9]+$ ]] || continue
    kill -0 "$pid" 2>/dev/null || remove_cgroup_tree "$d" 1
  done
  d=$v2/genid-testbed/run-$$
  mkdir -p "$d" 2>/dev/null || { log "warning: cannot create $d; criu dumps will walk the host's v2 tree"; return 1; }
  printf '%s\n' "$d"
}

# Removes cgroup $1 and every cgroup below it, trying $2 times 0.1 s apart: a cgroup whose
# processes were just killed stays busy for a moment. rmdir never removes a cgroup in use.
remove_cgroup_tree() {
  local d=$1 tries=$2 i
  for ((i = 0; i < tries; i++)); do
    ((i == 0)) || sleep 0.1
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d $d ]] || return 0
  done
  ((tries == 1)) || log "warning: cannot remove the cgroup $d yet (still in use?)"
}

# Refuse guest paths whose existing components are symlinks: "$root/lib/x" would follow
# the rootfs's absolute symlink out to the HOST's /usr/lib.
check_guest_path() {
  local root=$1 guest=$2 p="" c
  [[ $guest == /* ]] || die "guest path must be absolute: $guest"
  local IFS=/
  for c in $guest; do
    [[ -z $c ]] && continue
    [[ $c == . || $c == .. ]] && die "guest path must be normalised: $guest"
    p+=/$c
    [[ -L $root$p ]] && die "guest path $guest crosses the symlink $p in the rootfs; use the real path"
  done
  return 0
}

# Mounts the guest's /sys/fs/cgroup on $1. A cgroup v2 host's tree is rbound as it is. On a v1
# host: a tmpfs with a bind mount of each v1 hierarchy and a copy of each symlink (cpu ->
# cpu,cpuacct), leaving out the v2 "unified" hierarchy that systemd adds: crun refuses that
# hybrid mode ("cgroups in hybrid mode not supported"), runc and criu do fine with plain v1.
mount_cgroups() {
  local dst=$1 cg name
  if [[ $(stat -f -c %T /sys/fs/cgroup) == cgroup2fs ]]; then
    mount --rbind /sys/fs/cgroup "$dst"
    return
  fi
  mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs "$dst"
  for cg in /sys/fs/cgroup/*; do
    name=${cg##*/}
    if [[ -L $cg ]]; then
      ln -s "$(readlink "$cg")" "$dst/$name"
    elif [[ -d $cg && $(stat -f -c %T "$cg") == cgroupfs ]] && mountpoint -q "$cg"; then
      mkdir "$dst/$name"
      mount --bind "$cg" "$dst/$name"
    fi
  done
  mount -o remount,ro,nosuid,nodev,noexec "$dst"
}

# Runs as pid 1 of the new pid namespace, in the new private mount namespace.
cmd_init() {
  local root=$1; shift
  local binds=() tmpfses=() envs=() workdir=/ rw=0 timeout=0
  while (($#)); do
    case $1 in
      # First of all: every process of the run is forked after this.
      --cgroup2) echo 0 >"$2/cgroup.procs" || die "cannot join the cgroup $2"; shift 2 ;;
      --timeout) timeout=$2; shift 2 ;;
      --bind) binds+=("rw|$2"); shift 2 ;;
      --ro-bind) binds+=("ro|$2"); shift 2 ;;
      --tmpfs) tmpfses+=("$2"); shift 2 ;;
      --env) envs+=("$2"); shift 2 ;;
      -w|--workdir) workdir=$2; shift 2 ;;
      --rw) rw=1; shift ;;
      --) shift; break ;;
      *) die "__init: bad option $1" ;;
    esac
  done
  mount --make-rprivate /
  # The root is an overlay: the cached rootfs below, a tmpfs of this run above. Mount points
  # for binds and anything written under --rw land in the tmpfs, so no run changes the cache
  # that concurrent and later runs share (a mount point left in /usr/lib/criu is an empty
  # "plugin" that makes every later criu dump fail). The tmpfs goes on a shared empty dir: the
  # mount is private to this namespace, and vanishes with it.
  local S R
  S=$(scratch_path)
  mount -t tmpfs -o mode=0755 tmpfs "$S"
  mkdir "$S/upper" "$S/work" "$S/root"
  mount -t overlay -o "lowerdir=$root,upperdir=$S/upper,workdir=$S/work" overlay "$S/root" ||
    die "cannot mount an overlay of $root (no overlayfs? try: modprobe overlay)"
  R=$S/root
  mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
  mount -t sysfs -o nosuid,nodev,noexec sysfs "$R/sys"
  mount_cgroups "$R/sys/fs/cgroup"
  # A fresh /dev: only the basic nodes, plus a private devpts instance.
  mount -t tmpfs -o mode=0755,nosuid,noexec tmpfs "$R/dev"
  local spec name maj min
  for spec in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name maj min <<<"$spec"
    mknod -m 0666 "$R/dev/$name" c "$maj" "$min"
  done
  mkdir -m 0755 "$R/dev/pts" "$R/dev/net"
  mknod -m 0666 "$R/dev/net/tun" c 10 200   # only to quieten criu check
  mkdir -m 1777 "$R/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$R/dev/pts"
  ln -s pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
  ln -s /proc/self/fd "$R/dev/fd"
  ln -s /proc/self/fd/0 "$R/dev/stdin"
  ln -s /proc/self/fd/1 "$R/dev/stdout"
  ln -s /proc/self/fd/2 "$R/dev/stderr"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/var/tmp"
  mount -t tmpfs -o mode=0700,nosuid,nodev tmpfs "$R/root"
  # The stores of podman and containerd (writable; overlayfs, which both use, cannot have an
  # overlay as its upper layer) and the CDI spec dir that both read.
  mount -t tmpfs -o mode=0700 tmpfs "$R/var/lib/containers"
  mount -t tmpfs -o mode=0711 tmpfs "$R/var/lib/containerd"
  mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs "$R/etc/cdi"
  # User binds and tmpfses (host paths are still reachable: we have not pivoted yet).
  local b mode host guest
  for b in "${binds[@]}"; do
    mode=${b%%|*}; b=${b#*|}
    if [[ $b == *:* ]]; then host=${b%:*}; guest=${b##*:}; else host=$b; guest=$b; fi
    [[ -e $host ]] || die "--bind: no such host path: $host"
    check_guest_path "$R" "$guest"
    if [[ -d $host ]]; then
      [[ -d $R$guest ]] || mkdir -p "$R$guest"
    else
      [[ -e $R$guest ]] || { mkdir -p "$(dirname "$R$guest")"; : >>"$R$guest"; }
    fi
    mount --rbind "$host" "$R$guest"
    [[ $mode == ro ]] && mount -o remount,bind,ro "$R$guest"
  done
  for guest in "${tmpfses[@]}"; do
    check_guest_path "$R" "$guest"
    [[ -d $R$guest ]] || mkdir -p "$R$guest"
    mount -t tmpfs -o mode=0755 tmpfs "$R$guest"
  done
  # pivot_root, not chroot: under chroot "criu check" fails ("No parent found for mountpoint")
  # because the old root stays the mount tree's root. "pivot_root . ." stacks the old root on
  # top of the new one, and "umount -l ." detaches it (and with it the scratch tmpfs, which the
  # overlay keeps using): no put_old dir is needed.
  cd "$R"
  pivot_root . .
  umount -l .
  cd /
  local fault_env=()
  probe_hwbp
  ((rw)) || mount -o remount,bind,ro /
  cd "$workdir"
  # Close every fd above 2 (bash keeps its script on a close-on-exec fd); CRIU cannot dump
  # fds that lead outside the guest.
  local fdp fd
  for fdp in "/proc/$$/fd/"*; do
    fd=${fdp##*/}
    ((fd > 2 && fd != 255)) && eval "exec $fd>&-"
  done
  # A closed stdio fd, or the host's /dev/null (which CRIU cannot dump: its mount is not in the
  # guest), becomes the guest's /dev/null. Pipes, files and ttys are passed through as they are.
  for fd in 0 1 2; do
    if [[ ! -e /proc/$$/fd/$fd || $(stat -L -c %t:%T "/proc/$$/fd/$fd") == 1:3 ]]; then
      case $fd in 0) exec </dev/null ;; 1) exec >/dev/null ;; 2) exec 2>/dev/null ;; esac
    fi
  done
  # CMD runs as a child of this shell, which stays pid 1 and reaps orphans: a pid namespace's
  # init ignores every signal it has no handler for (even SIGKILL from inside the namespace),
  # which would surprise CMD. Signals sent to pid 1 are forwarded to CMD. "<&0" keeps stdin
  # (bash gives background jobs /dev/null otherwise) and "trap -" undoes the SIGINT/SIGQUIT
  # ignoring that bash applies to background jobs.
  (
    trap - INT QUIT
    exec /usr/bin/env -i PATH="$GUEST_PATH" HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
      "${fault_env[@]}" "${envs[@]}" "$@"
  ) <&0 &
  local child=$! rc sig timer="" timed_out=0
  # The timer is a sibling of CMD, not part of its tree (CRIU never sees it). It tells pid 1
  # first (SIGALRM), then stops CMD, and whatever is left 10 s later: kill -1 from inside the
  # namespace reaches every process but pid 1 and the timer itself.
  if ((timeout > 0)); then
    trap 'timed_out=1' ALRM
    (
      trap - INT QUIT ALRM
      exec </dev/null >/dev/null
      sleep "$timeout"
      echo "testbed: run timed out after $timeout s: stopping it" >&2
      kill -ALRM $$
      kill -TERM "$child" 2>/dev/null || true
      sleep 10
      kill -KILL -1 2>/dev/null || true
    ) &
    timer=$!
  fi
  # bash would report a CMD killed by a signal ("Killed") on stderr; the exit status says it.
  # The caller's stderr stays on $err, for the one line of a failed run.
  local err
  exec {err}>&2 2>/dev/null
  for sig in TERM INT HUP QUIT USR1 USR2; do
    # shellcheck disable=SC2064  # expand $sig and $child now, on purpose
    trap "kill -$sig $child 2>/dev/null || true" "$sig"
  done
  while :; do
    wait "$child" && rc=0 || rc=$?
    # wait also returns (>128) when a trapped signal arrives while CMD still runs
    kill -0 "$child" 2>/dev/null || break
  done
  [[ -z $timer ]] || kill "$timer" 2>/dev/null || true
  ((timed_out)) && rc=124
  # A failure of anything criu did may be the machine's: say in which mode it ran.
  ((rc == 0)) || printf 'testbed: the run exited %s (hardware breakpoints: %s; criu_fault: %s)\n' \
    "$rc" "$(fact run.hw_breakpoints)" "$(fact run.criu_fault)" >&"$err"
  exit "$rc"
}

# The value of fact $1 in the guest's /etc/genid-testbed.
fact() { sed -n "s/^$1=//p" /etc/genid-testbed | tail -n 1; }

# Asks the probe whether hardware breakpoints fire on this machine, adds the verdict to the
# run's facts, and sets fault_env (the caller's) to what CMD gets: CRIU_FAULT=130 only where
# they never fire. A caller's --env CRIU_FAULT=... comes later on env's command line and wins.
probe_hwbp() {
  local out rc=0 verdict detail="" fault=none e
  # The probe bounds its child (1 s); this bounds the probe.
  out=$(timeout -k 1 5 "$PROBE_BIN" 2>&1) || rc=$?
  case $rc in
    0) verdict=fire ;;
    1) verdict=never; detail=${out#never: }; fault=130 ;;
    *) verdict=error; detail="exit $rc: ${out#error: }" ;;
  esac
  for e in "${envs[@]}"; do
    [[ $e == CRIU_FAULT=* ]] && fault=${e#CRIU_FAULT=}
  done
  {
    printf 'run.hw_breakpoints=%s\n' "$verdict"
    [[ -z $detail ]] || printf 'run.hw_breakpoints.detail=%s\n' "${detail//$'\n'/ }"
    printf 'run.criu_fault=%s\n' "$fault"
  } >>/etc/genid-testbed
  [[ $verdict != error ]] || log "warning: the hardware breakpoint probe failed ($detail); criu may hang"
  [[ $verdict != never || $fault != 130 ]] || fault_env=(CRIU_FAULT=130)
}

# ---------------------------------------------------------------------------------------------
# selftest
# ---------------------------------------------------------------------------------------------

# Each check is a bash script run inside a separate `run`.
read -r -d '' T_VERSION <<'EOF' || true
cat /etc/genid-testbed
grep -qE '^deb\.criu=4\.' /etc/genid-testbed
grep -qE '^deb\.runc=1\.' /etc/genid-testbed
criu --version
criu --version | grep -qE '^Version: 4\.'
runc --version
EOF

read -r -d '' T_CHECK <<'EOF' || true
criu check 2>&1 | tee /tmp/check.out
grep -q 'Looks good' /tmp/check.out
EOF

# A plugin that records its init/exit stages, so the dump/restore check below proves that
# criu loads it.
read -r -d '' PLUGIN_C <<'EOF' || true
#include <stdio.h>
#include <criu/criu-plugin.h>

static void mark(const char *what, int stage)
{
	char path[64];
	FILE *f;

	snprintf(path, sizeof(path), "/tmp/plugin-%s-%d", what, stage);
	f = fopen(path, "w");
	if (f)
		fclose(f);
}

static int tb_init(int stage)
{
	mark("init", stage);
	return 0;
}

static void tb_exit(int stage, int ret)
{
	mark("exit", stage);
}

CR_PLUGIN_REGISTER("testbed", tb_init, tb_exit)
EOF

read -r -d '' T_GCC <<EOF || true
mkdir -p /tmp/plugin
cat >/tmp/plugin/testbed.c <<'CEOF'
$PLUGIN_C
CEOF
gcc -Wall -Werror -shared -fPIC -o /tmp/plugin/testbed.so /tmp/plugin/testbed.c
ls -l /tmp/plugin/testbed.so
EOF

# criu dump + restore of a shell loop. The loop runs in its own session (no --shell-job),
# with stdio on files inside the guest, so it holds no fd leading outside.
read -r -d '' T_CRIU <<EOF || true
LIBDIR_OPT=()
if [[ \${WITH_PLUGIN:-0} == 1 ]]; then
  $T_GCC
  LIBDIR_OPT=(--libdir /tmp/plugin)
fi
setsid sh -c 'echo \$\$ >/tmp/loop.pid; i=0; while :; do echo \$i; i=\$((i+1)); sleep 0.1; done' \\
  </dev/null >/tmp/loop.log 2>&1 &
bg=\$!
sleep 1
pid=\$(cat /tmp/loop.pid)
mkdir -p /tmp/img
timeout -k 5 \$CMD_TIMEOUT criu dump "\${LIBDIR_OPT[@]}" -t "\$pid" -D /tmp/img -o dump.log -v4 || { tail -n 40 /tmp/img/dump.log; exit 1; }
# The dumped loop dies (killed by criu), and is reaped here: until then its
# pid is taken, and the restore, which needs it, fails with EEXIST.
st=
for _ in \$(seq 100); do
  st=\$(awk '{ print \$3 }' /proc/"\$pid"/stat 2>/dev/null || true)
  [[ -z \$st || \$st == Z ]] && break
  sleep 0.1
done
[[ -z \$st || \$st == Z ]] || { echo "still running after dump (state \$st)"; exit 1; }
wait "\$bg" 2>/dev/null || true
before=\$(tail -n 1 /tmp/loop.log)
echo "dumped pid \$pid at \$before"
timeout -k 5 \$CMD_TIMEOUT criu restore "\${LIBDIR_OPT[@]}" -D /tmp/img -d -o restore.log -v4 || { tail -n 40 /tmp/img/restore.log; exit 1; }
sleep 1
kill -0 "\$pid"
after=\$(tail -n 1 /tmp/loop.log)
echo "restored pid \$pid, now at \$after"
(( after > before + 3 ))
# the restored loop continued from its own state, not from scratch
awk 'NR > 1 && \$1 != prev + 1 { print "gap at line " NR ": " prev " -> " \$1; bad = 1 } { prev = \$1 } END { exit bad }' /tmp/loop.log
if [[ \${WITH_PLUGIN:-0} == 1 ]]; then
  ls /tmp/plugin-*
  # stages: 0 = dump, 2 = restore
  for m in init-0 exit-0 init-2 exit-2; do [[ -e /tmp/plugin-\$m ]] || { echo "plugin \$m missing"; exit 1; }; done
fi
kill "\$pid"
EOF

# runc run -d / checkpoint / restore -d of a busybox container. The container's stdio are
# pipes (process substitutions) whose other ends stay in the guest.
read -r -d '' T_RUNC <<'EOF' || true
id=tb-$(head -c 6 /proc/sys/kernel/random/uuid)
trap 'timeout -k 5 $CMD_TIMEOUT runc delete -f "$id" >/dev/null 2>&1 || true' EXIT
b=/tmp/bundle
mkdir -p "$b/rootfs/bin" "$b/rootfs/tmp"
cp /usr/bin/busybox "$b/rootfs/bin/busybox"
for a in $(/usr/bin/busybox --list); do [[ -e $b/rootfs/bin/$a ]] || ln -s busybox "$b/rootfs/bin/$a"; done
cd "$b"
runc spec
jq '.process.terminal = false
  | .process.args = ["sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done"]
  | .root.readonly = false' config.json >config.json.new
mv config.json.new config.json
: | timeout -k 5 $CMD_TIMEOUT runc run -d "$id" > >(exec cat >>/tmp/ctr.out) 2> >(exec cat >>/tmp/ctr.err)
sleep 1
timeout -k 5 $CMD_TIMEOUT runc state "$id" | jq -r .status | grep -qx running
timeout -k 5 $CMD_TIMEOUT runc checkpoint --image-path /tmp/ckpt --work-path /tmp/ckpt-work "$id" \
  || { tail -n 40 /tmp/ckpt-work/dump.log; exit 1; }
sleep 0.5
before=$(tail -n 1 /tmp/ctr.out)
echo "checkpointed at $before"
: | timeout -k 5 $CMD_TIMEOUT runc restore -d --image-path /tmp/ckpt --work-path /tmp/rst-work "$id" \
  > >(exec cat >>/tmp/ctr.out) 2> >(exec cat >>/tmp/ctr.err) \
  || { tail -n 40 /tmp/rst-work/restore.log; exit 1; }
sleep 1
timeout -k 5 $CMD_TIMEOUT runc state "$id" | jq -r .status | grep -qx running
after=$(tail -n 1 /tmp/ctr.out)
echo "restored, now at $after"
(( after > before + 3 ))
awk 'NR > 1 && $1 != prev + 1 { print "gap at line " NR ": " prev " -> " $1; bad = 1 } { prev = $1 } END { exit bad }' /tmp/ctr.out
EOF

# podman with runtime $RUNTIME: run -d of a counting loop, container checkpoint --export,
# container restore --import --name (a new container, same archive), and the restored one
# counts on from where the checkpoint stopped it. Prints the times.
read -r -d '' T_PODMAN <<'EOF' || true
rt=${RUNTIME:-crun}
P() { timeout -k 5 "$CMD_TIMEOUT" podman "$@"; }
ms() { echo "$(( ($(date +%s%N) - $1) / 1000000 )) ms"; }
fail() {
  echo "FAILED: $*"
  P ps -a || true
  for c in c1 c2; do echo "--- podman logs $c"; P logs "$c" 2>&1 | tail -n 5 || true; done
  find /var/lib/containers/storage -name dump.log -o -name restore.log | while read -r f; do
    echo "--- $f"; tail -n 40 "$f"; done
  exit 1
}
trap 'P rm -f -t 0 c1 c2 >/dev/null 2>&1 || true' EXIT
t=$(date +%s%N)
timeout -k 5 "$CMD_TIMEOUT" /usr/local/libexec/genid-testbed/make-image tb-busybox || fail "make-image"
echo "timing: make-image $(ms "$t")"
P run -d --runtime "$rt" --network none --name c1 localhost/tb-busybox \
  sh -c 'i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done' >/dev/null || fail "podman run"
sleep 1
st=$(P inspect --format '{{.OCIRuntime}} {{.State.Status}}' c1) || fail "inspect c1"
[[ $st == "$rt running" ]] || fail "c1: $st, not $rt running"
t=$(date +%s%N)
P container checkpoint --export /tmp/c1.tar.zst c1 >/dev/null || fail "checkpoint --export"
echo "timing: checkpoint --export $(ms "$t") ($(stat -c %s /tmp/c1.tar.zst) bytes)"
st=$(P inspect --format '{{.State.Status}}' c1) || fail "inspect c1"
[[ $st == exited ]] || fail "c1 is $st after its checkpoint"
before=$(P logs c1 | tail -n 1)
t=$(date +%s%N)
P container restore --import /tmp/c1.tar.zst --name c2 >/dev/null || fail "restore --import"
echo "timing: restore --import $(ms "$t")"
sleep 1
st=$(P inspect --format '{{.OCIRuntime}} {{.State.Status}}' c2) || fail "inspect c2"
[[ $st == "$rt running" ]] || fail "c2: $st, not $rt running"
P logs c2 >/tmp/c2.log || fail "logs c2"
after=$(tail -n 1 /tmp/c2.log)
echo "checkpointed at $before; the restored container is now at $after"
(( after > before + 3 )) || fail "c2 did not count on"
# The restored log (the archive carries c1's) counts on without a restart from 0 or a gap.
awk 'NR > 1 && $1 != prev + 1 { print "gap at line " NR ": " prev " -> " $1; bad = 1 } { prev = $1 } END { exit bad }' /tmp/c2.log ||
  fail "c2's count is not continuous"
EOF

# podman run --device VENDOR/CLASS=NAME with a CDI spec in /etc/cdi (one env edit), with crun
# and with runc. (A one-letter class, test.genid/x, makes podman 5.4's CDI parser panic: "slice
# bounds out of range [1:0]" in validateVendorOrClassName.)
read -r -d '' T_CDI <<'EOF' || true
P() { timeout -k 5 "$CMD_TIMEOUT" podman "$@"; }
timeout -k 5 "$CMD_TIMEOUT" /usr/local/libexec/genid-testbed/make-image tb-busybox
cat >/etc/cdi/genid-testbed.json <<'JSON'
{"cdiVersion": "0.6.0", "kind": "test.genid/dev",
 "devices": [{"name": "d", "containerEdits": {"env": ["FOO=bar"]}}]}
JSON
for rt in crun runc; do
  out=$(P run --rm --runtime "$rt" --network none --device test.genid/dev=d localhost/tb-busybox \
    sh -c 'echo "FOO=${FOO-unset}"')
  echo "$rt: $out"
  [[ $out == FOO=bar ]]
done
EOF

# containerd with the bed's config, started here (bounded; its log is printed on failure): the
# CRI plugin is up with CDI on, a docker-archive of a podman image imports with ctr, and
# ctr run --rm runs it.
read -r -d '' T_CONTAINERD <<'EOF' || true
C() { timeout -k 5 "$CMD_TIMEOUT" ctr "$@"; }
fail() { echo "FAILED: $*"; echo "--- containerd's log"; tail -n 40 /tmp/containerd.log; exit 1; }
timeout -k 5 "$CMD_TIMEOUT" /usr/local/libexec/genid-testbed/make-image tb-busybox || fail "make-image"
timeout -k 5 "$CMD_TIMEOUT" podman save --format docker-archive -o /tmp/tb.tar localhost/tb-busybox:latest ||
  fail "podman save"
t=$(date +%s%N)
timeout -k 5 $((2 * CMD_TIMEOUT)) containerd --config /etc/containerd/config.toml \
  </dev/null >/tmp/containerd.log 2>&1 &
cpid=$!
trap 'kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null || true' EXIT
for i in $(seq 100); do
  [[ -S /run/containerd/containerd.sock ]] && C version >/dev/null 2>&1 && break
  kill -0 "$cpid" 2>/dev/null || fail "containerd exited"
  sleep 0.1
done
C version | grep -A 1 '^Server:' || fail "containerd does not answer on /run/containerd/containerd.sock"
echo "timing: containerd up after $(( ($(date +%s%N) - t) / 1000000 )) ms"
C plugins ls | awk '$2 == "cri" || $2 == "overlayfs"' | tee /tmp/plugins
[[ $(awk '$NF == "ok"' /tmp/plugins | wc -l) == 2 ]] || fail "the cri or overlayfs plugin is not ok"
containerd --config /etc/containerd/config.toml config dump >/tmp/config.dump
grep -E '^ *(enable_cdi|cdi_spec_dirs|restrict_oom_score_adj|snapshotter) = ' /tmp/config.dump |
  sort -u | tee /tmp/cri.conf
grep -qx ' *enable_cdi = true' /tmp/cri.conf || fail "enable_cdi is not on"
grep -qx ' *restrict_oom_score_adj = true' /tmp/cri.conf || fail "restrict_oom_score_adj is not on"
grep -qF 'cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]' /tmp/cri.conf || fail "cdi_spec_dirs"
C image import /tmp/tb.tar || fail "ctr image import"
id=tb-$(head -c 8 /proc/sys/kernel/random/uuid)
out=$(C run --rm localhost/tb-busybox:latest "$id" echo hello from ctr) || fail "ctr run: $out"
echo "ctr run: $out"
[[ $out == "hello from ctr" ]] || fail "unexpected output"
EOF

# The run's facts say what the probe found, and CMD got CRIU_FAULT=130 exactly when hardware
# breakpoints never fire. The probe itself kills a child that never traps within its bound.
read -r -d '' T_PROBE <<EOF || true
fact() { sed -n "s/^\$1=//p" /etc/genid-testbed; }
verdict=\$(fact run.hw_breakpoints) fault=\$(fact run.criu_fault)
echo "facts: hw_breakpoints=\$verdict criu_fault=\$fault CRIU_FAULT=\${CRIU_FAULT-unset}"
case \$verdict in
  fire) [[ \$fault == none && -z \${CRIU_FAULT+x} ]] ;;
  never) [[ \$fault == 130 && \${CRIU_FAULT:-} == 130 ]] ;;
  *) echo "the probe could not tell: \$(fact run.hw_breakpoints.detail)"; exit 1 ;;
esac
t0=\$(date +%s%N) rc=0
out=\$($PROBE_BIN spin) || rc=\$?
ms=\$(( (\$(date +%s%N) - t0) / 1000000 ))
echo "probe of a child that never traps: exit \$rc after \$ms ms: \$out"
[[ \$rc == 1 && \$out == "never: no trap within"* ]] && (( ms < 3000 ))
EOF

# A fingerprint of rootfs $1: every path with its type, size and mtime.
rootfs_fingerprint() {
  find "$1" -xdev -printf '%y %s %T@ %P\n' | LC_ALL=C sort | sha256sum | cut -d' ' -f1
}

# Runs with binds on mount points the rootfs lacks, writes under --rw, a failing CMD and a
# killed run must leave the cached rootfs exactly as it was.
check_cache_untouched() {
  local root=$1 before after host name="runs leave the cached rootfs as it was"
  host=$(mktemp -d)
  : >"$host/file"
  mkdir "$host/dir"
  before=$(rootfs_fingerprint "$root")
  local binds=(--ro-bind "$host/file:/usr/lib/criu/testbed-probe.so" --bind "$host/dir:/testbed-probe/dir"
    --bind "$host/file:/testbed-probe.sh")
  bash "$SELF" run "${binds[@]}" -- true </dev/null >/dev/null 2>&1 || true
  bash "$SELF" run "${binds[@]}" --rw -- sh -c 'touch /testbed-probe-rw; exit 3' </dev/null >/dev/null 2>&1 || true
  bash "$SELF" run "${binds[@]}" --timeout 1 -- sleep 30 </dev/null >/dev/null 2>&1 || true
  after=$(rootfs_fingerprint "$root")
  rm -rf "$host"
  if [[ $before == "$after" ]]; then
    printf 'PASS: %s\n' "$name"; pass=$((pass + 1))
  else
    printf 'FAIL: %s\n' "$name"; fail=$((fail + 1))
  fi
}

# A build removes another version's rootfs only when it is idle and not locked by a run.
check_remove_old() {
  local c d ok=1 name="a build removes only idle, unlocked rootfses of other versions"
  c=$(mktemp -d)
  for d in keep fresh idle locked; do mkdir -p "$c/rootfs-$d/usr/bin"; : >"$c/rootfs-$d/usr/bin/env"; done
  : >"$c/.rootfs-fresh.lock"
  for d in idle locked; do
    : >"$c/.rootfs-$d.lock"
    touch -d '-2 days' "$c/.rootfs-$d.lock" "$c/rootfs-$d/usr/bin/env"
  done
  # A run's lock, held here
  exec 6>>"$c/.rootfs-locked.lock"
  flock -s 6
  GENID_CACHE=$c bash "$SELF" __remove-old "$c/rootfs-keep" 2>/dev/null
  exec 6>&-
  for d in keep fresh locked; do [[ -d $c/rootfs-$d ]] || ok=0; done
  [[ -e $c/rootfs-idle ]] && ok=0
  rm -rf "$c"
  if ((ok)); then
    printf 'PASS: %s\n' "$name"; pass=$((pass + 1))
  else
    printf 'FAIL: %s\n' "$name"; fail=$((fail + 1))
  fi
}

# --timeout stops a CMD that ignores SIGTERM, and everything it started, and exits 124.
check_timeout() {
  local rc=0 t0=$SECONDS name="run --timeout stops a hung run (exit 124)"
  bash "$SELF" run --timeout 2 -- sh -c 'trap "" TERM; sleep 300 & sleep 300' </dev/null >/dev/null 2>&1 || rc=$?
  if [[ $rc == 124 ]] && ((SECONDS - t0 < 30)); then
    printf 'PASS: %s (%ss)\n' "$name" "$((SECONDS - t0))"; pass=$((pass + 1))
  else
    printf 'FAIL: %s: rc=%s after %ss\n' "$name" "$rc" "$((SECONDS - t0))"; fail=$((fail + 1))
  fi
}

cmd_selftest() {
  need_root
  local root pass=0 fail=0 name out t0
  root=$(cmd_build | tail -n 1)
  log "rootfs: $root"
  out=$(mktemp)
  # Which way criu runs here, first: every failure below may depend on it.
  local facts
  facts=$(bash "$SELF" run -- cat /etc/genid-testbed </dev/null) || die "cannot read the bed's facts"
  printf 'mode: hardware breakpoints: %s%s; criu, runc, crun and containerd run with CRIU_FAULT=%s\n' \
    "$(sed -n 's/^run.hw_breakpoints=//p' <<<"$facts")" \
    "$(sed -n 's/^run.hw_breakpoints.detail=/ (/p' <<<"$facts" | sed 's/$/)/')" \
    "$(sed -n 's/^run.criu_fault=//p' <<<"$facts")"
  # Each criu and runc command in the checks is bounded by CMD_TIMEOUT seconds, and a check
  # by twice that: a hang fails with criu's log within a minute or two, not at the run's end.
  run_check() {
    name=$1; shift
    t0=$SECONDS
    if bash "$SELF" run --timeout 150 --env CMD_TIMEOUT=60 "$@" >"$out" 2>&1 </dev/null; then
      # A check's "timing: ..." lines, if any, go on its PASS line.
      printf 'PASS: %s (%ss%s)\n' "$name" "$((SECONDS - t0))" \
        "$(sed -n 's/^timing: /; /p' "$out" | tr -d '\n')"
      pass=$((pass + 1))
    else
      printf 'FAIL: %s (%ss)\n' "$name" "$((SECONDS - t0))"; fail=$((fail + 1))
      sed 's/^/    /' "$out"
    fi
  }
  run_check "the run's CRIU_FAULT follows the hardware breakpoint probe" -- bash -euo pipefail -c "$T_PROBE"
  run_check "criu --version is 4.x" -- bash -euo pipefail -c "$T_VERSION"
  run_check "criu check: Looks good" -- bash -euo pipefail -c "$T_CHECK"
  run_check "gcc builds a plugin against criu/criu-plugin.h" -- bash -euo pipefail -c "$T_GCC"
  run_check "criu dump + restore of a shell loop" -- bash -euo pipefail -c "$T_CRIU"
  run_check "criu loads the compiled plugin at dump and restore" --env WITH_PLUGIN=1 \
    -- bash -euo pipefail -c "$T_CRIU"
  run_check "runc run -d + checkpoint + restore -d of a busybox container" \
    -- bash -euo pipefail -c "$T_RUNC"
  run_check "podman (crun): run -d, checkpoint --export, restore --import --name" \
    --env RUNTIME=crun -- bash -euo pipefail -c "$T_PODMAN"
  run_check "podman (runc): run -d, checkpoint --export, restore --import --name" \
    --env RUNTIME=runc -- bash -euo pipefail -c "$T_PODMAN"
  run_check "podman run --device with a CDI spec (crun and runc)" -- bash -euo pipefail -c "$T_CDI"
  run_check "containerd: CRI with CDI, ctr image import + ctr run" \
    -- bash -euo pipefail -c "$T_CONTAINERD"
  check_cache_untouched "$root"
  check_timeout
  check_remove_old
  # `run` must hand back CMD's stdout and exit status.
  local rc=0 o
  t0=$SECONDS
  o=$(bash "$SELF" run -- sh -c 'echo hello; exit 7' 2>/dev/null </dev/null) || rc=$?
  if [[ $rc == 7 && $o == hello ]]; then
    printf 'PASS: %s (%ss)\n' "run passes stdout and the exit status through" "$((SECONDS - t0))"; pass=$((pass + 1))
  else
    printf 'FAIL: %s: rc=%s stdout=%q\n' "run passes stdout and the exit status through" "$rc" "$o"; fail=$((fail + 1))
  fi
  rm -f "$out"
  printf '%d passed, %d failed\n' "$pass" "$fail"
  ((fail == 0))
}

# ---------------------------------------------------------------------------------------------

main() {
  local cmd=${1:-help}
  (($#)) && shift
  case $cmd in
    build) cmd_build "$@" ;;
    path) cmd_path ;;
    run) cmd_run "$@" ;;
    selftest) cmd_selftest ;;
    __init) cmd_init "$@" ;;
    __remove-old) remove_old_rootfs "$@" ;;   # for selftest
    help|-h|--help) sed -n '2,/^$/p' "$SELF" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command $cmd (try: $0 help)" ;;
  esac
}

main "$@"
