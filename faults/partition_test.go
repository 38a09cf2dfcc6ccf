//go:build linux

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

const (
	partService  = "front"
	partUser     = "partitioned"
	partResource = "traffic_up"

	// leaderLease is hashicorp/raft v1.7.2's default LeaderLeaseTimeout,
	// which the centrals keep: a leader that has not heard from a quorum
	// for that long steps down.
	leaderLease = 500 * time.Millisecond
	// quotaStopBound is the documented bound after which a leader cut off
	// from the others hands out no quota: the leader lease plus one slot.
	quotaStopBound = leaderLease + time.Second
	// probeSlack is the measurement error of a probe: the interval of the
	// report loop and the time to start curl in the namespace.
	probeSlack = 300 * time.Millisecond
	// maxMinorityWrite bounds a PUT to the cut-off leader: it must fail
	// well before the 5 s apply timeout.
	maxMinorityWrite = quotaStopBound + time.Second
)

// probe is one report that a simulated edge node sent, and its outcome.
type probe struct {
	sent   time.Time
	slot   int64
	status int // 0 when no response came
	quota  bool
	leader string
}

// prober sends a report of one edge node to one central every 100 ms and
// records each outcome.
type prober struct {
	c    *cluster
	node string
	to   int

	mu     sync.Mutex
	probes []probe
}

func (p *prober) run(ctx context.Context) {
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for range 3000 {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		pr := probe{sent: time.Now(), slot: time.Now().Unix()}
		body, err := json.Marshal(newReport(p.node, pr.slot, partService, partUser, partResource, 100000, 0))
		if err != nil {
			panic(err) // a map of plain values always encodes
		}
		r, err := p.c.request(p.to, time.Second, http.MethodPost, "/v1/report", body)
		if err == nil {
			pr.status = r.status
			var reply reportReply
			if r.status == http.StatusOK && json.Unmarshal(r.body, &reply) == nil {
				_, pr.quota = reply.Quotas[partService][strconv.FormatInt(pr.slot+1, 10)][partUser]
				pr.leader = reply.Leader
			}
		}
		p.mu.Lock()
		p.probes = append(p.probes, pr)
		p.mu.Unlock()
	}
}

func (p *prober) snapshot() []probe {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.probes)
}

// partitionFigures are the measured figures of one partition.
type partitionFigures struct {
	oldLeader, newLeader string
	// quotaStopped is the time from the cut to the first report whose
	// reply from the old leader had no quota.
	quotaStopped time.Duration
	// minorityWrite is how long the PUT to the old leader took to fail,
	// and its error code.
	minorityWrite     time.Duration
	minorityWriteCode string
	// majorityWrite is the time from the cut to the first PUT the
	// majority accepted.
	majorityWrite time.Duration
	// healed is the time from the heal until every central held exactly
	// the acknowledged limits.
	healed time.Duration
	// lastOldQuota and firstNewQuota are the last second for which the old
	// leader handed out a quota and the first one of the new leader.
	lastOldQuota, firstNewQuota int64
}

func (p partitionFigures) String() string {
	return fmt.Sprintf("old_leader=%s new_leader=%s quota_stopped=%v minority_put_failed_after=%v (%s) majority_put_after=%v heal_to_agreement=%v last_old_quota_slot=%d first_new_quota_slot=%d",
		p.oldLeader, p.newLeader, p.quotaStopped.Round(time.Millisecond), p.minorityWrite.Round(time.Millisecond), p.minorityWriteCode,
		p.majorityWrite.Round(time.Millisecond), p.healed.Round(time.Millisecond), p.lastOldQuota, p.firstNewQuota)
}

