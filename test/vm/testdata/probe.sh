# shellcheck shell=sh
# Guest side of TestBreakpointProbe: the probe of hack/testbed.sh, twice.
/bin/hwbp-probe; echo "PROBE-RC $?"
/bin/hwbp-probe spin; echo "PROBE-SPIN-RC $?"
