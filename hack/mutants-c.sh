#!/usr/bin/env bash
# hack/mutants-c.sh - mutation testing of the CRIU plugin's C reader and writer of the
# checkpoint record (plugin/criu/genid-criu.c), which gremlins (Go only) cannot mutate.
#
# Usage: hack/mutants-c.sh [-control]
#   -control  only the control run: the unmutated code, built as the mutants are, passes
#             the oracle (hack/mutants.sh runs it twice at once after the mutants).
#
# The mutants: plugin/criu/fuzz/mutants lists gremlins' operator mutants (< <= > >= == !=,
# binary + - * / %, ++ --, += -=, && ||) in the bodies of the reader's functions (take,
# get_*, get_str, get_name, parse_scopes, by_name, name_is, parse_record, read_record) and
# the writer's (put, put_*, write_record), their lines read from the source at run time;
# never in a string or character literal, a comment, a preprocessor line, nor -> or a
# unary * or -. Each is
# applied alone to a copy of the source and plugin/criu/fuzz/record_roundtrip.c built on it
# with clang, ASan and UBSan (-O0: the build is most of a mutant's time); one that does not
# build is "not viable".
#
# The oracle, on the C fuzzer's corpus (plugin/criu/fuzz/corpus) and the seeds (the Go
# writer's records at and past each limit, the Go fuzzer's corpus): `seeds -roundtrip`, that
# is the C reader's verdict on each input is the Go reader's (checkpoint.DecodeRecord), the
# C reader takes nothing the restore cannot rely on (record_fuzz.c's aborts), read_record
# agrees with parse_record, no sanitizer fires, and each record read and written back by the
# C writer is byte for byte the Go writer's encoding of it; under injected faults (short
# reads and writes, EINTR, a read or write error, a write of nothing, a file that grows as it
# is read, RLIMIT_FSIZE), on what else an images dir may hold (nothing, genid.json, a
# directory, a symlink, a FIFO), with fd 0 free. A mutant is killed if it fails, lived if
# it passes, timed out past MUTANTS_C_EACH seconds. The records of RECORD_MAX bytes and one
# more (`seeds -largest`: seconds a run) are tried on the mutants that pass the rest.
#
# Environment:
#   MUTANTS_THRESHOLD  the lowest efficacy that passes (default 95).
#   MUTANTS_C_EACH     seconds a mutant's build, and its oracle run, may take (default 15, 4
#                      times that with the largest records; the oracle takes about a second).
#   MUTANTS_C_LOG      where each mutant's verdict goes (default bin/mutants/plugin-c.mutants).
#
# Output: gremlins' summary lines ("Killed: 140, Lived: 2, Not covered: 0", "Timed out: 0,
# Not viable: 6", "Test efficacy: 98.59%"), which hack/mutants.sh reads (its package
# plugin-c), and a line a mutant that lived or timed out:
#   LIVED plugin/criu/genid-criu.c:565: - -> +: if ((size_t)(r->end - r->p) < n) {
# Exit status: 10 under the threshold (as gremlins), 2 if the control run failed or the
# run could not be set up, 0 otherwise. docs/mutants.md ("The plugin's C code") says which
# mutants live and why.
set -u
cd "$(dirname "$0")/.." || exit 2

threshold=${MUTANTS_THRESHOLD:-95}
each=${MUTANTS_C_EACH:-15}
log=${MUTANTS_C_LOG:-bin/mutants/plugin-c.mutants}
file=plugin/criu/genid-criu.c
funcs=(take get_u8 get_u16 get_u32 get_i64 get_str get_name parse_scopes by_name name_is parse_record read_record
	put put_u8 put_u16 put_u32 put_i64 put_str8 put_str16 write_record)
control_only=
case ${1:-} in
-control) control_only=1 ;;
'') ;;
*)
	echo "usage: hack/mutants-c.sh [-control]" >&2
	exit 2
	;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/genid-mutants-c.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT
trap 'exit 143' TERM INT HUP
die() {
	echo "mutants-c: $*" >&2
	exit 2
}

# CRIU's plugin header: the host's, or the test bed's (as make fuzz-c).
mkdir -p "$work/include/criu" "$work/plugin/criu/fuzz" "$work/seeds" "$work/none" || exit 2
if [ ! -f /usr/include/criu/criu-plugin.h ]; then
	root=$(timeout 1200 hack/testbed.sh build | tail -1)
	[ -d "$root" ] || die "the test bed's build failed"
	cp "$root/usr/include/criu/criu-plugin.h" "$root/usr/include/criu/version.h" "$work/include/criu/" ||
		die "no CRIU plugin header in the test bed ($root)"
