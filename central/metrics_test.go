package central

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
)

// parseMetrics returns every sample of a Prometheus text exposition by its
// series as written there, name{label="value",...}, with the labels in
// name order.
func parseMetrics(t testing.TB, body string) map[string]float64 {
	t.Helper()
	samples := make(map[string]float64)
	for line := range strings.SplitSeq(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		value, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("metrics line %q has no value: %v", line, err)
		}
		samples[line[:i]] = value
	}
	return samples
}

// scrapeMetrics fetches GET /metrics of the central at addr.
func scrapeMetrics(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	status, body := request(t, http.MethodGet, addr, "/metrics", nil)
	if status != http.StatusOK {
		t.Fatalf("GET /metrics on %s: status %d, body %s", addr, status, body)
	}
	return parseMetrics(t, string(body))
}

// gatherMetrics returns the samples of reg in the text exposition.
func gatherMetrics(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return parseMetrics(t, rec.Body.String())
}

// seriesNamed returns the series of samples whose name is name.
func seriesNamed(samples map[string]float64, name string) []string {
	var out []string
	for series := range samples {
		if series == name || strings.HasPrefix(series, name+"{") {
			out = append(out, series)
		}
	}
	return out
}

// missingSamples lists the samples of want that samples lacks or holds
// with another value, or "" when every one matches.
func missingSamples(samples, want map[string]float64) string {
	var problems []string
	for series, value := range want {
		got, ok := samples[series]
		switch {
		case !ok:
			problems = append(problems, series+" missing")
		case got != value:
			problems = append(problems, fmt.Sprintf("%s = %v, want %v", series, got, value))
		}
	}
	return strings.Join(problems, "; ")
}

// slotReporter posts the reports of each second once, when polled in that
// second, as an edge node does about 50 ms into it.
type slotReporter struct {
	t       testing.TB
	addr    string
	sent    int64
	reports func(slot int64) []protocol.Report
}

func (r *slotReporter) sendDue() {
	r.t.Helper()
	slot := time.Now().Unix()
	if slot == r.sent {
		return
	}
	r.sent = slot
	for _, report := range r.reports(slot) {
		if status, body := request(r.t, http.MethodPost, r.addr, "/v1/report", report); status != http.StatusOK {
			r.t.Fatalf("report of %s for slot %d: status %d, body %s", report.NodeID, slot, status, body)
		}
	}
}

