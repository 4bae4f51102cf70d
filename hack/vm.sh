#!/usr/bin/env bash
# hack/vm.sh - QEMU (TCG) test bed for genid end-to-end tests.
#
# Two beds, chosen by VM_BED:
#   default    the host's QEMU, and the current kernel of the host's own Debian release (its
#              linux-image-amd64: 6.1 on bookworm): the vmgenid device.
#   backports  QEMU and Linux from Debian trixie-backports (QEMU 11.x in a trixie rootfs of its
#              own, Linux 7.x): the vmclock device too (see hack/vm-backports.sh).
#
# Usage:
#   hack/vm.sh build
#       Install host packages if missing (qemu-system-x86, busybox-static, cpio, socat,
#       binutils), fetch the bed's kernel package with `apt-get download`, and cache vmlinuz
#       (+ the vmgenid and ptp_vmclock .ko files and their dependencies, where they are
#       modules) in ${GENID_CACHE:-/var/cache/genid}/vm-<16 hex of sha256 of hack/vm.sh>/
#       (backports: vm-backports-<16 hex of sha256 of hack/vm.sh and hack/vm-backports.sh>/,
#       with the rootfs in rootfs/). Atomic (temp dir + rename). Last stdout line: the cache
#       dir. meta.env there records the kernel package, its Debian version, the kernel
#       release and its config of the two drivers (backports: also the QEMU package's version)
#       (versions are not pinned: a build takes what the mirror has that day).
#   hack/vm.sh path
#       Print the cache dir (without building); exit 1 if it is not built.
#   hack/vm.sh clean
#       Remove the bed's cache dirs left by other versions of these scripts (backports: its
#       rootfses too).
#   hack/vm.sh initramfs OUT.cpio.gz [--add HOSTFILE:GUESTPATH]... [--init SCRIPT]
#                        [--kmsg LEVEL | --no-kmsg]
#       newc cpio + gzip with busybox-static (+ applet symlinks), the added files, the
#       vmgenid module if needed, and /init. /init mounts proc, sysfs, devtmpfs, tmpfs on
#       /run and /tmp, loads modules, copies /dev/kmsg records of level <= LEVEL (default
#       5 = notice; 7 = all) raw to the console in the background, prints
#       "VM-INIT: start", runs SCRIPT with busybox sh (stdout/stderr -> /dev/console =
#       ttyS0), prints "VM-EXIT: <rc>" and powers off.
#       A SCRIPT that never exits keeps the guest alive (migration tests).
#   hack/vm.sh boot --initrd FILE [--mem MB] [--guid auto|UUID|none] [--vmclock] [--qmp SOCK]
#                   [--serial LOG] [--incoming FILE|defer|URI] [--append STR] [--print]
#                   [-- EXTRA-QEMU-ARGS...]
#       exec qemu-system-x86_64 (foreground; the pid is qemu's, or for backports that of the
#       unshare that runs it, which kills it when it dies). --print: print the command line
#       (shell-quoted) instead of running it. --incoming FILE means 'exec:cat FILE'.
#       --vmclock adds QEMU's vmclock device (backports).
#   hack/vm.sh qemu ARGS...
#       Run the bed's QEMU with ARGS (backports: chrooted in its rootfs; see vm-backports.sh).
#   hack/vm.sh qmp SOCK JSON...
#       Connect to a QMP socket, negotiate capabilities, send each JSON command, print each
#       reply line ({"return"...} or {"error"...}); events are skipped. Exit 1 on an error reply.
#   hack/vm.sh selftest
#       Prove boot / migrate-to-file / restore / vmgenid-fork-detection on this machine.
#
# Environment: VM_BED (default or backports), GENID_CACHE (cache root), VM_ACCEL (default
# tcg), GENID_MIRROR (backports: the Debian archive; default: read from the apt sources),
# VM_QEMU (the default bed's QEMU, default
# qemu-system-x86_64), VM_TIMEOUT (seconds to wait for guest markers, default 180),
# VM_APPEND (extra kernel command line), KEEP=1 (selftest keeps its work dir).
#
# Command line (what `boot` runs; add -qmp / -incoming as needed):
#   qemu-system-x86_64 -accel tcg -cpu max -M pc -m 128 -smp 1 -nodefaults -no-user-config
#     -display none -no-reboot -kernel CACHE/vmlinuz -initrd INITRD
#     -append 'console=ttyS0 quiet panic=-1' -device vmgenid,guid=auto|UUID
#     -serial file:LOG -qmp unix:SOCK,server=on,wait=off   [-incoming 'exec:cat FILE' | defer]
# Save (QMP, one JSON per line, replies are lines starting {"return" / {"error"; skip events):
#   {"execute":"qmp_capabilities"}
#   {"execute":"stop"}
#   {"execute":"migrate-set-parameters","arguments":{"max-bandwidth":17179869184}}
#   {"execute":"migrate","arguments":{"uri":"exec:cat > FILE"}}   (QEMU 7.2 has no file:)
#   poll {"execute":"query-migrate"} until "status": "completed"; then {"execute":"quit"}
# Restore: same command line (same -m, machine, devices, kernel, initrd) plus
#   -incoming 'exec:cat FILE' (or -incoming defer + {"execute":"migrate-incoming",
#   "arguments":{"uri":"exec:cat FILE"}}); poll {"execute":"query-status"} until
#   "status": "paused" (NOT "inmigrate": a cont sent then is swallowed), then {"execute":"cont"}.
# A different (or auto) guid on the restoring QEMU makes the guest log, on /dev/kmsg and
# (via the init's kmsg copy) the serial log:  random: crng reseeded due to virtual machine fork
# The same explicit guid does not.  Minimum guest RAM for Debian's kernel: ~96 MB.
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${GENID_CACHE:-/var/cache/genid}
VM_ACCEL=${VM_ACCEL:-tcg}
VM_QEMU=${VM_QEMU:-qemu-system-x86_64}
VM_TIMEOUT=${VM_TIMEOUT:-180}
VM_BED=${VM_BED:-default}
VMFORK_LINE='crng reseeded due to virtual machine fork'

