package main

import (
	"math"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Stat summarises the samples of one series: each sample is one run (or one
// round) of the figure.
type Stat struct {
	Unit    string    `json:"unit"`
	Median  float64   `json:"median"`
	P99     float64   `json:"p99"`
	N       int       `json:"n"`
	Samples []float64 `json:"samples"`
}

func summarise(unit string, samples []float64) Stat {
	s := slices.Clone(samples)
	slices.Sort(s)
	st := Stat{Unit: unit, N: len(s), Samples: samples}
	if len(s) == 0 {
		st.Median, st.P99 = math.NaN(), math.NaN()
		return st
	}
	if len(s)%2 == 1 {
		st.Median = s[len(s)/2]
	} else {
		st.Median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	// Nearest rank: with fewer than 100 samples, p99 is the largest.
	st.P99 = s[int(math.Ceil(0.99*float64(len(s))))-1]
	return st
}

// mono reads CLOCK_MONOTONIC in ns, the clock the waiters helper stamps with.
func mono() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

func since(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() }
