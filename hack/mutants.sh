#!/usr/bin/env bash
# hack/mutants.sh - mutation testing (gremlins) of the packages whose tests guard genid's
# semantics, privilege and parsing, each run bounded in time, with one summary line a package.
#
# Usage: hack/mutants.sh [PACKAGE...]
#   PACKAGE  server (peer.go, read.go, loop.go; its threshold is on the privilege check and
#            the input path: peer.go, read.go and loop.go's frame reader), checkpoint, wire,
#            scope, server-rest (every other file of internal/server, judged by all of its
#            tests: an hour or more on 2 cores), server-all (every file: longer still), or
#            plugin-c (the CRIU plugin's C reader and writer of the record, by
#            hack/mutants-c.sh).
#            Default: server checkpoint wire scope plugin-c.
#
# Environment:
#   MUTANTS_TIMEOUT    seconds one package may take (default: server 1200, the others 600);
#                      past it the run is killed, reported as "stopped" and the script fails.
#   MUTANTS_WORKERS    gremlins workers (default: server 2, its tests mostly wait on the clock
#                      and on sockets; the others 1, their runs are all compiling).
#   MUTANTS_THRESHOLD  the lowest efficacy that passes (default 95).
#   MUTANTS_OUT        directory of the logs and gremlins' JSON (default bin/mutants).
#   MUTANTS_ROWS       if set, also write the results as torture table rows (JSON) to this
#                      file: make torture's table (test/torture, -torture.include).
#
# Output: one line a package ("mutants wire: killed 65 lived 1 not-covered 0 timed-out 0
# efficacy 98.48% in 96 s, control 2/2 ok"); the exit status is non-zero if a package was
# stopped, failed, fell below the threshold, or its unmutated tests failed a control run.
# docs/mutants.md says which mutants live and why.
#
# The run is on a copy of the sources (git's tracked and untracked files, bin/ aside): gremlins
# copies the module for each worker, and make torture writes into bin/ meanwhile. GOFLAGS gets
# -count=1, so gremlins' first, coverage run is a real run whose time bounds each mutant's (a
# cached result took 0.2 s and made compiling mutants "time out"), and -vet=off: vet is no
# test, and it was half of each mutant's compile.
set -u
cd "$(dirname "$0")/.." || exit 2