log() { printf '%s\n' "vm.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

case $VM_BED in
default) ;;
backports) . "$HACK_DIR/vm-backports.sh";;
*) die "VM_BED=$VM_BED: default or backports";;
esac

# The bed's cache dir: keyed by the scripts that build it.
cache_dir() {
	if [ "$VM_BED" = backports ]; then
		printf '%s/vm-backports-%s\n' "$CACHE_ROOT" "$(cat "$HACK_DIR/vm.sh" "$HACK_DIR/vm-backports.sh" | sha256sum | cut -c1-16)"
	else
		printf '%s/vm-%s\n' "$CACHE_ROOT" "$(sha256sum <"$HACK_DIR/vm.sh" | cut -c1-16)"
	fi
}

# ---------------------------------------------------------------- build
need_pkgs() {
	local missing=() p
	[ "$VM_BED" = backports ] || command -v "$VM_QEMU" >/dev/null 2>&1 || missing+=(qemu-system-x86)
	[ -x /bin/busybox ] && /bin/busybox --list-full >/dev/null 2>&1 &&
		! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
	command -v cpio >/dev/null 2>&1 || missing+=(cpio)
	command -v socat >/dev/null 2>&1 || missing+=(socat)
	command -v strings >/dev/null 2>&1 || missing+=(binutils)
	command -v gzip >/dev/null 2>&1 || missing+=(gzip)
	command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
	command -v zstd >/dev/null 2>&1 || missing+=(zstd)
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
		{ apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
	for p in "${missing[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || die "package $p not installed"; done
}

# The current kernel package, from the package lists as they are: the linux-image-6.*-amd64
# that the metapackage linux-image-amd64 depends on.
kernel_pkg() {
	local pkg
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-6\.[^ ]*-amd64\)$/\1/p' | head -n1)
	[ -n "$pkg" ] || return 1
	printf '%s\n' "$pkg"
}

