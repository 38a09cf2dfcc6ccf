//go:build linux

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	skewService  = "front"
	skewUser     = "skewed"
	skewResource = "traffic_up"
	// skewLimit is the user's limit and burst: with the burst equal to the
	// limit, the quotas of one second can add up to at most the limit, so
	// any extra refill would show.
	skewLimit = 1e6
	// skewDemand is each node's demand per second, so the three nodes ask
	// for three times the limit.
	skewDemand = skewLimit
)

// TestClockSkewAndReplays runs three edge nodes with the same demand, one
// with a correct clock, one 3 s ahead and one 2 s behind. Every reply
// must key its quotas by the node's own next slot, and no second may hand
// out more than the limit. The skewed nodes must get the same quotas as
// the correct one, and the leader must count each node's report exactly
// once per second. The test then replays reports, of the current second
// and of three seconds before: each must get a reply marked duplicate,
// map onto the second it was first sent for, and change no sum. The long
// form observes 20 seconds instead of 5.
func TestClockSkewAndReplays(t *testing.T) {
	requireBinaries(t)
	c := newCluster(t, clusterOptions{})
	c.mustPutLimit(0, skewService, skewUser, skewResource, skewLimit, skewLimit)

	f := &fleet{c: c, service: skewService, user: skewUser, resource: skewResource, requestSize: skewDemand / 100}
	f.edges = []*simEdge{
		f.newEdge("edge-correct", 0, skewDemand, 0),
		f.newEdge("edge-ahead", 3, skewDemand, 1),
		f.newEdge("edge-behind", -2, skewDemand, 2),
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { f.run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})

	// A window of seconds, or a replay, that a leader change or a late
	// report disturbed cannot show how skew is handled, so it is observed
	// again, up to maxWindows times.
	const maxWindows = 3
	for attempt := 1; ; attempt++ {
		waitForEvenQuotas(t, f)
		leader, term := c.waitForLeader(c.indices(), startTimeout)
		first := time.Now().Unix() + 1
		last := first + int64(pick(5, 20)) - 1
		// The counts of second last arrive with the reports of last+1.
		time.Sleep(time.Until(time.Unix(last+1, int64(reportWindow))))
		disturbance := windowDisturbance(c, f, leader, term, first, last+1)
		if disturbance == "" {
			checkSkewedReplies(t, f, first, last+1)
			checkQuotasPerSecond(t, f, first, last)
			checkCountedOnce(t, c, f, first, last)
			break
		}
		if attempt == maxWindows {
			t.Fatalf("all %d windows were disturbed, the last (seconds %d to %d) by: %s; the machine may be too loaded for this test's timing", maxWindows, first, last, disturbance)
		}
		t.Logf("seconds %d to %d do not count: %s; observing another window", first, last, disturbance)
	}
	for attempt := 1; ; attempt++ {
		disturbance := checkReplays(t, c, f)
		if disturbance == "" {
			break
		}
		if attempt == maxWindows {
			t.Fatalf("all %d replay rounds were disturbed, the last by: %s; the machine may be too loaded for this test's timing", maxWindows, disturbance)
		}
		t.Logf("the replay round does not count: %s; replaying again", disturbance)
	}
}

// waitForEvenQuotas waits until the nodes' quotas settle. A new user's
// split swings for about ten seconds before it does, because the quotas
// of a second follow the reports of three seconds before. It waits until
// four seconds in a row gave the nodes quotas within 5% of each other.
func waitForEvenQuotas(t *testing.T, f *fleet) {
	t.Helper()
	reason, ok := pollUntil(40*time.Second, func() (bool, string) {
		now := time.Now().Unix()
		for slot := now - 3; slot <= now; slot++ {
			if diff := quotaSpread(f, slot); diff > 0.05 {
				return false, fmt.Sprintf("second %d: the quotas differ by %.1f%%", slot, 100*diff)
			}
		}
		return true, ""
	})
	if !ok {
		t.Fatalf("the nodes' quotas did not settle within 40 s: %s", reason)
	}
}

// lateReport is how far into its second a report may be sent and still
// count in a window. The central maps a report that arrives more than
// about 550 ms into the second onto the next second, whatever the
// node's clock.
const lateReport = 400 * time.Millisecond

// windowDisturbance returns why the seconds [first, last] cannot show
// how skew is handled, or "": the leader or its term changed, or a node's
// report got no reply or was sent late.
func windowDisturbance(c *cluster, f *fleet, leader string, term uint64, first, last int64) string {
	now, nowTerm, reason := c.leaderOf(c.indices())
	if now != leader || nowTerm != term {
		return fmt.Sprintf("the leader changed from %s in term %d to %q in term %d %s", leader, term, now, nowTerm, reason)
	}
	for _, e := range f.edges {
		if problem := e.reportProblem(first, last); problem != "" {
			return problem
		}
	}
	return ""
}

