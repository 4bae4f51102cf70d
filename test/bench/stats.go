package main

import (
	"math"
	"math/rand/v2"
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

// ratioCI is a 95% percentile-bootstrap interval of median(a) / median(b),
// resampling pairs: a[i] and b[i] were taken side by side (interleaved), so
// drift of the machine moves both. a and b have the same length.
func ratioCI(a, b []float64) [2]float64 {
	const resamples = 4000
	n := len(a)
	if n == 0 || len(b) != n {
		return [2]float64{math.NaN(), math.NaN()}
	}
	rng := rand.New(rand.NewPCG(1, 2)) // the same data give the same interval
	ra, rb := make([]float64, n), make([]float64, n)
	ratios := make([]float64, resamples)
	for k := range ratios {
		for i := range n {
			j := rng.IntN(n)
			ra[i], rb[i] = a[j], b[j]
		}
		ratios[k] = median(ra) / median(rb)
	}
	slices.Sort(ratios)
	return [2]float64{ratios[resamples*25/1000], ratios[resamples*975/1000-1]}
}

// median sorts s in place and returns its median.
func median(s []float64) float64 {
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
