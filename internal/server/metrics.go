package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"

	"github.com/genid-project/genid/internal/version"
	"github.com/genid-project/genid/internal/wire"
)

// The daemon's metrics, in a registry of its own. Counters and histograms
// are counted by the loop as things happen; the scopes' gauges are read
// from the loop when scraped: through the loop's queue for the listener
// (ServeMetrics), directly for OpMetrics, which the loop itself serves.
// A scope's series go with the scope, so that the series stay as few as
// the scopes. Nothing names a process or a user.
//
// The host scope's label is scope="" (its name in the protocol): every
// other name is a container scope's.

// barrierBuckets are the barrier histogram's bounds, in seconds: watchers
// ack within milliseconds, a stuck one holds the barrier for good.
var barrierBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

type metrics struct {
	bumps    *prometheus.CounterVec
	refusals *prometheus.CounterVec
	barriers *prometheus.HistogramVec
	hooks    *prometheus.CounterVec

	// served is gathered by the listener's goroutines, onLoop by the loop
	// (OpMetrics), with loopScopes taken just before.
	served, onLoop *prometheus.Registry
	loopScopes     []scopeGauge
}

// scopeGauge is a scope's state when scraped.
type scopeGauge struct {
	name               string
	generation         uint32
	watchers, outdated int
	restoring          bool
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		bumps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genid_bumps_total",
			Help: "Bumps of a scope's generation, by reason: vmgenid or vmclock (a backend saw the VM restored), criu-restore, admin (the admin socket), or what the daemon's own caller gave.",
		}, []string{"scope", "reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genid_refusals_total",
			Help: "Requests and connections refused, by result code (PROTOCOL.md), on the admin socket (socket=\"admin\", scope=\"\") or a scope's (socket=\"scope\").",
		}, []string{"socket", "scope", "code"}),
		barriers: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "genid_barrier_seconds",
			Help:    "Time from a bump that made watchers outdated until none was (a bump superseded before that is not counted).",
			Buckets: barrierBuckets,
		}, []string{"scope"}),
		hooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "genid_hook_runs_total",
			Help: "After-restore hook runs, by hook and result: ok, failed, timeout, not_run (refused or not started), skipped (too many queued; hook=\"\").",
		}, []string{"hook", "result"}),
		served: prometheus.NewRegistry(),
		onLoop: prometheus.NewRegistry(),
	}
	info := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "genid_build_info",
		Help:        "The daemon's version, as a label; always 1.",
		ConstLabels: prometheus.Labels{"version": version.String()},
	}, func() float64 { return 1 })
	for _, reg := range []*prometheus.Registry{m.served, m.onLoop} {
		reg.MustRegister(m.bumps, m.refusals, m.barriers, m.hooks, info,
			collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m.served.MustRegister(scopesCollector{func() []scopeGauge {
		var out []scopeGauge
		if err := s.do(func() { out = s.scopeGauges() }); err != nil {
			return nil // stopped: no scopes to tell of
		}
		return out
	}})
	m.onLoop.MustRegister(scopesCollector{func() []scopeGauge { return m.loopScopes }})
	return m
}

// scopeGauges reads every scope's state. Runs on the loop.
func (s *Server) scopeGauges() []scopeGauge {
	var out []scopeGauge
	for _, st := range s.scopeOrder() {
		out = append(out, scopeGauge{name: st.name, generation: st.core.Generation(),
			watchers: st.core.Len(), outdated: st.core.Outdated(), restoring: st.restoring()})
	}
	return out
}

var (
	descGeneration = prometheus.NewDesc("genid_generation", "A scope's generation.", []string{"scope"}, nil)
	descWatchers   = prometheus.NewDesc("genid_watchers", "A scope's watchers.", []string{"scope"}, nil)
	descOutdated   = prometheus.NewDesc("genid_outdated_watchers", "A scope's watchers that have not acked its generation.", []string{"scope"}, nil)
	descRestoring  = prometheus.NewDesc("genid_scope_restoring", "1 while a CRIU restore of the scope is under way.", []string{"scope"}, nil)
)

// scopesCollector turns the scopes' state into gauges when scraped.
type scopesCollector struct{ read func() []scopeGauge }

func (c scopesCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descGeneration
	ch <- descWatchers
	ch <- descOutdated
	ch <- descRestoring
}

func (c scopesCollector) Collect(ch chan<- prometheus.Metric) {
	for _, g := range c.read() {
		restoring := 0.0
		if g.restoring {
			restoring = 1
		}
		ch <- prometheus.MustNewConstMetric(descGeneration, prometheus.GaugeValue, float64(g.generation), g.name)
		ch <- prometheus.MustNewConstMetric(descWatchers, prometheus.GaugeValue, float64(g.watchers), g.name)
		ch <- prometheus.MustNewConstMetric(descOutdated, prometheus.GaugeValue, float64(g.outdated), g.name)
		ch <- prometheus.MustNewConstMetric(descRestoring, prometheus.GaugeValue, restoring, g.name)
	}
}

// bumped counts a bump: by its backend's name (or the daemon's caller's
// reason), criu-restore, or admin; an administrator's own reason text is
// the history's, not a label, so the series stay few.
func (m *metrics) bumped(st *scopeState, why cause) {
	reason := why.reason
	switch why.by {
	case byAdmin:
		reason = "admin"
	case byRestore:
		reason = "criu-restore"
	}
	m.bumps.WithLabelValues(st.name, reason).Inc()
}

func (m *metrics) barrier(st *scopeState, took time.Duration) {
	m.barriers.WithLabelValues(st.name).Observe(took.Seconds())
}

func (m *metrics) hookRan(name, result string) {
	m.hooks.WithLabelValues(name, result).Inc()
}

// forget drops a removed scope's series.
func (m *metrics) forget(st *scopeState) {
	m.bumps.DeletePartialMatch(prometheus.Labels{"scope": st.name})
	m.barriers.DeletePartialMatch(prometheus.Labels{"scope": st.name})
	m.refusals.DeletePartialMatch(prometheus.Labels{"socket": "scope", "scope": st.name})
}

// refused counts a refusal of c's request, or of c itself at connect.
func (s *Server) refused(c *conn, code wire.Status) {
	socket, name := "admin", ""
	if !c.admin {
		socket, name = "scope", c.scope.name
	}
	s.obs.metrics.refusals.WithLabelValues(socket, name, codeLabel(code)).Inc()
}

// codeLabel is a result code's name in PROTOCOL.md, as a label value.
func codeLabel(code wire.Status) string {
	switch code {
	case wire.StatusStale:
		return "stale"
	case wire.StatusPermission:
		return "permission"
	case wire.StatusOverflow:
		return "overflow"
	case wire.StatusLimit:
		return "limit"
	case wire.StatusVersion:
		return "version"
	case wire.StatusExists:
		return "exists"
	}
	return strings.ReplaceAll(code.String(), " ", "_")
}

// metricsText is OpMetrics: the exposition text of every metric. Runs on
// the loop.
func (s *Server) metricsText() ([]byte, error) {
	m := s.obs.metrics
	m.loopScopes = s.scopeGauges()
	defer func() { m.loopScopes = nil }()
	mfs, err := m.onLoop.Gather()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// ServeMetrics serves the metrics over HTTP on ln (GET /metrics), until the
// daemon stops. Call it before Serve.
func (s *Server) ServeMetrics(ln net.Listener) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.obs.metrics.served, promhttp.HandlerOpts{}))
	// A request started must be finished in time, as a frame must.
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: s.cfg.FrameTimeout, MaxHeaderBytes: 8 << 10}
	s.Go(func(ctx context.Context) {
		stop := context.AfterFunc(ctx, func() { hs.Close() })
		defer stop()
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics listener failed", "addr", ln.Addr().String(), "err", err)
		}
	})
	s.log.Info("metrics", "listen", fmt.Sprintf("%s:%s", ln.Addr().Network(), ln.Addr().String()))
}