// reportProblem returns the first report of the real seconds
// [first, last] that got no reply or was sent late, or "".
func (e *simEdge) reportProblem(first, last int64) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	for slot := first; slot <= last; slot++ {
		local := slot + e.skew
		if _, ok := e.replies[local]; !ok {
			return fmt.Sprintf("%s got no reply to its report of second %d", e.id, slot)
		}
		if into := e.sentAt[local].Sub(time.Unix(slot, 0)); into > lateReport {
			return fmt.Sprintf("%s sent its report of second %d %v into the second", e.id, slot, into.Round(time.Millisecond))
		}
	}
	return ""
}

// quotaSpread returns the largest difference between a node's quota for
// the real second slot and the first node's, relative to the first
// node's. It is +Inf when a node holds no quota.
func quotaSpread(f *fleet, slot int64) float64 {
	quotas := make([]float64, len(f.edges))
	for k, e := range f.edges {
		e.mu.Lock()
		q, ok := e.quotas[slot+e.skew]
		e.mu.Unlock()
		if !ok || q <= 0 {
			return math.Inf(1)
		}
		quotas[k] = q
	}
	spread := 0.0
	for _, q := range quotas[1:] {
		spread = max(spread, math.Abs(q-quotas[0])/quotas[0])
	}
	return spread
}

// checkSkewedReplies checks every reply of the reports sent in
// [first, last]: the quotas are keyed by the node's slot + 1 only, and the
// offset is the node's clock error.
func checkSkewedReplies(t *testing.T, f *fleet, first, last int64) {
	t.Helper()
	for _, e := range f.edges {
		e.mu.Lock()
		for slot := first; slot <= last; slot++ {
			local := slot + e.skew
			reply, ok := e.replies[local]
			if !ok {
				t.Errorf("%s: no reply to its report of slot %d (real second %d)", e.id, local, slot)
				continue
			}
			want := strconv.FormatInt(local+1, 10)
			var keys []string
			for key := range reply.Quotas[skewService] {
				keys = append(keys, key)
			}
			if len(keys) != 1 || keys[0] != want {
				t.Errorf("%s: the reply to slot %d keys its quotas by %v, want only %s (the node's next slot)", e.id, local, keys, want)
			}
			if reply.Slot != local+1 {
				t.Errorf("%s: the reply to slot %d has slot %d, want %d", e.id, local, reply.Slot, local+1)
			}
			if reply.CentralSlot != slot+1 {
				t.Errorf("%s: the reply to slot %d has central_slot %d, want %d", e.id, local, reply.CentralSlot, slot+1)
			}
			if reply.Offset != -e.skew {
				t.Errorf("%s: the reply to slot %d has offset %d, want %d", e.id, local, reply.Offset, -e.skew)
			}
		}
		e.mu.Unlock()
	}
}

// checkQuotasPerSecond checks that the quotas of every second in
// [first, last] add up to at most the limit and that each skewed node
// got the same quota as the node with the correct clock, within 10%.
func checkQuotasPerSecond(t *testing.T, f *fleet, first, last int64) {
	t.Helper()
	var lines []string
	maxRatio, maxDiff := 0.0, 0.0
	for slot := first; slot <= last; slot++ {
		s := f.second(slot)
		ratio := s.quotaSum / skewLimit
		maxRatio = max(maxRatio, ratio)
		if ratio > 1+1e-9 {
			t.Errorf("second %d: the quotas add up to %.6f x the limit, want at most 1 because the burst is the limit", slot, ratio)
		}
		quotas := make([]float64, len(f.edges))
		for k, e := range f.edges {
			e.mu.Lock()
			quotas[k] = e.quotas[slot+e.skew]
			e.mu.Unlock()
		}
		for k := 1; k < len(f.edges); k++ {
			diff := math.Abs(quotas[k]-quotas[0]) / quotas[0]
			maxDiff = max(maxDiff, diff)
			if diff > 0.1 {
				t.Errorf("second %d: %s got quota %.0f and %s %.0f, want them within 10%% of each other", slot, f.edges[k].id, quotas[k], f.edges[0].id, quotas[0])
			}
		}
		lines = append(lines, fmt.Sprintf("second %d: quotas %.0f / %.0f / %.0f, sum %.4f x limit", slot, quotas[0], quotas[1], quotas[2], ratio))
	}
	t.Logf("quotas of %s / %s / %s:\n%s", f.edges[0].id, f.edges[1].id, f.edges[2].id, strings.Join(lines, "\n"))
	t.Logf("RESULT skew seconds=%d max_quota_sum=%.4fxlimit max_quota_difference=%.2f%%", last-first+1, maxRatio, 100*maxDiff)
}

