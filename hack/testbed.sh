#!/usr/bin/env bash
# hack/testbed.sh - a Debian trixie test bed with CRIU 4.x, runc, gcc and busybox,
# for testing genid's CRIU plugin and daemon on a host whose own CRIU is too old.
#
# Usage (as root):
#   hack/testbed.sh build                      build the rootfs if not cached; last stdout line = path
#   hack/testbed.sh path                       print the cached rootfs path (exit 1 if not built)
#   hack/testbed.sh run [OPTIONS] -- CMD ARGS  run CMD inside the rootfs (exit status = CMD's)
#   hack/testbed.sh selftest                   build if needed, then check criu/runc/gcc; PASS/FAIL
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
# /var/tmp, /run, /root, /dev and /dev/shm are per-run tmpfs. proc and sysfs are fresh, the host's
# /sys/fs/cgroup tree is rbound. All fds above 2 are closed before CMD starts and a host
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
# instead (runc passes its environment on to criu). The run adds what it found to the facts
# in /etc/genid-testbed (in its overlay, not the cache):
#   run.hw_breakpoints=fire|never|error   the probe's verdict
#   run.hw_breakpoints.detail=...         its reason, for never and error
#   run.criu_fault=130|none               what CMD got in CRIU_FAULT
# A caller's own --env CRIU_FAULT=... wins over the probe's.
#
# The cache key is the first 16 hex digits of the sha256 of this file and the probe's source:
# editing either means a rebuild (downloaded .debs are kept in $GENID_CACHE/debs, so a rebuild
# downloads little).

set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
PROBE_SRC=$(dirname "$SELF")/hwbp-probe.c
# Where the build installs the probe in the rootfs.
PROBE_BIN=/usr/local/libexec/genid-testbed/hwbp-probe
CACHE=${GENID_CACHE:-/var/cache/genid}
SUITE=trixie
ARCH=amd64
# criu (4.x in trixie), runc, iptables (CRIU's network lock for container netns), gcc + libc6-dev
# + libcriu-dev (criu/criu-plugin.h) to build a C plugin, busybox-static for container rootfses,
# jq to edit runc's config.json.
PACKAGES=(criu runc iptables gcc libc6-dev libcriu-dev busybox-static jq)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'testbed: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cache_hash() { cat "$SELF" "$PROBE_SRC" | sha256sum | cut -c1-16; }
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
  # Mount points the tests are likely to use, so that a read-only rootfs can take them.
  mkdir -p "$tmp/etc/criu" "$tmp/usr/lib/criu" "$tmp/src"
  # The hardware breakpoint probe, built with the bed's own compiler.
  mkdir -p "$tmp${PROBE_BIN%/*}"
  cp "$PROBE_SRC" "$tmp${PROBE_BIN%/*}/hwbp-probe.c"
  chroot "$tmp" gcc -std=gnu11 -O2 -Wall -Wextra -Werror -o "$PROBE_BIN" "${PROBE_BIN%/*}/hwbp-probe.c" >&2 ||
    die "cannot build the hardware breakpoint probe"
  # Sanity checks before publishing.
  local f
  for f in usr/sbin/criu usr/sbin/runc usr/bin/gcc usr/bin/busybox usr/bin/jq \
      usr/include/criu/criu-plugin.h usr/bin/umount usr/bin/env "${PROBE_BIN#/}"; do
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
  unshare --mount --pid --fork --kill-child --mount-proc -- \
    "${sess[@]}" bash "$SELF" __init "$root" "${args[@]}" -- "$@" 9>&- || rc=$?
  exit "$rc"
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

# Runs as pid 1 of the new pid namespace, in the new private mount namespace.
cmd_init() {
  local root=$1; shift
  local binds=() tmpfses=() envs=() workdir=/ rw=0 timeout=0
  while (($#)); do
    case $1 in
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
  mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
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
sleep 1
pid=\$(cat /tmp/loop.pid)
mkdir -p /tmp/img
timeout -k 5 \$CMD_TIMEOUT criu dump "\${LIBDIR_OPT[@]}" -t "\$pid" -D /tmp/img -o dump.log -v4 || { tail -n 40 /tmp/img/dump.log; exit 1; }
if kill -0 "\$pid" 2>/dev/null; then echo "still running after dump"; exit 1; fi
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
  printf 'mode: hardware breakpoints: %s%s; criu and runc run with CRIU_FAULT=%s\n' \
    "$(sed -n 's/^run.hw_breakpoints=//p' <<<"$facts")" \
    "$(sed -n 's/^run.hw_breakpoints.detail=/ (/p' <<<"$facts" | sed 's/$/)/')" \
    "$(sed -n 's/^run.criu_fault=//p' <<<"$facts")"
  # Each criu and runc command in the checks is bounded by CMD_TIMEOUT seconds, and a check
  # by twice that: a hang fails with criu's log within a minute or two, not at the run's end.
  run_check() {
    name=$1; shift
    t0=$SECONDS
    if bash "$SELF" run --timeout 150 --env CMD_TIMEOUT=60 "$@" >"$out" 2>&1 </dev/null; then
      printf 'PASS: %s (%ss)\n' "$name" "$((SECONDS - t0))"; pass=$((pass + 1))
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