func TestMetricsShowAccuracyOfRealSlots(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 10 s of real slots")
	}
	registry := prometheus.NewRegistry()
	n := startNodeWith(t, "c1", true, nil, func(cfg *Config) {
		cfg.MetricsTopUsers = 1
		cfg.Registry = registry
	})
	waitForCluster(t, []*testNode{n})
	addr := n.c.HTTPAddr()
	waitForQuotaEngine(t, http.DefaultClient, "http://"+addr)
	for _, user := range []string{"alice", "bob"} {
		if status, body := putLimit(t, addr, "front", user, 1000); status != http.StatusOK {
			t.Fatalf("PUT limit of %s: status %d, body %s", user, status, body)
		}
	}

	// edge-1 serves alice, 600 of her 1000 per second, with 2 rejections.
	// From phase 2 on it serves bob too, 900 of 1000. edge-2 reports no
	// users until phase 3, when it stops reporting.
	phase := 1
	reporter := &slotReporter{t: t, addr: addr, reports: func(slot int64) []protocol.Report {
		edge1 := protocol.Report{NodeID: "edge-1", Slot: slot,
			Consumption: protocol.Counts{"front": {"alice": {"traffic_up": 600}}},
			Rejection:   protocol.Counts{"front": {"alice": {"traffic_up": 2}}}}
		if phase >= 2 {
			edge1.Consumption["front"]["bob"] = map[string]float64{"traffic_up": 900}
		}
		if phase >= 3 {
			return []protocol.Report{edge1}
		}
		edge2 := protocol.Report{NodeID: "edge-2", Slot: slot,
			Consumption: protocol.Counts{"front": {}}, Rejection: protocol.Counts{"front": {}}}
		return []protocol.Report{edge1, edge2}
	}}

	const (
		admitted    = `throttle_service_admitted{resource="traffic_up",service="front"}`
		limit       = `throttle_service_limit{resource="traffic_up",service="front"}`
		activeUsers = `throttle_service_active_users{resource="traffic_up",service="front"}`
		rejected    = `throttle_service_rejected_requests_total{resource="traffic_up",service="front"}`
		topAlice    = `throttle_top_user_admitted_ratio{resource="traffic_up",service="front",user="alice"}`
		topBob      = `throttle_top_user_admitted_ratio{resource="traffic_up",service="front",user="bob"}`
		ratioLow    = `throttle_user_admitted_ratio_bucket{service="front",le="0.5"}`
		ratioAlice  = `throttle_user_admitted_ratio_bucket{service="front",le="0.8"}`
		ratioCount  = `throttle_user_admitted_ratio_count{service="front"}`
		ratioAll    = `throttle_user_admitted_ratio_bucket{service="front",le="+Inf"}`
	)

	var samples map[string]float64
	waitFor(t, "the accuracy of a slot with alice's reports", func() string {
		reporter.sendDue()
		samples = scrapeMetrics(t, addr)
		// bob consumed nothing, so his limit is not counted.
		return missingSamples(samples, map[string]float64{
			admitted:                       600,
			limit:                          1000,
			activeUsers:                    1,
			topAlice:                       0.6,
			"throttle_reported_nodes":      2,
			"throttle_nodes_without_quota": 0,
		})
	})
	if got := samples[rejected]; got < 2 {
		t.Errorf("%s = %v, want at least the 2 rejections of one slot", rejected, got)
	}
	if got := samples[ratioAlice]; got < 1 {
		t.Errorf("%s = %v, want at least 1 observation of alice's 0.6", ratioAlice, got)
	}
	if got := samples[ratioLow]; got != 0 {
		t.Errorf("%s = %v, want 0: no user admitted half its limit or less", ratioLow, got)
	}
	if samples[ratioCount] != samples[ratioAll] {
		t.Errorf("%s = %v differs from %s = %v", ratioCount, samples[ratioCount], ratioAll, samples[ratioAll])
	}

	phase = 2
	waitFor(t, "bob to replace alice as the top user", func() string {
		reporter.sendDue()
		samples = scrapeMetrics(t, addr)
		if _, ok := samples[topAlice]; ok {
			return "alice is still a top user"
		}
		return missingSamples(samples, map[string]float64{admitted: 1500, limit: 2000, activeUsers: 2, topBob: 0.9})
	})
	if top := seriesNamed(samples, "throttle_top_user_admitted_ratio"); len(top) != 1 {
		t.Errorf("top-user series %v, want only bob's with --metrics-top-users 1", top)
	}

	phase = 3
	waitFor(t, "edge-2 to count as without quota", func() string {
		reporter.sendDue()
		samples = scrapeMetrics(t, addr)
		return missingSamples(samples, map[string]float64{"throttle_nodes_without_quota": 1, "throttle_reported_nodes": 1, admitted: 1500})
	})

	// A central that stops assigning exports no accuracy gauges, so that
	// only the leader does; the histogram and the counter keep their counts.
	n.stop(t)
	samples = gatherMetrics(t, registry)
	for _, name := range []string{"throttle_service_admitted", "throttle_service_limit", "throttle_service_active_users",
		"throttle_reported_nodes", "throttle_nodes_without_quota", "throttle_top_user_admitted_ratio"} {
		if series := seriesNamed(samples, name); len(series) != 0 {
			t.Errorf("after the central stopped: %v still exported", series)
		}
	}
	if samples[ratioCount] == 0 || samples[rejected] == 0 {
		t.Errorf("after the central stopped: %s = %v and %s = %v, want the counts kept", ratioCount, samples[ratioCount], rejected, samples[rejected])
	}
}