// TestPartitionedLeader runs each central in a network namespace of its
// own and cuts the leader's link while edge nodes report on both sides.
// The old leader must stop handing out quotas within the leader lease
// plus one slot, and a PUT to it must fail with a retryable error well
// before the apply timeout. The other two must elect a leader and accept
// PUTs, no second may get quotas from both leaders, and after the heal
// every central must hold exactly the acknowledged limits. The long form
// cuts off three leaders in a row.
func TestPartitionedLeader(t *testing.T) {
	requireBinaries(t)
	netns := newNetnsSet(t)
	c := newCluster(t, clusterOptions{gossip: true, netns: netns})

	acked := make(map[string]float64)
	for k := range 4 {
		user := fmt.Sprintf("before-%d", k)
		c.mustPutLimit(k%centralCount, partService, user, partResource, float64(100*(k+1)), 0)
		acked[partService+"/"+user] = float64(100 * (k + 1))
	}
	c.mustPutLimit(0, partService, partUser, partResource, 1e6, 0)
	acked[partService+"/"+partUser] = 1e6

	var results []partitionFigures
	for round := range pick(1, 3) {
		p := partitionOnce(t, c, netns, round, acked)
		results = append(results, p)
		t.Logf("RESULT partition round=%d %s", round+1, p)
	}
	for round, p := range results {
		if p.quotaStopped > quotaStopBound+probeSlack {
			t.Errorf("round %d: the cut-off leader answered reports with quotas for %v after the cut, want at most %v (lease %v + one slot, plus %v of probe slack)",
				round+1, p.quotaStopped, quotaStopBound+probeSlack, leaderLease, probeSlack)
		}
		if p.minorityWrite > maxMinorityWrite {
			t.Errorf("round %d: the PUT to the cut-off leader failed after %v, want at most %v", round+1, p.minorityWrite, maxMinorityWrite)
		}
		if p.firstNewQuota != 0 && p.lastOldQuota >= p.firstNewQuota {
			t.Errorf("round %d: the old leader handed out quotas up to second %d and the new one from second %d: a second had quotas from both",
				round+1, p.lastOldQuota, p.firstNewQuota)
		}
	}
}