# download_into DIR PKG: apt-get download PKG into DIR, leaving nothing there on failure.
download_into() {
	log "downloading $2"
	(cd "$1" && apt-get download "$2" >&2) && return 0
	rm -f "$1"/*
	return 1
}

# modinfo without kmod: read the .modinfo strings of a .ko
ko_field() { strings -a "$1" | sed -n "s/^$2=//p" | head -n1; }

# add_mod MODDIR OUTDIR NAME: copies module NAME (uncompressed: busybox insmod takes plain
# .ko files) and, first, the modules it depends on, to OUTDIR, and appends their file names
# to OUTDIR/../modules.order. SEEN (the caller's) lists the modules done.
add_mod() {
	local moddir=$1 out=$2 name=$3 f ko dep
	case "$SEEN" in *" $name "*) return 0;; esac
	SEEN="$SEEN$name "
	f=$(find "$moddir" -name "$name.ko*" -o -name "${name//_/-}.ko*" | head -n1)
	[ -n "$f" ] || die "module $name not found"
	ko=$out/$(basename "${f%.ko*}").ko
	case "$f" in
	*.ko) cp "$f" "$ko";;
	*.ko.xz) xz -dc "$f" >"$ko";;
	*.ko.zst) zstd -qdc "$f" >"$ko";;
	*.ko.gz) gzip -dc "$f" >"$ko";;
	*) die "module $f: unknown compression";;
	esac
	for dep in $(ko_field "$ko" depends | tr , ' '); do add_mod "$moddir" "$out" "$dep"; done
	printf '%s\n' "${ko##*/}" >>"$out/../modules.order"
}

