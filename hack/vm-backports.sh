# shellcheck shell=bash
# hack/vm-backports.sh - the "backports" VM bed of hack/vm.sh (VM_BED=backports), sourced by it.
#
# Debian trixie-backports has what the default bed (the host's QEMU and kernel) lacks: a QEMU
# with the vmclock device (-device vmclock) and a Linux with the VMClock driver, its
# vm_generation_counter, notifications and poll() (7.0+). The host may be older than trixie
# (bookworm here), so that QEMU runs from a trixie rootfs of its own: debootstrap (minbase) of
# trixie, then qemu-system-x86 from trixie-backports. The guest kernel is trixie-backports'
# linux-image-amd64, downloaded with the rootfs's apt and unpacked as the default bed does with
# the host's.
#
# The rootfs has a cache dir of its own (bp_rootfs_cached), named in the bed's meta.env.
# bp_qemu runs its QEMU chrooted there, in a private mount namespace where the host's /tmp,
# /dev and the bed's cache dir are at their own paths: every path vm.sh and the tests give QEMU
# (kernel, initramfs, serial log, QMP socket, migration file) means the same inside.
#
# The mirror is the host's Debian archive, read from its apt sources (as hack/testbed.sh does).

BP_SUITE=trixie
BP_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Prints "URI SUITE" for every enabled deb source of this machine, one-line and deb822 formats.
bp_apt_sources() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -r "$f" ] || continue
		sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		awk 'BEGIN { RS = ""; FS = "\n" }
		{
			types = uris = suites = ""; enabled = "yes"
			for (i = 1; i <= NF; i++) {
				if ($i ~ /^#/ || $i !~ /^[A-Za-z-]+:/) continue
				key = tolower(substr($i, 1, index($i, ":") - 1)); val = substr($i, index($i, ":") + 1)
				gsub(/^[ \t]+|[ \t]+$/, "", val)
				if (key == "types") types = val; else if (key == "uris") uris = val
				else if (key == "suites") suites = val; else if (key == "enabled") enabled = tolower(val)
			}
			if (types !~ /(^| )deb( |$)/ || enabled == "no" || uris == "") next
			split(uris, u, /[ \t]+/); n = split(suites, s, /[ \t]+/)
			for (j = 1; j <= n; j++) print u[1], s[j]
		}' "$f"
	done
}

# The Debian archive: GENID_MIRROR, else the source that carries this machine's release suite.
bp_mirror() {
	if [ -n "${GENID_MIRROR:-}" ]; then printf '%s\n' "${GENID_MIRROR%/}"; return; fi
	local codename uri suite best="" fallback=""
	# shellcheck disable=SC1091
	codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
	while read -r uri suite; do
		case $uri in http://*|https://*|ftp://*|file://*) ;; *) continue;; esac
		case $suite$uri in *security*) continue;; esac
		if [ -n "$codename" ] && [ "$suite" = "$codename" ]; then best=${best:-$uri}
		elif [[ $suite =~ ^[a-z]+$ && ${uri%/} == */debian ]]; then fallback=${fallback:-$uri}
		fi
	done < <(bp_apt_sources)
	uri=${best:-$fallback}
	[ -n "$uri" ] || die "no Debian archive in this machine's apt sources; set GENID_MIRROR"
	printf '%s\n' "${uri%/}"
}

