package central

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/throttlecentral/throttle-central/quota"
)

// allocatorMetrics are the leader's allocation metrics.
type allocatorMetrics struct {
	assignSeconds prometheus.Histogram
	assignErrors  prometheus.Counter
	users         prometheus.Gauge
	nodes         prometheus.Gauge
	entries       prometheus.Gauge
	checkpoints   *prometheus.CounterVec
	offset        *prometheus.GaugeVec
}

func newAllocatorMetrics(reg prometheus.Registerer) (*allocatorMetrics, error) {
	m := &allocatorMetrics{
		assignSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "throttle_assign_duration_seconds",
			Help:    "Time one per-slot assignment took on the leader, in seconds; it must stay well under half a second.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .2, .3, .5, 1},
		}),
		assignErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "throttle_assign_errors_total",
			Help: "Per-slot assignments that failed on the leader.",
		}),
		users: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "throttle_assigned_users",
			Help: "Users with a limit that got quota in the latest assignment.",
		}),
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "throttle_live_nodes",
			Help: "Edge nodes counted live in the latest assignment.",
		}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "throttle_quota_entries",
			Help: "(node, user) quota entries published by the latest assignment.",
		}),
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "throttle_checkpoint_applies_total",
			Help: "Bucket checkpoints the leader replicated through Raft, by outcome (ok, error).",
		}, []string{"outcome"}),
		offset: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "throttle_node_clock_offset_seconds",
			Help: "Whole seconds to add to an edge node's slot numbers to get the leader's, from its latest report.",
		}, []string{"node"}),
	}
	for _, c := range []prometheus.Collector{m.assignSeconds, m.assignErrors, m.users, m.nodes, m.entries, m.checkpoints, m.offset} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *allocatorMetrics) observeAssign(result quota.AssignResult, err error, took time.Duration) {
	m.assignSeconds.Observe(took.Seconds())
	if err != nil {
		m.assignErrors.Inc()
		return
	}
	m.users.Set(float64(result.Users))
	m.nodes.Set(float64(result.Nodes))
	m.entries.Set(float64(result.Entries))
}
