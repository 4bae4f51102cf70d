#!/bin/sh
# genid test bed: the OCI runtime that podman (containers.conf) and containerd's CRI plugin
# (config.toml) run, installed as .../runtimes/crun and .../runtimes/runc. podman decides some
# features by the runtime's name, so each copy keeps the name of what it runs.
#
# podman does not pass its environment on to the runtime, so criu, which crun and runc start,
# would not get CRIU_FAULT=130 where hardware breakpoints never fire (every dump would hang).
# The run's probe records its verdict as the fact run.criu_fault (130, or none where they fire);
# this sets CRIU_FAULT from it, and only when the fact names a fault.
fault=$(sed -n 's/^run\.criu_fault=//p' /etc/genid-testbed 2>/dev/null | tail -n 1)
case $fault in
  '' | none) ;;
  *) CRIU_FAULT=$fault; export CRIU_FAULT ;;
esac
case ${0##*/} in
  crun) exec /usr/bin/crun "$@" ;;
  runc) exec /usr/sbin/runc "$@" ;;
  *) echo "$0: runs crun or runc, by its own name" >&2; exit 127 ;;
esac