// partitionOnce cuts off the current leader, measures, heals and checks
// that every central holds exactly the acknowledged limits, which it
// extends with the writes it got acknowledged.
func partitionOnce(t *testing.T, c *cluster, netns *netnsSet, round int, acked map[string]float64) partitionFigures {
	t.Helper()
	leader, _ := c.waitForLeader(c.indices(), startTimeout)
	old := c.index(leader)
	majority := slices.DeleteFunc(c.indices(), func(i int) bool { return i == old })
	p := partitionFigures{oldLeader: leader}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	minority := &prober{c: c, node: "edge-minority-" + strconv.Itoa(round+1), to: old}
	majoritySide := &prober{c: c, node: "edge-majority-" + strconv.Itoa(round+1), to: majority[0]}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { minority.run(ctx) })
	wg.Go(func() { majoritySide.run(ctx) })

	// Cut once the old leader hands out quotas to the minority's node.
	c.poll(15*time.Second, "the leader to answer the minority node's report with a quota", func() (bool, string) {
		probes := minority.snapshot()
		return slices.ContainsFunc(probes, func(pr probe) bool { return pr.quota }), fmt.Sprintf("%d reports, none with a quota", len(probes))
	})
	netns.setLink(old, false)
	cutAt := time.Now()
	t.Logf("round %d: cut the link of leader %s at %s", round+1, leader, cutAt.Format("15:04:05.000"))

	// A write to the old leader right after the cut.
	minorityUser := fmt.Sprintf("minority-%d", round+1)
	r, err := c.putLimit(old, 10*time.Second, partService, minorityUser, partResource, 1, 0)
	p.minorityWrite = time.Since(cutAt)
	switch {
	case err != nil:
		t.Errorf("round %d: the PUT to the cut-off leader got no response: %v", round+1, err)
	case checkRetryable(r) != "":
		t.Errorf("round %d: the PUT to the cut-off leader: %s", round+1, checkRetryable(r))
	}
	p.minorityWriteCode = r.errorCode()

	// The majority elects a leader and accepts a write.
	p.newLeader, _ = c.waitForNewLeader(majority, leader, startTimeout)
	majorityUser := fmt.Sprintf("majority-%d", round+1)
	c.mustPutLimit(majority[1], partService, majorityUser, partResource, float64(round+1), 0)
	p.majorityWrite = time.Since(cutAt)
	acked[partService+"/"+majorityUser] = float64(round + 1)

	// The old leader, now a follower without a leader, fails writes and
	// consistent reads at once and serves local reads that lack the
	// majority's write.
	start := time.Now()
	r, err = c.putLimit(old, 10*time.Second, partService, minorityUser, partResource, 2, 0)
	if err != nil {
		t.Errorf("round %d: the second PUT to the cut-off central got no response: %v", round+1, err)
	} else if problem := checkRetryable(r); problem != "" {
		t.Errorf("round %d: the second PUT to the cut-off central: %s", round+1, problem)
	}
	t.Logf("round %d: the second PUT to the cut-off central failed after %v with %s", round+1, time.Since(start).Round(time.Millisecond), r)
	if r, err := c.request(old, 10*time.Second, http.MethodGet, "/v1/limits?consistent=true", nil); err != nil || checkRetryable(r) != "" {
		t.Errorf("round %d: a consistent read on the cut-off central: want a retryable 503, got %v %v", round+1, r, err)
	}
	if local, err := c.limitsOf(old, partResource, false); err != nil {
		t.Errorf("round %d: a local read on the cut-off central failed: %v", round+1, err)
	} else if _, ok := local[partService+"/"+majorityUser]; ok {
		t.Errorf("round %d: the cut-off central already holds the majority's write %s", round+1, majorityUser)
	}

	// Let the majority's node get quotas from the new leader before the
	// heal.
	c.poll(15*time.Second, "the new leader to answer the majority node's report with a quota", func() (bool, string) {
		probes := majoritySide.snapshot()
		return slices.ContainsFunc(probes, func(pr probe) bool { return pr.quota && pr.leader == p.newLeader }), "no quota from the new leader yet"
	})

	netns.setLink(old, true)
	healAt := time.Now()
	for i := range c.nodes {
		c.waitForLimits(i, partResource, acked, false, 30*time.Second)
	}
	p.healed = time.Since(healAt)
	c.waitForLeader(c.indices(), startTimeout)
	for i := range c.nodes {
		c.waitForLimits(i, partResource, acked, true, 15*time.Second)
	}
	cancel()
	wg.Wait()

	// The old leader stopped at the first report after the cut that got
	// no quota, and gave none from then until the heal.
	stopped := time.Time{}
	for _, pr := range minority.snapshot() {
		if pr.sent.Before(cutAt) {
			if pr.quota {
				p.lastOldQuota = max(p.lastOldQuota, pr.slot+1)
			}
			continue
		}
		if pr.quota && pr.leader == leader {
			p.lastOldQuota = max(p.lastOldQuota, pr.slot+1)
		}
		if pr.sent.After(healAt) {
			continue
		}
		if stopped.IsZero() && !pr.quota {
			stopped = pr.sent
		}
		if !stopped.IsZero() && pr.quota {
			t.Errorf("round %d: the cut-off central answered a report with a quota at %s, after it had stopped at %s",
				round+1, pr.sent.Format("15:04:05.000"), stopped.Format("15:04:05.000"))
		}
	}
	if stopped.IsZero() {
		t.Fatalf("round %d: the cut-off leader answered every report until the heal with a quota", round+1)
	}
	p.quotaStopped = stopped.Sub(cutAt)
	for _, pr := range majoritySide.snapshot() {
		if pr.quota && pr.leader == p.newLeader && (p.firstNewQuota == 0 || pr.slot+1 < p.firstNewQuota) {
			p.firstNewQuota = pr.slot + 1
		}
	}
	return p
}