bp_need_host_tools() {
	local missing=()
	command -v debootstrap >/dev/null || missing+=(debootstrap)
	[ -r "$BP_KEYRING" ] || missing+=(debian-archive-keyring)
	command -v unshare >/dev/null || missing+=(util-linux)
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
		{ apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}

# bp_chroot ROOT CMD...: CMD in ROOT with /proc and /dev, in a private mount namespace (apt's
# maintainer scripts want them; nothing stays mounted on the host).
bp_chroot() {
	local root=$1; shift
	unshare --mount --fork --kill-child -- bash -c '
		root=$1; shift
		mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" || exit 1
		exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
			LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"' bp_chroot "$root" "$@"
}

# bp_rootfs_path: where this version of the file keeps its rootfs.
bp_rootfs_path() { printf '%s/vm-backports-rootfs-%s\n' "$CACHE_ROOT" "$(sha256sum <"$HACK_DIR/vm-backports.sh" | cut -c1-16)"; }

# bp_rootfs_cached: the rootfs, built if missing, in $CACHE_ROOT/vm-backports-rootfs-<16 hex
# of sha256 of this file> (a kernel of another day needs no new rootfs); prints its path.
bp_rootfs_cached() {
	local root tmp
	root=$(bp_rootfs_path)
	if [ -x "$root/usr/bin/qemu-system-x86_64" ]; then printf '%s\n' "$root"; return 0; fi
	local mirror; mirror=$(bp_mirror)
	log "mirror: $mirror"
	tmp=$(mktemp -d "$CACHE_ROOT/.vm-build.XXXXXX")
	chmod 755 "$tmp"
	# shellcheck disable=SC2064
	trap "rm -rf --one-file-system '$tmp'" EXIT
	bp_rootfs "$tmp/rootfs" "$mirror"
	if ! mv -T "$tmp/rootfs" "$root" 2>/dev/null; then
		[ -x "$root/usr/bin/qemu-system-x86_64" ] || die "cannot rename $tmp/rootfs to $root"
	fi
	rm -rf --one-file-system "$tmp"; trap - EXIT
	printf '%s\n' "$root"
}

# bp_rootfs ROOT MIRROR: a trixie rootfs in ROOT with trixie-backports' qemu-system-x86.
bp_rootfs() {
	local root=$1 mirror=$2 blog=$1.debootstrap.log
	bp_need_host_tools
	mkdir -p "$CACHE_ROOT/debs-vm"
	log "debootstrap $BP_SUITE into $root (log: $blog)"
	if ! debootstrap --variant=minbase --arch=amd64 --components=main --keyring="$BP_KEYRING" \
		--cache-dir="$CACHE_ROOT/debs-vm" "$BP_SUITE" "$root" "$mirror" >"$blog" 2>&1; then
		tail -n 30 "$blog" >&2
		die "debootstrap failed"
	fi
	rm -f "$blog"
	printf 'deb %s %s main\ndeb %s %s-backports main\n' "$mirror" "$BP_SUITE" "$mirror" "$BP_SUITE" \
		>"$root/etc/apt/sources.list"
	cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
	bp_chroot "$root" apt-get update >&2 || die "apt-get update in the rootfs failed"
	bp_chroot "$root" apt-get install -y --no-install-recommends -t "$BP_SUITE-backports" \
		qemu-system-x86 >&2 || die "cannot install trixie-backports' qemu-system-x86"
	bp_chroot "$root" apt-get clean
	rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
}

# bp_kernel_deb ROOT DIR: downloads trixie-backports' current kernel package into DIR (inside
# ROOT) with the rootfs's apt, with the packages that carry its files (Linux 7.x's image
# package only depends on linux-binary-*, linux-base-* and linux-modules-*); prints its name.
bp_kernel_deb() {
	local root=$1 dir=$2 pkg parts
	pkg=$(bp_chroot "$root" apt-cache depends "linux-image-amd64/$BP_SUITE-backports" 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
	[ -n "$pkg" ] || die "cannot resolve $BP_SUITE-backports' linux-image-amd64"
	parts=$(bp_chroot "$root" apt-cache depends "$pkg/$BP_SUITE-backports" 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-\(binary\|base\|modules\)-[^ ]*\)$/\1/p')
	log "downloading $pkg ($BP_SUITE-backports)${parts:+ with }$(echo $parts)"
	# shellcheck disable=SC2016,SC2086  # $1... are the inner shell's; parts are words
	bp_chroot "$root" bash -c 'cd "$1" && s=$2 && shift 2 && for p; do apt-get download "$p/$s" || exit 1; done' \
		_ "${dir#"$root"}" "$BP_SUITE-backports" "$pkg" $parts >&2 || die "cannot download $pkg"
	printf '%s\n' "$pkg"
}

# bp_qemu ROOT BEDDIR ARGS...: exec ROOT's qemu-system-x86_64 with ARGS, chrooted, with the
# host's /tmp, /dev and BEDDIR at their own paths. QEMU dies with the caller (--kill-child).
bp_qemu() {
	local root=$1 bed=$2; shift 2
	[ -x "$root/usr/bin/qemu-system-x86_64" ] || die "no QEMU in $root: run VM_BED=backports hack/vm.sh build"
	exec unshare --mount --fork --kill-child -- bash -c '
		root=$1 bed=$2; shift 2
		mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" &&
			mount --rbind /tmp "$root/tmp" && mount --bind "$bed" "$root$bed" || exit 1
		exec chroot "$root" /usr/bin/qemu-system-x86_64 "$@"' bp_qemu "$root" "$bed" "$@"
}