cmd_build() {
	local dir; dir=$(cache_dir)
	need_pkgs
	if [ -f "$dir/vmlinuz" ] && [ -f "$dir/meta.env" ]; then
		printf '%s\n' "$dir"; return 0
	fi
	mkdir -p "$CACHE_ROOT"
	local tmp; tmp=$(mktemp -d "$CACHE_ROOT/.vm-build.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf --one-file-system '$tmp'" EXIT
	chmod 755 "$tmp"    # lets apt's _apt user write there (else a harmless warning)
	mkdir "$tmp/out"

	local pkg dl=$tmp/dl qemuver="" rootfs=""
	if [ "$VM_BED" = backports ]; then
		rootfs=$(bp_rootfs_cached)
		# bp_qemu binds the bed's dir at its own path inside the rootfs.
		mkdir -p "$rootfs$dir"
		qemuver=$(bp_chroot "$rootfs" dpkg-query -W -f='${Version}' qemu-system-x86)
		dl=$(mktemp -d "$rootfs/tmp/dl.XXXXXX")
		chmod 777 "$dl"
		pkg=$(bp_kernel_deb "$rootfs" "$dl")
	else
		mkdir "$dl"; chmod 777 "$dl"
		# Stale package lists name a kernel the mirror may have dropped: on any failure, update
		# the lists and resolve the name again (it changes with each kernel ABI bump).
		if ! pkg=$(kernel_pkg) || ! download_into "$dl" "$pkg"; then
			log "updating the package lists"
			apt-get update >&2 || log "apt-get update failed; trying with the lists it got"
			pkg=$(kernel_pkg) || die "cannot resolve linux-image-amd64's dependency"
			download_into "$dl" "$pkg" || die "cannot download $pkg"
		fi
	fi
	local deb debver f
	deb=$(ls "$dl/${pkg}_"*.deb)
	debver=$(dpkg-deb -f "$deb" Version)
	for f in "$dl"/*.deb; do dpkg-deb -x "$f" "$tmp/x"; done

	# Up to Linux 6.x: /boot/vmlinuz-KVER, /boot/config-KVER and /lib/modules/KVER; the 7.x
	# packages put all of it in /usr/lib/modules/KVER.
	local vmlinuz config kver found moddir
	shopt -s nullglob
	found=("$tmp"/x/boot/vmlinuz-* "$tmp"/x/usr/lib/modules/*/vmlinuz); vmlinuz=${found[0]:-}
	found=("$tmp"/x/boot/config-* "$tmp"/x/usr/lib/modules/*/config); config=${found[0]:-}
	shopt -u nullglob
	if [ ! -f "$vmlinuz" ] || [ ! -f "$config" ]; then die "$pkg has no vmlinuz and config"; fi
	case $vmlinuz in
	*/boot/vmlinuz-*) kver=${vmlinuz##*/vmlinuz-};;
	*) kver=${vmlinuz%/vmlinuz}; kver=${kver##*/};;
	esac
	moddir=$tmp/x/lib/modules/$kver
	[ -d "$moddir" ] || moddir=$tmp/x/usr/lib/modules/$kver
	cp "$vmlinuz" "$tmp/out/vmlinuz"
	cp "$config" "$tmp/out/config"
	cp /bin/busybox "$tmp/out/busybox"

	local vmgenid vmclock
	vmgenid=$(sed -n 's/^CONFIG_VMGENID=\(.\)$/\1/p' "$config")
	vmclock=$(sed -n 's/^CONFIG_PTP_1588_CLOCK_VMCLOCK=\(.\)$/\1/p' "$config")
	[ -n "$vmgenid" ] || die "CONFIG_VMGENID not set in $pkg: the kernel has no vmgenid driver"
	if [ "$VM_BED" = backports ] && [ -z "$vmclock" ]; then
		die "CONFIG_PTP_1588_CLOCK_VMCLOCK not set in $pkg: the kernel has no VMClock driver"
	fi
	: >"$tmp/out/modules.order"
	mkdir "$tmp/out/modules"
	SEEN=" "
	[ "$vmgenid" != m ] || add_mod "$moddir" "$tmp/out/modules" vmgenid
	[ "$vmclock" != m ] || add_mod "$moddir" "$tmp/out/modules" ptp_vmclock
	cat >"$tmp/out/meta.env" <<EOF
BED=$VM_BED
KPKG=$pkg
KDEB=${deb##*/}
KDEBVER=$debver
KVER=$kver
CONFIG_VMGENID=$vmgenid
CONFIG_PTP_1588_CLOCK_VMCLOCK=$vmclock
QEMUDEBVER=$qemuver
ROOTFS=$rootfs
BUILT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
	rm -rf "$tmp/x" "$dl"
	if ! mv -T "$tmp/out" "$dir" 2>/dev/null; then
		[ -f "$dir/meta.env" ] || die "cannot rename $tmp/out to $dir"
		log "another build finished first; using it"
	fi
	rm -rf --one-file-system "$tmp"; trap - EXIT
	log "$VM_BED bed: kernel $kver from $pkg $debver, CONFIG_VMGENID=$vmgenid, CONFIG_PTP_1588_CLOCK_VMCLOCK=$vmclock${qemuver:+, QEMU $qemuver}"
	printf '%s\n' "$dir"
}

# ---------------------------------------------------------------- initramfs
write_init() { # $1 = path
	cat >"$1" <<'EOF'
#!/bin/busybox sh
# generated by hack/vm.sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
ln -sf /proc/self/fd /dev/fd 2>/dev/null
while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/$m" || echo "VM-INIT: insmod $m failed"
done </etc/vm-modules.order
hostname genid-vm
# copy kernel log records of level <= $(cat /etc/vm-kmsg) (default 5 = notice: includes
# "random: crng reseeded due to virtual machine fork") to the console, raw /dev/kmsg format.
if [ -f /etc/vm-kmsg ]; then
	cat /dev/kmsg | grep "^[0-$(cat /etc/vm-kmsg)]," &
fi
echo "VM-INIT: start"
/bin/busybox sh /vm-script
echo "VM-EXIT: $?"
sync
poweroff -f
EOF
	chmod 755 "$1"
}

cmd_initramfs() {
	[ $# -ge 1 ] || die "usage: initramfs OUT.cpio.gz [--add HOST:GUEST]... [--init SCRIPT] [--no-kmsg]"
	local out=$1; shift
	local adds=() script="" kmsg=5
	while [ $# -gt 0 ]; do
		case $1 in
		--add) adds+=("$2"); shift 2;;
		--add=*) adds+=("${1#--add=}"); shift;;
		--init) script=$2; shift 2;;
		--init=*) script=${1#--init=}; shift;;
		--no-kmsg) kmsg=""; shift;;
		--kmsg) kmsg=$2; shift 2;;
		--kmsg=*) kmsg=${1#--kmsg=}; shift;;
		*) die "initramfs: unknown argument $1";;
		esac
	done
	local dir; dir=$(cmd_build | tail -n1)
	local root; root=$(mktemp -d)
	# shellcheck disable=SC2064
	trap "rm -rf '$root'" RETURN
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,lib/modules}
	chmod 1777 "$root/tmp"
	cp "$dir/busybox" "$root/bin/busybox"
	local a
	for a in $("$root/bin/busybox" --list-full); do
		[ "$a" = bin/busybox ] && continue
		mkdir -p "$root/$(dirname "$a")"
		ln -sf /bin/busybox "$root/$a"
	done
	mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
	mknod -m 666 "$root/dev/null" c 1 3 2>/dev/null || true
	if [ -s "$dir/modules.order" ]; then cp "$dir"/modules/*.ko "$root/lib/modules/"; fi
	cp "$dir/modules.order" "$root/etc/vm-modules.order"
	case $kmsg in "") ;; [0-7]) echo "$kmsg" >"$root/etc/vm-kmsg";; *) die "--kmsg wants 0..7";; esac
	write_init "$root/init"
	if [ -n "$script" ]; then
		cp "$script" "$root/vm-script"
	else
		printf 'echo "VM-READY"\n' >"$root/vm-script"
	fi
	local spec host guest
	for spec in "${adds[@]}"; do
		host=${spec%%:*}; guest=${spec#*:}
		if [ "$host" = "$spec" ] || [ -z "$guest" ]; then die "--add wants HOSTFILE:GUESTPATH, got $spec"; fi
		[ -e "$host" ] || die "--add: $host does not exist"
		mkdir -p "$root/$(dirname "$guest")"
		# the applet symlinks are absolute (/bin/busybox): never copy *through* one,
		# that would overwrite the host's file
		rm -rf "${root:?}/$guest"
		cp -a "$host" "$root/$guest"
	done
	local outabs; outabs=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
	(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
		cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -6n) >"$outabs.tmp"
	mv -f "$outabs.tmp" "$outabs"
	log "initramfs $outabs ($(stat -c %s "$outabs") bytes)"
}

# ---------------------------------------------------------------- boot
# Prints qemu argv, one per line, for the given options (see usage).
qemu_argv() {
	local initrd="" mem=256 guid=auto vmclock=0 qmp="" serial="" incoming="" append="" extra=()
	while [ $# -gt 0 ]; do
		case $1 in
		--initrd) initrd=$2; shift 2;;
		--mem) mem=$2; shift 2;;
		--guid) guid=$2; shift 2;;
		--vmclock) vmclock=1; shift;;
		--qmp) qmp=$2; shift 2;;
		--serial) serial=$2; shift 2;;
		--incoming) incoming=$2; shift 2;;
		--append) append=$2; shift 2;;
		--) shift; extra=("$@"); break;;
		*) die "boot: unknown argument $1";;
		esac
	done
	[ -n "$initrd" ] || die "boot: --initrd is required"
	local dir; dir=$(cache_dir)
	[ -f "$dir/vmlinuz" ] || die "no kernel in $dir: run hack/vm.sh build"
	local qemu=("$VM_QEMU")
	[ "$VM_BED" = default ] || qemu=(bash "$HACK_DIR/vm.sh" qemu)
	local a=("${qemu[@]}" -accel "$VM_ACCEL" -cpu max -M pc -m "$mem" -smp 1
		-nodefaults -no-user-config -display none -no-reboot
		-kernel "$dir/vmlinuz" -initrd "$initrd"
		-append "console=ttyS0 quiet panic=-1${VM_APPEND:+ $VM_APPEND}${append:+ $append}")
	[ "$guid" = none ] || a+=(-device "vmgenid,guid=$guid")
	[ $vmclock = 0 ] || a+=(-device vmclock)
	if [ -n "$serial" ]; then a+=(-serial "file:$serial"); else a+=(-serial stdio); fi
	[ -n "$qmp" ] && a+=(-qmp "unix:$qmp,server=on,wait=off")
	case $incoming in
	"") ;;
	defer|*:*) a+=(-incoming "$incoming");;
	*) a+=(-incoming "exec:cat $(printf '%q' "$incoming")");;
	esac
	a+=("${extra[@]}")
	printf '%s\n' "${a[@]}"
}

cmd_boot() {
	local print=0 args=()
	for x in "$@"; do [ "$x" = --print ] && print=1 || args+=("$x"); done
	local argv=()
	mapfile -t argv < <(qemu_argv "${args[@]}")
	[ ${#argv[@]} -gt 0 ] || exit 1
	if [ $print = 1 ]; then printf '%q ' "${argv[@]}"; echo; return; fi
	exec "${argv[@]}"
}

# ---------------------------------------------------------------- qmp
# qmp SOCK JSON... : one connection, capabilities, then each command; prints replies.
cmd_qmp() {
	local sock=$1; shift
	local rc=0 line cmd
	coproc QMP { exec socat - "UNIX-CONNECT:$sock"; }
	local in=${QMP[0]} outfd=${QMP[1]}
	read -r -t 10 line <&"$in" || die "qmp: no greeting on $sock"
	for cmd in '{"execute":"qmp_capabilities"}' "$@"; do
		printf '%s\n' "$cmd" >&"$outfd"
		while :; do
			read -r -t 60 line <&"$in" || die "qmp: no reply to $cmd"
			case $line in
			'{"return"'*) [ "$cmd" = '{"execute":"qmp_capabilities"}' ] || printf '%s\n' "$line"; break;;
			'{"error"'*) printf '%s\n' "$line"; rc=1; break;;
			esac  # events skipped
		done
	done
	exec {outfd}>&-
	wait "$QMP_PID" 2>/dev/null || true
	return $rc
}

# ---------------------------------------------------------------- selftest
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

# wait_for FILE PATTERN [TIMEOUT] [COUNT]: until PATTERN occurs COUNT times in FILE
wait_for() {
	local f=$1 pat=$2 t=${3:-$VM_TIMEOUT} n=${4:-1} end
	end=$(( $(date +%s) + t ))
	while [ "$(date +%s)" -lt "$end" ]; do
		[ "$(grep -c -- "$pat" "$f" 2>/dev/null)" -ge "$n" ] 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# qmp_wait SOCK JSON PATTERN [TIMEOUT]: repeat a query until the reply matches
qmp_wait() {
	local end r; end=$(( $(date +%s) + ${4:-$VM_TIMEOUT} ))
	while [ "$(date +%s)" -lt "$end" ]; do
		r=$(cmd_qmp "$1" "$2" 2>/dev/null || true)
		case $r in *$3*) return 0;; esac
		sleep 0.1
	done
	log "qmp_wait: last reply: $r"
	return 1
}

wait_sock() { local _; for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; return 1; }

FAILS=0
pass() { printf 'PASS: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; FAILS=$((FAILS + 1)); }
info() { printf 'INFO: %s\n' "$*"; }

QPIDS=()
start_qemu() { # NAME ARGS... ; runs qemu in background, stderr to $W/NAME.err
	local name=$1; shift
	local argv=()
	mapfile -t argv < <(qemu_argv "$@")
	printf '%q ' "${argv[@]}" >"$W/$name.cmd"
	"${argv[@]}" </dev/null >"$W/$name.out" 2>"$W/$name.err" &
	QPIDS+=($!)
	eval "PID_$name=$!"
}
stop_qemu() { # NAME: quit over QMP, then wait
	local pid; eval "pid=\$PID_$1"
	cmd_qmp "$W/$1.sock" '{"execute":"quit"}' >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# The helpers below set T (seconds) instead of printing it: a $(...) around a function
# that starts qemu would wait for qemu (it inherits the pipe) and lose QPIDS/PID_*.
# boot NAME MEM GUID : boot to READY
boot_ready() {
	local name=$1 mem=$2 guid=$3 t0
	t0=$(now)
	start_qemu "$name" --initrd "$W/initrd.gz" --mem "$mem" --guid "$guid" \
		--qmp "$W/$name.sock" --serial "$W/$name.log"
	if ! wait_for "$W/$name.log" '^READY' "$VM_TIMEOUT"; then
		cat "$W/$name.err" >&2; return 1
	fi
	T=$(elapsed "$t0" "$(now)")
}

# migrate NAME FILE : stop + migrate to file + quit
migrate_to_file() {
	local name=$1 file=$2 sock=$W/$1.sock t0
	t0=$(now)
	cmd_qmp "$sock" '{"execute":"stop"}' \
		'{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":17179869184}}' \
		"{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > $file\"}}" >/dev/null || return 1
	qmp_wait "$sock" '{"execute":"query-migrate"}' '"status": "completed"' || return 1
	T=$(elapsed "$t0" "$(now)")
	stop_qemu "$name"
}

# restore NAME MEM GUID FILE MODE(exec|defer) : until paused, then cont
restore() {
	local name=$1 mem=$2 guid=$3 file=$4 mode=$5 sock=$W/$1.sock t0 inc
	[ "$mode" = defer ] && inc=defer || inc=$file
	t0=$(now)
	start_qemu "$name" --initrd "$W/initrd.gz" --mem "$mem" --guid "$guid" \
		--qmp "$sock" --serial "$W/$name.log" --incoming "$inc"
	wait_sock "$sock" || return 1
	if [ "$mode" = defer ]; then
		cmd_qmp "$sock" "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"exec:cat $file\"}}" >/dev/null || return 1
	fi
	# 'cont' while still "inmigrate" would be swallowed: wait for "paused" first.
	qmp_wait "$sock" '{"execute":"query-status"}' '"status": "paused"' || { cat "$W/$name.err" >&2; return 1; }
	T=$(elapsed "$t0" "$(now)")
	cmd_qmp "$sock" '{"execute":"cont"}' >/dev/null
}

cmd_selftest() {
	need_pkgs
	cmd_build >/dev/null
	local dir; dir=$(cache_dir)
	# shellcheck disable=SC1091
	. "$dir/meta.env"
	W=$(mktemp -d /tmp/vmst.XXXXXX)   # short: unix socket paths are limited to 107 bytes
	# shellcheck disable=SC2153  # KEEP is the caller's, KVER and KPKG come from meta.env
	trap 'for p in "${QPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; [ "${KEEP:-0}" = 1 ] || rm -rf "$W"' EXIT
	# shellcheck disable=SC2153
	info "kernel $KVER ($KPKG), CONFIG_VMGENID=$CONFIG_VMGENID, accel=$VM_ACCEL, work dir $W"

	cat >"$W/test.sh" <<'EOF'
if dmesg | grep -q 'crng init done'; then
	echo "RNG-READY"
else
	echo "RNG-NOT-READY"
fi
if [ -d /sys/bus/acpi/drivers/vmgenid ] && ls /sys/bus/acpi/drivers/vmgenid | grep -q ':'; then
	echo "VMGENID-BOUND $(ls /sys/bus/acpi/drivers/vmgenid | grep ':' | tr '\n' ' ')"
else
	echo "VMGENID-NOT-BOUND"
fi
echo "READY"
i=0
while :; do i=$((i+1)); echo "HB $i"; sleep 1; done
EOF
	local t0 t
	t0=$(now)
	cmd_initramfs "$W/initrd.gz" --init "$W/test.sh" 2>/dev/null
	info "initramfs $(stat -c %s "$W/initrd.gz") bytes, built in $(elapsed "$t0" "$(now)")s"

	# --- A: guid=auto, boot, migrate to file; B: restore with guid=auto -> vmfork expected
	if boot_ready A 256 auto; then pass "boot A (-m 256, guid=auto) to READY in ${T}s"; else fail "boot A: no READY"; return 1; fi
	if grep -q '^RNG-READY' "$W/A.log"; then pass "guest RNG ready (crng init done) at boot"; else fail "guest RNG not ready at boot"; fi
	if grep -q '^VMGENID-BOUND' "$W/A.log"; then pass "vmgenid driver bound: $(grep '^VMGENID-BOUND' "$W/A.log" | cut -d' ' -f2-)"; else fail "vmgenid driver not bound"; fi
	if grep -q "$VMFORK_LINE" "$W/A.log"; then fail "vmfork line already at first boot"; fi
	if migrate_to_file A "$W/A.mig"; then
		pass "migrate A to file in ${T}s, $(stat -c %s "$W/A.mig") bytes (-m 256)"
	else fail "migrate A"; return 1; fi
	if restore B 256 auto "$W/A.mig" exec; then pass "restore B (-incoming exec:cat FILE) to paused in ${T}s, sent cont"; else fail "restore B"; return 1; fi
	t0=$(now)
	if wait_for "$W/B.log" "$VMFORK_LINE" 60; then
		pass "B (new guid=auto): vmfork reseed line seen $(elapsed "$t0" "$(now)")s after cont: $(grep -m1 "$VMFORK_LINE" "$W/B.log")"
	else fail "B (new guid=auto): no vmfork line within 60s"; fi
	if wait_for "$W/B.log" '^HB ' 30; then pass "B: guest alive after restore ($(grep '^HB ' "$W/B.log" | head -n1))"; else fail "B: no heartbeat after restore"; fi
	stop_qemu B

	# --- C: explicit guid, -m 128; D: restore with the same guid -> no vmfork;
	#     E: restore with another explicit guid -> vmfork
	local g1=8a9e4d0c-3f2b-4c55-9d6e-1f2a3b4c5d6e g2=0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d
	if boot_ready C 128 "$g1"; then pass "boot C (-m 128, guid=$g1) to READY in ${T}s"; else fail "boot C"; return 1; fi
	if migrate_to_file C "$W/C.mig"; then
		pass "migrate C to file in ${T}s, $(stat -c %s "$W/C.mig") bytes (-m 128)"
	else fail "migrate C"; return 1; fi
	if restore D 128 "$g1" "$W/C.mig" defer; then pass "restore D (-incoming defer + migrate-incoming) to paused in ${T}s, sent cont"; else fail "restore D"; return 1; fi
	if wait_for "$W/D.log" '^HB ' 60 5; then
		if grep -q "$VMFORK_LINE" "$W/D.log"; then fail "D (same guid): unexpected vmfork line"
		else pass "D (same guid): no vmfork line after 5 heartbeats"; fi
	else fail "D: no heartbeats after restore"; fi
	stop_qemu D
	if restore E 128 "$g2" "$W/C.mig" exec; then pass "restore E (other explicit guid) to paused in ${T}s, sent cont"; else fail "restore E"; return 1; fi
	if wait_for "$W/E.log" "$VMFORK_LINE" 60; then pass "E (different guid): vmfork line seen"; else fail "E (different guid): no vmfork line"; fi
	stop_qemu E

	# --- F: a script that exits: VM-EXIT + poweroff makes qemu exit by itself
	printf 'echo hello-from-guest\nexit 3\n' >"$W/exit.sh"
	cmd_initramfs "$W/exit.gz" --init "$W/exit.sh" --no-kmsg 2>/dev/null
	local argv=(); mapfile -t argv < <(qemu_argv --initrd "$W/exit.gz" --mem 128 --serial "$W/F.log")
	t0=$(now)
	if timeout "$VM_TIMEOUT" "${argv[@]}" 2>"$W/F.err" && grep -q '^VM-EXIT: 3' "$W/F.log"; then
		pass "exiting script: qemu exited by itself after $(elapsed "$t0" "$(now)")s, log has 'VM-EXIT: 3'"
	else fail "exiting script: $(cat "$W/F.log" "$W/F.err" 2>/dev/null | tail -n5)"; fi

	if [ $FAILS -eq 0 ]; then echo "SELFTEST PASS"; else echo "SELFTEST FAIL ($FAILS failures; rerun with KEEP=1 to keep $W)"; return 1; fi
}

# ---------------------------------------------------------------- main
cmd_path() { # the cache dir; exit 1 if not built (the test looks here before booting)
	local dir; dir=$(cache_dir)
	printf '%s\n' "$dir"
	[ -f "$dir/vmlinuz" ] && [ -f "$dir/meta.env" ] && return 0
	log "not built: $dir (run: $0 build)"
	return 1
}

cmd_clean() { # remove cache dirs of other script versions (of this bed)
	local keep rootfs="" d
	keep=$(cache_dir)
	[ "$VM_BED" = default ] || rootfs=$(bp_rootfs_path)
	shopt -s nullglob
	for d in "$CACHE_ROOT"/vm-*[0-9a-f] "$CACHE_ROOT"/.vm-build.*; do
		[[ $d =~ /(vm-[0-9a-f]{16}|vm-backports-[0-9a-f]{16}|vm-backports-rootfs-[0-9a-f]{16}|\.vm-build\..{6})$ ]] || continue
		[[ $VM_BED == backports ]] && [[ $d =~ /vm-[0-9a-f]{16}$ ]] && continue
		[[ $VM_BED == default ]] && [[ $d =~ /vm-backports- ]] && continue
		[ "$d" != "$keep" ] && [ "$d" != "$rootfs" ] || continue
		log "removing $d"; rm -rf --one-file-system "$d"
	done
	shopt -u nullglob
	return 0
}

# qemu ARGS...: the bed's QEMU
cmd_qemu() {
	if [ "$VM_BED" = backports ]; then
		local dir; dir=$(cache_dir)
		[ -f "$dir/meta.env" ] || die "not built: $dir (run: VM_BED=backports $0 build)"
		bp_qemu "$(sed -n 's/^ROOTFS=//p' "$dir/meta.env")" "$dir" "$@"
	fi
	exec "$VM_QEMU" "$@"
}

case ${1:-} in
build) shift; cmd_build "$@";;
qemu) shift; cmd_qemu "$@";;
clean) cmd_clean;;
path) cmd_path;;
initramfs) shift; cmd_initramfs "$@";;
boot) shift; cmd_boot "$@";;
qmp) shift; cmd_qmp "$@";;
selftest) shift; cmd_selftest "$@";;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2;;
esac
