#!/usr/bin/env bash
# hack/mutants.sh - mutation testing (gremlins) of the packages whose tests guard genid's
# semantics, privilege and parsing, each run bounded in time, with one summary line a package.
#
# Usage: hack/mutants.sh [PACKAGE...]
#   PACKAGE  wire, scope, checkpoint, server (the privilege check and the input path:
#            peer.go, read.go, loop.go) or server-all (every file of internal/server: hours
#            on 2 cores). Default: wire scope checkpoint server.
#
# Environment:
#   MUTANTS_TIMEOUT    seconds one package may take (default 1200); past it the run is
#                      killed, reported as "timed out" and the script fails.
#   MUTANTS_WORKERS    gremlins workers (default 1: the machine is shared).
#   MUTANTS_THRESHOLD  the lowest efficacy that passes (default 95).
#   MUTANTS_OUT        directory of the logs and gremlins' JSON (default bin/mutants).
#
# Output: one line a package ("mutants wire: killed 65 lived 1 not-covered 0 timed-out 0
# efficacy 98.48% in 216 s ok"); the exit status is non-zero if a package timed out, failed,
# or fell below the threshold. docs/mutants.md says which mutants live and why, and why
# a "killed" of internal/server may be a slow run (check surprising kills by hand).
# All four packages take about 35 minutes on the 2-core machine, the server 20 of them.
set -u
cd "$(dirname "$0")/.."

timeout_s=${MUTANTS_TIMEOUT:-1200}
workers=${MUTANTS_WORKERS:-1}
threshold=${MUTANTS_THRESHOLD:-95}
out=${MUTANTS_OUT:-bin/mutants}
mkdir -p "$out"

# Every file of internal/server but those of the privilege check (peer.go) and of the
# input path (read.go, and loop.go's frame reader): a run of the whole package re-runs its
# tests (tens of seconds) for each of hundreds of mutants.
server_rest='(^|/)(conn|diag|dispatch|errors|floor|history|historyfile|hooks|limits|listen|metrics|pages|publish|restore|scopes|server|status|sys|timers|waits|write)\.go$'

[ $# -gt 0 ] || set -- wire scope checkpoint server
fail=0
for name in "$@"; do
	args=()
	case $name in
	wire) pkg=./internal/wire ;;
	scope) pkg=./internal/scope ;;
	checkpoint) pkg=./checkpoint ;;
	server) pkg=./internal/server args=(--exclude-files "$server_rest") ;;
	server-all) pkg=./internal/server ;;
	*)
		echo "mutants: unknown package $name" >&2
		exit 2
		;;
	esac
	log=$out/$name.log
	t0=$(date +%s)
	# --timeout-coefficient: gremlins bounds each mutant's go test by a multiple of the
	# tests' own time; the machine is shared, and a slow run must not count as a hang.
	# -k: gremlins outlives a SIGTERM.
	timeout -k 30 "$timeout_s" gremlins unleash --workers "$workers" --timeout-coefficient 10 \
		--threshold-efficacy "$threshold" -o "$out/$name.json" "${args[@]}" "$pkg" >"$log" 2>&1
	rc=$?
	secs=$(($(date +%s) - t0))
	counts=$(sed -n 's/^Killed: \([0-9]*\), Lived: \([0-9]*\), Not covered: \([0-9]*\)$/killed \1 lived \2 not-covered \3/p' "$log")
	timedout=$(sed -n 's/^Timed out: \([0-9]*\),.*/timed-out \1/p' "$log")
	efficacy=$(sed -n 's/^Test efficacy: \(.*\)$/efficacy \1/p' "$log")
	case $rc in
	0) verdict=ok ;;
	124 | 137) verdict="stopped: over $timeout_s s, or killed (log: $log)" fail=1 ;;
	*) verdict="FAILED, exit $rc (log: $log)" fail=1 ;;
	esac
	echo "mutants $name: ${counts:-no result} ${timedout} ${efficacy} in $secs s $verdict"
	grep -E '^ *(LIVED|TIMED OUT) ' "$log" | sed "s/^ */  $name: /"
done
exit $fail