fi
cp plugin/criu/genid.h "$work/plugin/criu/" &&
	cp plugin/criu/fuzz/record_fuzz.c plugin/criu/fuzz/record_roundtrip.c "$work/plugin/criu/fuzz/" || exit 2
if ! timeout 600 go build -o "$work/seeds-cmd" ./plugin/criu/fuzz/seeds ||
	! timeout 600 go build -o "$work/mutants-cmd" ./plugin/criu/fuzz/mutants; then
	die "could not build the Go tools"
fi
timeout 120 "$work/seeds-cmd" "$work/seeds" || die "could not write the seeds"

# build writes the harness on $work/plugin/criu/genid-criu.c to $work/rt.
build() {
	rm -f "$work/rt"
	timeout -k 5 "$each" clang -std=gnu11 -O0 -w -fsanitize=address,undefined -fno-sanitize-recover=all \
		-I"$work/include" -o "$work/rt" "$work/plugin/criu/fuzz/record_roundtrip.c" >"$work/build.log" 2>&1 </dev/null
}
# oracle runs the round trip and the differential check on the corpus and the seeds;
# oracle -largest on the largest records alone (seconds), oracle -largest DIR... on both.
oracle() {
	local bound=$each dirs=("$work/seeds" plugin/criu/fuzz/corpus)
	if [ $# -gt 0 ]; then
		bound=$((4 * each)) dirs=("${@:2}")
		[ ${#dirs[@]} -gt 0 ] || dirs=("$work/none")
	fi
	TMPDIR=$work timeout -k 5 "$bound" "$work/seeds-cmd" ${1:+"$1"} -roundtrip "$work/rt" "${dirs[@]}" \
		>"$work/oracle.log" 2>&1 </dev/null
}

cp "$file" "$work/plugin/criu/genid-criu.c" || exit 2
if ! build || ! oracle -largest "$work/seeds" plugin/criu/fuzz/corpus; then
	cat "$work/build.log" "$work/oracle.log" >&2
	die "the control run failed: the unmutated code does not pass the oracle"
fi
[ -z "$control_only" ] || exit 0

"$work/mutants-cmd" "$file" "${funcs[@]}" >"$work/list" || die "could not list the mutants"
mkdir -p "$(dirname "$log")" && : >"$log" || exit 2
killed=0 lived=0 timedout=0 notviable=0
while IFS=$'\t' read -r line col orig repl fn; do
	awk -v l="$line" -v c="$col" -v o="$orig" -v r="$repl" '
		NR == l {
			if (substr($0, c, length(o)) != o) exit 3
			$0 = substr($0, 1, c - 1) r substr($0, c + length(o))
		}
		{ print }' "$file" >"$work/plugin/criu/genid-criu.c" || die "$file:$line:$col is not $orig"
	text=$(sed -n "${line}s/^[[:space:]]*//p" "$file")
	if ! build; then
		verdict="NOT VIABLE" notviable=$((notviable + 1))
	else
		# A mutant that passes is run again with the largest records.
		oracle && oracle -largest
		case $? in
		0) verdict=LIVED lived=$((lived + 1)) ;;
		124 | 137) verdict="TIMED OUT" timedout=$((timedout + 1)) ;;
		*) verdict=KILLED killed=$((killed + 1)) ;;
		esac
	fi
	printf '%s %s:%d:%d (%s): %s -> %s: %s\n' "$verdict" "$file" "$line" "$col" "$fn" "$orig" "$repl" "$text" >>"$log"
	case $verdict in
	LIVED | "TIMED OUT") printf '%s %s:%d: %s -> %s: %s\n' "$verdict" "$file" "$line" "$orig" "$repl" "$text" ;;
	esac
done <"$work/list"

efficacy=$(awk -v k="$killed" -v l="$lived" 'BEGIN { printf "%.2f", k + l ? 100 * k / (k + l) : 0 }')
echo "Killed: $killed, Lived: $lived, Not covered: 0"
echo "Timed out: $timedout, Not viable: $notviable, Skipped: 0"
echo "Test efficacy: $efficacy%"
awk -v e="$efficacy" -v t="$threshold" 'BEGIN { exit !(e < t) }' && exit 10
exit 0