// checkCountedOnce checks that the leader's consumption sum of every
// second in [first, last] is what the three nodes reported for it, each
// node's report mapped onto the central's second.
func checkCountedOnce(t *testing.T, c *cluster, f *fleet, first, last int64) {
	t.Helper()
	sums, err := c.consumptionSum(0, skewService, skewUser, skewResource, first, last)
	if err != nil {
		t.Fatalf("reading the consumption sums: %v", err)
	}
	for slot := first; slot <= last; slot++ {
		want := 0.0
		for _, e := range f.edges {
			e.mu.Lock()
			want += e.admitted[slot+e.skew]
			e.mu.Unlock()
		}
		if got := sums[slot]; math.Abs(got-want) > 1e-6*want {
			t.Errorf("second %d: the leader counted %.0f, the nodes reported %.0f", slot, got, want)
		}
	}
}

// checkReplays replays, for each node, the report of its current second
// and the one of three seconds before, after the node's own report of the
// current second. Both replies must have duplicate true and the
// central_slot of the replayed second, and the leader's consumption sums
// must not change. It returns why the round
// does not count, or "".
func checkReplays(t *testing.T, c *cluster, f *fleet) string {
	t.Helper()
	leader, term := c.waitForLeader(c.indices(), startTimeout)
	// Start 100 ms into a second, after the nodes' reports.
	now := time.Now().Truncate(time.Second).Add(time.Second + 100*time.Millisecond)
	time.Sleep(time.Until(now))
	slot := now.Unix()
	for _, e := range f.edges {
		if _, ok := pollUntil(300*time.Millisecond, func() (bool, string) {
			e.mu.Lock()
			defer e.mu.Unlock()
			_, ok := e.replies[slot+e.skew]
			return ok, ""
		}); !ok {
			return fmt.Sprintf("%s's report of second %d got no reply within 400 ms", e.id, slot)
		}
	}
	before, err := c.consumptionSum(0, skewService, skewUser, skewResource, slot-10, slot-1)
	if err != nil {
		return fmt.Sprintf("reading the consumption sums before the replays failed: %v", err)
	}

	replays, duplicates := 0, 0
	for _, e := range f.edges {
		for _, age := range []int64{0, 3} {
			local := slot + e.skew - age
			e.mu.Lock()
			body := e.sent[local]
			central := e.order[e.next]
			e.mu.Unlock()
			if body == nil {
				t.Fatalf("%s: no report of slot %d to replay", e.id, local)
			}
			r, err := c.request(central, requestTimeout, http.MethodPost, "/v1/report", body)
			switch {
			case err != nil:
				return fmt.Sprintf("replaying %s's report of slot %d failed: %v", e.id, local, err)
			case r.status == http.StatusServiceUnavailable:
				return fmt.Sprintf("replaying %s's report of slot %d: %s", e.id, local, r)
			}
			var reply reportReply
			if err := decodeJSON(r, &reply); err != nil {
				t.Fatalf("%s: replaying the report of slot %d: %v", e.id, local, err)
			}
			replays++
			if reply.Duplicate {
				duplicates++
			} else {
				t.Errorf("%s: the replay of slot %d (%d s old) got a reply not marked duplicate: %s", e.id, local, age, r.body)
			}
			// A replay keeps the node's clock offset, so it maps onto the
			// second it was first sent for.
			if want := slot - age + 1; reply.CentralSlot != want {
				t.Errorf("%s: the replay of slot %d (%d s old) has central_slot %d, want %d: it must map onto its own second", e.id, local, age, reply.CentralSlot, want)
			}
		}
	}

	after, err := c.consumptionSum(0, skewService, skewUser, skewResource, slot-10, slot-1)
	if err != nil {
		return fmt.Sprintf("reading the consumption sums after the replays failed: %v", err)
	}
	if now, nowTerm, reason := c.leaderOf(c.indices()); now != leader || nowTerm != term {
		return fmt.Sprintf("the leader changed from %s in term %d to %q in term %d %s", leader, term, now, nowTerm, reason)
	}
	beforeJSON, _ := json.Marshal(before)
	afterJSON, _ := json.Marshal(after)
	if string(beforeJSON) != string(afterJSON) {
		t.Errorf("the replays changed the consumption sums of seconds %d to %d:\nbefore %s\nafter  %s", slot-10, slot-1, beforeJSON, afterJSON)
	}
	t.Logf("RESULT skew replays=%d marked_duplicate=%d sums_unchanged=%v", replays, duplicates, string(beforeJSON) == string(afterJSON))
	return ""
}