// accuracyResult returns an assignment result whose accuracy has one
// resource, front/traffic_up, and the given top users.
func accuracyResult(slot int64, top ...quota.UserAccuracy) quota.AssignResult {
	counts := make([]uint64, len(quota.RatioBuckets())+1)
	var sum float64
	for _, u := range top {
		sum += u.Ratio
	}
	counts[1] = uint64(len(top)) // every ratio below is in (0.5, 0.8]
	return quota.AssignResult{Slot: slot + 2, Accuracy: quota.Accuracy{
		Slot:          slot - 1,
		ReportedNodes: 2,
		Resources: []quota.ResourceAccuracy{{
			Service: "front", Resource: "traffic_up", ActiveUsers: len(top),
			Admitted: 100, Limit: 200, Rejected: 3, RatioCounts: counts, RatioSum: sum,
		}},
		TopUsers: top,
	}}
}

func TestTopUserGaugeDropsUsersOutOfTop(t *testing.T) {
	registry := prometheus.NewRegistry()
	m, err := newAllocatorMetrics(registry)
	if err != nil {
		t.Fatalf("newAllocatorMetrics: %v", err)
	}
	top := func(user string, ratio float64) quota.UserAccuracy {
		return quota.UserAccuracy{Service: "front", User: user, Resource: "traffic_up", Ratio: ratio}
	}
	series := func(user string) string {
		return `throttle_top_user_admitted_ratio{resource="traffic_up",service="front",user="` + user + `"}`
	}

	m.observeAssign(accuracyResult(100, top("alice", 0.7), top("bob", 0.6)), nil, time.Millisecond)
	samples := gatherMetrics(t, registry)
	if problem := missingSamples(samples, map[string]float64{series("alice"): 0.7, series("bob"): 0.6}); problem != "" {
		t.Errorf("after the first assignment: %s", problem)
	}

	m.observeAssign(accuracyResult(101, top("carol", 0.75)), nil, time.Millisecond)
	samples = gatherMetrics(t, registry)
	if got := seriesNamed(samples, "throttle_top_user_admitted_ratio"); len(got) != 1 || samples[series("carol")] != 0.75 {
		t.Errorf("after carol replaced alice and bob: top-user series %v, want only carol's at 0.75", got)
	}

	// A failed assignment changes none of the accuracy metrics.
	m.observeAssign(quota.AssignResult{}, errors.New("assignment failed"), time.Millisecond)
	samples = gatherMetrics(t, registry)
	if samples[series("carol")] != 0.75 {
		t.Errorf("after a failed assignment: carol's series %v, want 0.75 kept", samples[series("carol")])
	}

	// The gauges show the latest assignment; the counter and the histogram
	// add up both.
	want := map[string]float64{
		`throttle_service_admitted{resource="traffic_up",service="front"}`:                100,
		`throttle_service_limit{resource="traffic_up",service="front"}`:                   200,
		`throttle_service_active_users{resource="traffic_up",service="front"}`:            1,
		`throttle_service_rejected_requests_total{resource="traffic_up",service="front"}`: 6,
		`throttle_user_admitted_ratio_bucket{service="front",le="0.5"}`:                   0,
		`throttle_user_admitted_ratio_bucket{service="front",le="0.8"}`:                   3,
		`throttle_user_admitted_ratio_bucket{service="front",le="+Inf"}`:                  3,
		`throttle_user_admitted_ratio_count{service="front"}`:                             3,
		`throttle_reported_nodes`:      2,
		`throttle_nodes_without_quota`: 0,
	}
	if problem := missingSamples(samples, want); problem != "" {
		t.Errorf("after two assignments: %s", problem)
	}
	if got := samples[`throttle_user_admitted_ratio_sum{service="front"}`]; got < 2.05-1e-9 || got > 2.05+1e-9 {
		t.Errorf("throttle_user_admitted_ratio_sum = %v, want 0.7 + 0.6 + 0.75 = 2.05", got)
	}

	m.clearAccuracy()
	samples = gatherMetrics(t, registry)
	if got := seriesNamed(samples, "throttle_top_user_admitted_ratio"); len(got) != 0 {
		t.Errorf("after clearAccuracy: top-user series %v, want none", got)
	}
	if got := seriesNamed(samples, "throttle_service_admitted"); len(got) != 0 {
		t.Errorf("after clearAccuracy: %v, want none", got)
	}
	if got := samples[`throttle_user_admitted_ratio_count{service="front"}`]; got != 3 {
		t.Errorf("after clearAccuracy: ratio count %v, want the 3 observations kept", got)
	}
}
