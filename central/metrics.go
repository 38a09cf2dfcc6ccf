package central

import (
	"fmt"
	"sync"
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
	rejections    *prometheus.CounterVec
	accuracy      *accuracyCollector
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
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "throttle_service_rejected_requests_total",
			Help: "Requests the edge nodes rejected for users with a limit, by service and the resource whose quota was exhausted, as reported in time for the leader's next assignment.",
		}, []string{"service", "resource"}),
		accuracy: &accuracyCollector{bounds: quota.RatioBuckets(), ratios: make(map[string]*ratioHistogram)},
	}
	for _, c := range []prometheus.Collector{m.assignSeconds, m.assignErrors, m.users, m.nodes, m.entries, m.checkpoints, m.offset, m.rejections, m.accuracy} {
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
	for _, r := range result.Accuracy.Resources {
		// Adding 0 too exports the series from the first assignment on,
		// so rate() has a starting point.
		m.rejections.WithLabelValues(r.Service, r.Resource).Add(r.Rejected)
	}
	m.accuracy.observe(result.Accuracy)
}

// clearAccuracy removes the gauges of the latest assignment, for a central
// that stops assigning, so that only the leader exports them.
func (m *allocatorMetrics) clearAccuracy() {
	m.accuracy.clear()
}

var (
	serviceAdmittedDesc = prometheus.NewDesc("throttle_service_admitted",
		"Consumption the edge nodes reported for the latest complete slot (one second), summed over the users with a limit on the resource, in the resource's unit. Leader only.",
		[]string{"service", "resource"}, nil)
	serviceLimitDesc = prometheus.NewDesc("throttle_service_limit",
		"Sum of the limits (rates, per second) of the users that consumed or were rejected on the resource in the latest complete slot; throttle_service_admitted divided by it is their admitted share. Leader only.",
		[]string{"service", "resource"}, nil)
	serviceActiveUsersDesc = prometheus.NewDesc("throttle_service_active_users",
		"Users with a limit on the resource that consumed or were rejected on it in the latest complete slot. Leader only.",
		[]string{"service", "resource"}, nil)
	reportedNodesDesc = prometheus.NewDesc("throttle_reported_nodes",
		"Edge nodes whose report of the latest complete slot had arrived when the leader assigned; the admitted and rejected amounts leave out the others. Leader only.",
		nil, nil)
	nodesWithoutQuotaDesc = prometheus.NewDesc("throttle_nodes_without_quota",
		fmt.Sprintf("Edge nodes that reported within the last %d slots but were not live in the latest assignment, so they got no quota and admit by their fallback. Leader only.", quota.Window),
		nil, nil)
	topUserRatioDesc = prometheus.NewDesc("throttle_top_user_admitted_ratio",
		"Admitted amount over the limit in the latest complete slot of the --metrics-top-users buckets with the highest ratio; a bucket that drops out of them disappears. Leader only.",
		[]string{"service", "user", "resource"}, nil)
	userRatioDesc = prometheus.NewDesc("throttle_user_admitted_ratio",
		"Admitted amount over the limit in one slot, observed once per assignment for each user and resource with a non-zero limit that consumed something in the slot before it.",
		[]string{"service"}, nil)
)

// accuracyCollector exports the quota.Accuracy of the latest assignment.
// The gauges are built from one assignment at each scrape, so a scrape
// never mixes two assignments and a bucket that leaves the top users has
// no series left behind. The ratio histogram adds up every assignment.
type accuracyCollector struct {
	// bounds are quota.RatioBuckets, the upper bounds of the counts in
	// quota.ResourceAccuracy.RatioCounts.
	bounds []float64

	mu sync.Mutex
	// latest is the accuracy of the latest assignment, or nil while this
	// central does not assign.
	latest *quota.Accuracy
	// ratios holds the cumulative ratio histogram of each service.
	ratios map[string]*ratioHistogram
}

// ratioHistogram is one service's ratio histogram: counts per bucket, the
// last one above every bound, not cumulative.
type ratioHistogram struct {
	counts []uint64
	sum    float64
}

func (c *accuracyCollector) observe(a quota.Accuracy) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.latest = &a
	for _, r := range a.Resources {
		h := c.ratios[r.Service]
		if h == nil {
			h = &ratioHistogram{counts: make([]uint64, len(c.bounds)+1)}
			c.ratios[r.Service] = h
		}
		for i, n := range r.RatioCounts {
			h.counts[i] += n
		}
		h.sum += r.RatioSum
	}
}

func (c *accuracyCollector) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.latest = nil
}

func (c *accuracyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{serviceAdmittedDesc, serviceLimitDesc, serviceActiveUsersDesc,
		reportedNodesDesc, nodesWithoutQuotaDesc, topUserRatioDesc, userRatioDesc} {
		ch <- d
	}
}

func (c *accuracyCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for service, h := range c.ratios {
		buckets := make(map[float64]uint64, len(c.bounds))
		var count uint64
		for i, bound := range c.bounds {
			count += h.counts[i]
			buckets[bound] = count
		}
		count += h.counts[len(c.bounds)]
		ch <- prometheus.MustNewConstHistogram(userRatioDesc, count, h.sum, buckets, service)
	}
	a := c.latest
	if a == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(reportedNodesDesc, prometheus.GaugeValue, float64(a.ReportedNodes))
	ch <- prometheus.MustNewConstMetric(nodesWithoutQuotaDesc, prometheus.GaugeValue, float64(a.NodesWithoutQuota))
	for _, r := range a.Resources {
		ch <- prometheus.MustNewConstMetric(serviceAdmittedDesc, prometheus.GaugeValue, r.Admitted, r.Service, r.Resource)
		ch <- prometheus.MustNewConstMetric(serviceLimitDesc, prometheus.GaugeValue, r.Limit, r.Service, r.Resource)
		ch <- prometheus.MustNewConstMetric(serviceActiveUsersDesc, prometheus.GaugeValue, float64(r.ActiveUsers), r.Service, r.Resource)
	}
	for _, u := range a.TopUsers {
		ch <- prometheus.MustNewConstMetric(topUserRatioDesc, prometheus.GaugeValue, u.Ratio, u.Service, u.User, u.Resource)
	}
}
