# shellcheck shell=sh
# Guest side of test/vm, run by the initramfs's /init with busybox sh; its
# output is the serial console, which the test reads.
export PATH=/bin:/sbin
genidctl daemon --log-level debug >/tmp/daemon.log 2>&1 &
while [ ! -S /run/genid/genid.sock ]; do sleep 0.1; done
genidctl watch >/tmp/watch.out 2>/tmp/watch.err &
# A thread asleep on the page (a futex the daemon wakes), no connection.
genidctl watch --page >/tmp/pwatch.out 2>/tmp/pwatch.err &
while [ "$(genidctl status --json | grep -c '"pid"')" != 1 ]; do sleep 0.1; done
# A container's scope, as genid's hook makes one, and a watcher of it: a VM
# restore must bump it too.
genidctl scope create --start 10 c1 >/dev/null
genidctl watch --scope c1 >/tmp/swatch.out 2>/tmp/swatch.err &
while [ "$(genidctl status --scope c1 --json | grep -c '"pid"')" != 1 ]; do sleep 0.1; done
echo "GENID-READY backends=$(genidctl status --json | tr -d ' \n' | grep -o '"backends":\[[^]]*\]')"

# Numbered heartbeats: output the guest had not yet sent when it was saved
# shows up again in a clone's log, so the test only trusts numbers it has
# not seen before the save.
# Each heartbeat reads what follows a bump before what leads it: the
# watcher's output, then the page, then one status for the generation and
# the reason together. A bump landing between the reads shows as the
# watcher or the page lagging behind the daemon, never as a generation
# without its reason or a watcher ahead of the daemon.
n=0
while :; do
	n=$((n + 1))
	watch=$(tr '\n' ',' </tmp/watch.out)
	swatch=$(tr '\n' ',' </tmp/swatch.out)
	pwatch=$(tr '\n' ',' </tmp/pwatch.out)
	scope=$(genidctl get --scope c1)
	page=$(genidctl get)
	st=$(genidctl status --json | tr -d ' \n')
	gen=$(echo "$st" | grep -o '"generation":[0-9]*' | head -n1 | cut -d: -f2)
	reason=$(echo "$st" | grep -o '"reason":"[^"]*"' | cut -d'"' -f4)
	echo "GENID-HB $n gen=$gen page=$page watch=$watch reason=$reason scope=$scope swatch=$swatch pwatch=$pwatch"
	sleep 0.5
done
