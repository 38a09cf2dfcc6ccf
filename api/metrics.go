package api

import (
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	forwarded     *prometheus.CounterVec
	limitWrites   *prometheus.CounterVec
	reports       *prometheus.CounterVec
	reportSeconds *prometheus.HistogramVec
	// reportWait is the time a report waited for a report worker.
	reportWait    prometheus.Histogram
	connections   prometheus.Gauge
	replyOverflow prometheus.Counter
	// rejectedInput counts requests and WebSocket frames rejected for
	// exceeding an input limit, by reason (see the reason constants).
	rejectedInput *prometheus.CounterVec
	// nodeSockets is not a metric but the per-node count of open report
	// WebSockets that MaxSocketsPerNode limits. It is kept next to the
	// connections gauge because both count the same sockets.
	nodeSockets *nodeSockets
}

func newMetrics(reg *prometheus.Registry, cluster Cluster) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "throttle_http_requests_total",
			Help: "HTTP requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "throttle_http_request_duration_seconds",
			Help:    "HTTP request handling time by route pattern and method, in seconds.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route", "method"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "throttle_forwarded_requests_total",
			Help: "Requests this follower forwarded to the leader, by outcome (ok, error).",
		}, []string{"outcome"}),
		limitWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "throttle_limit_writes_total",
			Help: "Limit changes this leader replicated, by operation (put, delete) and outcome (ok, error).",
		}, []string{"op", "outcome"}),
	}
	m.reports = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "throttle_reports_total",
		Help: "Reports received, by transport (http, websocket) and outcome (ok, duplicate, forwarded, invalid, too_large, starting, error; on WebSockets also unauthorized, forbidden, no_leader).",
	}, []string{"transport", "outcome"})
	m.reportSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "throttle_report_duration_seconds",
		Help:    "Time to answer one report, forwarding included, by transport, in seconds. The Lua client gives up after 0.2 s.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .2, .5, 1},
	}, []string{"transport"})
	m.reportWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "throttle_report_wait_seconds",
		Help:    "Time a report waited on the leader for a free report worker before it was decoded, in seconds; part of throttle_report_duration_seconds.",
		Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .2, .5, 1},
	})
	m.connections = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "throttle_websocket_connections",
		Help: "Open report WebSockets.",
	})
	m.replyOverflow = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "throttle_reply_overflow_total",
		Help: "Replies too large for one 64 KiB WebSocket frame, sent without the users with the largest quotas.",
	})
	m.rejectedInput = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "throttle_rejected_input_total",
		Help: "Requests and WebSocket frames rejected for exceeding an input limit, by reason (body_size, frame_size, name_length, services, users, resources, limit_resources, node_sockets).",
	}, []string{"reason"})
	for _, reason := range []string{reasonBodySize, reasonFrameSize, reasonNameLength, reasonServices, reasonUsers, reasonResources, reasonLimitResources, reasonNodeSockets} {
		m.rejectedInput.WithLabelValues(reason)
	}
	m.nodeSockets = newNodeSockets()
	leader := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "throttle_raft_leader",
		Help: "1 when this central is the Raft leader, else 0.",
	}, func() float64 {
		if cluster.IsLeader() {
			return 1
		}
		return 0
	})
	term := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "throttle_raft_term",
		Help: "The Raft term this central is in.",
	}, func() float64 {
		stats, err := cluster.Stats()
		if err != nil {
			return 0
		}
		return float64(stats.Term)
	})
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.forwarded, m.limitWrites, m.reports, m.reportSeconds, m.reportWait, m.connections, m.replyOverflow, m.rejectedInput, leader, term,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// instrument counts every request by its route pattern, so the label set
// stays bounded whatever paths clients send.
func (s *Server) instrument(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		code := c.Response().Status
		if err != nil {
			code = toError(err).Status
			s.countRejectedInput(err)
		}
		method := c.Request().Method
		s.metrics.requests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
		s.metrics.duration.WithLabelValues(route, method).Observe(time.Since(start).Seconds())
		return err
	}
}

// countRejectedInput counts err in throttle_rejected_input_total when it
// reports an exceeded input limit.
func (s *Server) countRejectedInput(err error) {
	if reason := rejectedInputReason(err); reason != "" {
		s.metrics.rejectedInput.WithLabelValues(reason).Inc()
	}
}
