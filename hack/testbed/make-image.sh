#!/bin/sh
# genid test bed: make-image NAME [CMD ARG...]
# Makes localhost/NAME:latest in podman's store: a busybox-static rootfs (/bin/busybox and a
# symlink for each of its applets, /tmp, /etc/passwd and /etc/group for root; PATH=/bin), by
# `podman import`, with CMD ARG... (default: sleep infinity, so that it also serves as a CRI
# pause image) as its command. Does nothing if the image is there with that command. No
# registry is reachable from the bed, and each run starts with an empty store: call it first.
# For containerd: podman save --format docker-archive -o F localhost/NAME:latest, then
# ctr [-n NS] image import F.
set -eu
[ $# -ge 1 ] && [ -n "$1" ] || { echo "usage: $0 NAME [CMD ARG...]" >&2; exit 2; }
ref=localhost/$1:latest
shift
[ $# -ge 1 ] || set -- sleep infinity
# The command as JSON, the way podman prints .Config.Cmd (no argument may hold '"' or '\').
cmd='['
sep=
for a in "$@"; do
  case $a in *\"* | *\\*) echo "$0: arguments with '\"' or '\\' are not supported" >&2; exit 2 ;; esac
  cmd="$cmd$sep\"$a\""
  sep=,
done
cmd="$cmd]"
if podman image exists "$ref" &&
    [ "$(podman image inspect --format '{{json .Config.Cmd}}' "$ref")" = "$cmd" ]; then
  exit 0
fi
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/root/bin" "$d/root/etc" "$d/root/tmp" "$d/root/root"
chmod 1777 "$d/root/tmp"
cp /usr/bin/busybox "$d/root/bin/busybox"
for a in $(/usr/bin/busybox --list); do
  [ -e "$d/root/bin/$a" ] || ln -s busybox "$d/root/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$d/root/etc/passwd"
echo 'root:x:0:' >"$d/root/etc/group"
tar -C "$d/root" -cf "$d/root.tar" .
# PATH: podman adds a default, but a CRI container (and pause) gets only the image's.
podman import --quiet --change "CMD $cmd" --change "ENV PATH=/bin" "$d/root.tar" "$ref" >/dev/null
