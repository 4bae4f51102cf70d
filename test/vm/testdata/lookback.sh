# shellcheck shell=sh
# Guest side of TestLookback*: a daemon runs, bumps, and is stopped; the VM
# is saved while no daemon runs (the host waits for GENID-STOPPED) and
# restored; then a daemon starts again and heartbeats tell what it did.
export PATH=/bin:/sbin
# vmclock prints the VMClock page's fields, if the machine has the device
# (struct vmclock_abi: seq_count u32 at 12, disruption_marker u64 at 16,
# flags u64 at 24, vm_generation_counter u64 at 104; little endian).
vmclock() {
	[ -e /dev/vmclock0 ] || return 0
	f() { od -A n -t "u$2" -j "$1" -N "$2" /dev/vmclock0 | tr -d ' '; }
	echo "GENID-VMCLOCK seq=$(f 12 4) disruption=$(f 16 8) flags=$(f 24 8) counter=$(f 104 8)"
}
sleep 100000 &
owner=$!
genidctl daemon --log-level debug >/tmp/daemon1.log 2>&1 &
daemon=$!
while [ ! -S /run/genid/genid.sock ]; do sleep 0.1; done
genidctl bump --reason before >/dev/null
genidctl bump --reason before >/dev/null
genidctl scope create --start 10 --pid "$owner" c1 >/dev/null
# Its backends have looked back once the state holds their marks.
while ! grep -q kmsg_seq /var/lib/genid/*/marks.json 2>/dev/null; do sleep 0.1; done
echo "GENID-UP backends=$(genidctl status --json | tr -d ' \n' | grep -o '"backends":\[[^]]*\]')"
grep 'backend off' /tmp/daemon1.log | sed 's/^/GENID-LOG /'
# Named, a backend the device cannot serve fails when the daemon starts,
# saying why, and the daemon goes on without it.
if [ -e /dev/vmclock0 ]; then
	mkdir -p /tmp/named
	timeout 3 genidctl --run-dir /tmp/named daemon --backends vmclock --state-dir none >/tmp/named.log 2>&1
	echo "GENID-NAMED exit=$? $(tr '\n' ' ' </tmp/named.log)"
fi
vmclock
kill -TERM "$daemon"
wait "$daemon"
echo "GENID-STOPPED gen=$(genidctl get)"
# The host saves the VM now; a restored one goes on from here.
n=0
while [ $n -lt 24 ]; do
	n=$((n + 1))
	echo "GENID-DOWN $n"
	sleep 0.5
done
vmclock
genidctl daemon --log-level debug >/tmp/daemon2.log 2>&1 &
while [ ! -S /run/genid/genid.sock ]; do sleep 0.1; done
n=0
while :; do
	n=$((n + 1))
	st=$(genidctl status --json | tr -d ' \n')
	gen=$(echo "$st" | grep -o '"generation":[0-9]*' | head -n1 | cut -d: -f2)
	reason=$(echo "$st" | grep -o '"reason":"[^"]*"' | cut -d'"' -f4)
	echo "GENID-HB $n gen=$gen reason=$reason scope=$(genidctl get --scope c1)"
	sleep 0.5
done