threshold=${MUTANTS_THRESHOLD:-95}
out=${MUTANTS_OUT:-bin/mutants}
rows=${MUTANTS_ROWS:-}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
case $rows in
'' | /*) ;;
*) rows=$PWD/$rows ;;
esac

# Every file of internal/server but those of the privilege check (peer.go) and of the
# input path (read.go, and loop.go's frame reader): a run of the whole package re-runs its
# tests (tens of seconds) for each of hundreds of mutants.
server_rest='(^|/)(conn|diag|dispatch|errors|floor|history|historyfile|hooks|limits|listen|metrics|pages|publish|restore|scopes|server|status|sys|timers|waits|write)\.go$'
# Their mutants are judged by the package's tests of the protocol, the input path and who
# may do what (backlog, input, listen, loop, mutants, peer, server _test.go); those of its other
# concerns (history, hooks, metrics, floor, pages, restore images, scopes: observe, floor,
# pages, restore_images, scopes _test.go) are skipped, a third of the package's test time.
server_skip='-skip=^(TestHistory|TestBarrier|TestHooks|TestMetrics|TestFloor|TestMarksKept|TestVMClockPages|TestRestoreImagesInHistory|TestScope|TestRestoreScopes$|TestRestoredAttachNeedsRestore$|TestRestoreBegin$)'

# frame_reader_counts LOG LOOP_GO: "killed lived not-covered timed-out not-viable" of the
# mutants of gremlins' LOG in the privilege check and the input path proper: peer.go,
# read.go and loop.go's frame reader (readable, answer, frames, readableAdmin, drain,
# discard; the rest of loop.go is the event loop: its setup, wake-ups, timers, accept and
# close).
frame_reader_counts() {
	awk '
	FNR == NR {
		if ($0 ~ /^func /) {
			if (start) { lo[++k] = start; hi[k] = FNR - 1; start = 0 }
			if ($0 ~ /^func \(l \*loop\) (readable|answer|frames|readableAdmin|drain|discard)\(/) start = FNR
		}
		next
	}
	start { lo[++k] = start; hi[k] = 1e9; start = 0 }
	/ at [a-z_]+\.go:[0-9]+:[0-9]+$/ {
		split($NF, w, ":")
		inside = w[1] == "peer.go" || w[1] == "read.go"
		if (w[1] == "loop.go") for (i = 1; i <= k; i++) if (w[2] + 0 >= lo[i] && w[2] + 0 <= hi[i]) inside = 1
		if (!inside) next
		if ($1 == "KILLED") c1++
		else if ($1 == "LIVED") c2++
		else if ($0 ~ /NOT COVERED/) c3++
		else if ($0 ~ /TIMED OUT/) c4++
		else if ($0 ~ /NOT VIABLE/) c5++
	}
	END { printf "%d %d %d %d %d\n", c1, c2, c3, c4, c5 }' "$2" "$1"
}

src=$(mktemp -d "${TMPDIR:-/tmp}/genid-mutants.XXXXXX") || exit 2
# timeout puts gremlins in a process group of its own (timeout's pid), out of reach of a
# kill of ours: a stop is handed on to that group, then killed (go test outlives a SIGTERM),
# and gremlins' copies of the module (its tests' working directories) removed. (Its TMPDIR
# stays: the tests' socket paths are near their length limit.)
gremlins_pid=
# shellcheck disable=SC2317 # run by the trap below
stop_gremlins() {
	[ -n "$gremlins_pid" ] || return 0
	local pid dirs=()
	for pid in $(pgrep -g "$gremlins_pid"); do
		dirs+=("$(readlink "/proc/$pid/cwd" | sed -n 's,^\('"${TMPDIR:-/tmp}"'/gremlins-[0-9]*\)/.*,\1,p')")
	done
	kill -TERM -- -"$gremlins_pid" 2>/dev/null && sleep 2
	kill -KILL -- -"$gremlins_pid" 2>/dev/null
	for pid in "${dirs[@]}"; do
		[ -z "$pid" ] || rm -rf "$pid"
	done
}
# reap_mutants kills the test binaries of mutants that gremlins timed out: it kills their
# go test, and the binary, reparented to init, may spin on (a mutant that hangs the loop
# was seen at a full CPU 35 minutes later). They run in gremlins' copies of the module.
reap_mutants() {
	local pid
	for pid in $(pgrep -f '\.test -test\.'); do
		case $(readlink "/proc/$pid/cwd" 2>/dev/null) in
		"${TMPDIR:-/tmp}"/gremlins-*) kill -KILL "$pid" 2>/dev/null ;;
		esac
	done
}
trap 'rm -rf "$src" "$src.bin" "$src.tmp"' EXIT
trap 'stop_gremlins; exit 143' TERM INT HUP
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard |
		tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -x -C "$src"
else
	tar --exclude=./bin -cf - . | tar -x -C "$src"
fi
[ -f "$src/go.mod" ] || {
	echo "mutants: could not copy the sources to $src" >&2
	exit 2
}
goflags="${GOFLAGS:+$GOFLAGS }-count=1 -vet=off"

# gremlins runs each mutant's go test with GOTMPDIR set to its own directory (mode 0700),
# and go test hands that on to the tests as their TMPDIR: a test whose child connects as
# nobody to a socket under t.TempDir() (TestAdminSender) then failed, and "killed", every
# mutant that reached it. A go of our own first on gremlins' PATH drops GOTMPDIR; the
# control runs go through it too, with such a GOTMPDIR, so they run as the mutants do.
real_go=$(command -v go) || {
	echo "mutants: no go on PATH" >&2
	exit 2
}
shim=$src.bin
mkdir -p "$shim" "$src.tmp" && chmod 700 "$src.tmp" || exit 2
printf '#!/bin/bash\nunset GOTMPDIR\nexec %q "$@"\n' "$real_go" >"$shim/go" && chmod +x "$shim/go" || exit 2
export PATH="$shim:$PATH"

[ $# -gt 0 ] || set -- server checkpoint wire scope plugin-c
fail=0
json=()
for name in "$@"; do
	args=() workers=1 coef=10 bound=600 skip='' by="its tests" gate=$threshold frame='' tool=gremlins
	case $name in
	wire) pkg=./internal/wire what="internal/wire" ;;
	scope) pkg=./internal/scope what="internal/scope" ;;
	checkpoint) pkg=./checkpoint what="checkpoint" ;;
	server)
		pkg=./internal/server what="internal/server peer.go, read.go, loop.go"
		args=(--exclude-files "$server_rest") workers=2 coef=3 bound=1200 skip=$server_skip
		by="its protocol, input and privilege tests"
		# The threshold is on the privilege check and the input path proper (below);
		# gremlins' own figure, over the three whole files, is printed beside it.
		gate=0 frame=1
		;;
	server-rest)
		pkg=./internal/server what="internal/server but peer.go, read.go, loop.go"
		args=(--exclude-files '(^|/)(peer|read|loop)\.go$') workers=2 coef=3 bound=14400
		;;
	server-all) pkg=./internal/server what="internal/server" workers=2 coef=3 bound=14400 ;;
	plugin-c)
		# gremlins mutates Go only: hack/mutants-c.sh mutates the C, one mutant at a
		# time, and prints gremlins' summary lines; its -control is the control run.
		pkg='' what="plugin/criu/genid-criu.c's record reader and writer" tool=hack/mutants-c.sh
		by="the C and Go readers' verdicts and the C writer's round trip (seeds -roundtrip, ASan, UBSan)"
		;;
	*)
		echo "mutants: unknown package $name" >&2
		exit 2
		;;
	esac
	workers=${MUTANTS_WORKERS:-$workers}
	export GOFLAGS="$goflags${skip:+ $skip}"
	bound=${MUTANTS_TIMEOUT:-$bound}
	log=$out/$name.log
	t0=$(date +%s)
	# --timeout-coefficient: gremlins bounds each mutant's go test by a multiple of the
	# coverage run's time; the machine is shared, and a slow run must not count as a hang.
	# The server's mutants that hang its loop (an in-process call waits on it, unbounded)
	# take that bound in full, hence 3 times its longer run. -k: gremlins outlives a SIGTERM.
	if [ "$tool" = gremlins ]; then
		(cd "$src" && exec timeout -k 30 "$bound" gremlins unleash --workers "$workers" --timeout-coefficient "$coef" \
			--threshold-efficacy "$gate" -o "$out/$name.json" "${args[@]}" "$pkg") >"$log" 2>&1 &
	else
		(cd "$src" && MUTANTS_THRESHOLD=$gate MUTANTS_C_LOG=$out/$name.mutants exec timeout -k 30 "$bound" "$tool") >"$log" 2>&1 &
	fi
	gremlins_pid=$!
	wait "$gremlins_pid"
	rc=$?
	gremlins_pid=
	reap_mutants
	# Control: the unmutated tests, twice at once (as loaded as gremlins' workers), pass.
	# A test that fails now and then would "kill" mutants it never judged.
	ok=0
	for i in 1 2; do
		if [ "$tool" = gremlins ]; then
			(cd "$src" && GOTMPDIR=$src.tmp timeout -k 10 600 go test "$pkg" >"$out/$name.control$i.log" 2>&1) &
		else
			(cd "$src" && timeout -k 10 600 "$tool" -control >"$out/$name.control$i.log" 2>&1) &
		fi
	done
	for i in 1 2; do
		wait -n && ok=$((ok + 1))
	done
	secs=$(($(date +%s) - t0))
	read -r killed lived nocover < <(sed -n 's/^Killed: \([0-9]*\), Lived: \([0-9]*\), Not covered: \([0-9]*\)$/\1 \2 \3/p' "$log")
	read -r timedout notviable < <(sed -n 's/^Timed out: \([0-9]*\), Not viable: \([0-9]*\),.*/\1 \2/p' "$log")
	efficacy=$(sed -n 's/^Test efficacy: \([0-9.]*\)%$/\1/p' "$log")
	total=$((${killed:-0} + ${lived:-0} + ${nocover:-0} + ${timedout:-0} + ${notviable:-0}))
	all="" allfig="" files=
	if [ -n "$frame" ] && [ -n "${efficacy:-}" ]; then
		all="; ${efficacy}% over the three whole files ($killed killed, $lived lived, $nocover not covered, $timedout timed out)"
		allfig=$(printf ', "all_killed": %d, "all_lived": %d, "all_not_covered": %d, "all_timed_out": %d, "all_efficacy": %s' \
			"$killed" "$lived" "$nocover" "$timedout" "$efficacy")
		read -r killed lived nocover timedout notviable < <(frame_reader_counts "$log" "$src/internal/server/loop.go")
		efficacy=$(awk -v k="$killed" -v l="$lived" 'BEGIN { printf "%.2f", k + l ? 100 * k / (k + l) : 0 }')
		files=$what what="internal/server peer.go, read.go and loop.go's frame reader"
	fi
	case $rc in
	0) verdict=ok ;;
	10) verdict="FAILED: under $threshold% (log: $log)" fail=1 ;;
	124 | 137) verdict="stopped: over $bound s (log: $log)" fail=1 ;;
	*) verdict="FAILED, exit $rc (log: $log)" fail=1 ;;
	esac
	if [ -z "${efficacy:-}" ]; then
		verdict="FAILED: no result (log: $log)" fail=1
	elif [ "$verdict" = ok ] && awk -v e="$efficacy" -v t="$threshold" 'BEGIN { exit !(e < t) }'; then
		verdict="FAILED: under $threshold% (log: $log)" fail=1
	fi
	if [ "$ok" != 2 ]; then
		verdict="$verdict; the unmutated tests FAILED a control run ($out/$name.control*.log)" fail=1
	fi
	echo "mutants $name: killed ${killed:--} lived ${lived:--} not-covered ${nocover:--} timed-out ${timedout:--}" \
		"efficacy ${efficacy:--}%${frame:+ in $what}$all in $secs s, control $ok/2 $verdict"
	grep -E '^ *(LIVED|TIMED OUT) ' "$log" | sed "s/^ */  $name: /"
	passed=false
	case $verdict in ok) passed=true ;; esac
	json+=("$(printf '{"case": "mutants-%s", "tried": "%d mutants of %s (%s); %s run on each they cover", "held": "%s%% killed of those run in %s (%s killed, %s lived, %s not covered, %s timed out)%s; %s%% wanted", "failures": %d, "passed": %s, "seconds": %d, "figures": {"killed": %d, "lived": %d, "not_covered": %d, "timed_out": %d, "not_viable": %d, "efficacy": %s, "control_passed": %d%s}, "full": true}' \
		"$name" "$total" "${files:-$what}" "$tool" "$by" "${efficacy:--}" "$what" "${killed:--}" "${lived:--}" "${nocover:--}" "${timedout:--}" "$all" "$threshold" \
		"${lived:-0}" "$passed" "$secs" "${killed:-0}" "${lived:-0}" "${nocover:-0}" "${timedout:-0}" "${notviable:-0}" "${efficacy:-0}" "$ok" "$allfig")")
done
if [ -n "$rows" ]; then
	(IFS=,; printf '[%s]\n' "${json[*]}") >"$rows"
fi
exit $fail
