package central

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

func TestPutOnFollowerReadableOnAll(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := waitForCluster(t, nodes)
	var follower *testNode
	for _, n := range nodes {
		if n.id() != leader {
			follower = n
			break
		}
	}

	status, body := putLimit(t, follower.c.HTTPAddr(), "front", "alice", 1048576)
	if status != http.StatusOK {
		t.Fatalf("PUT on follower %s: status %d, body %s", follower.id(), status, body)
	}
	for _, n := range nodes {
		waitForLimit(t, n, "front", "alice", 1048576)
		status, body := request(t, http.MethodGet, n.c.HTTPAddr(), "/v1/limits/front/alice?consistent=true", nil)
		if status != http.StatusOK || !strings.Contains(string(body), `"traffic_up":1048576`) {
			t.Errorf("consistent GET on %s: status %d, body %s", n.id(), status, body)
		}
	}
}

func TestLeaderKillKeepsAcknowledgedWrites(t *testing.T) {
	nodes := startCluster(t, 3)
	leaderID := waitForCluster(t, nodes)
	leader := nodeByID(t, nodes, leaderID)
	oldTerm := term(t, leader)

	// Writes go to the leader directly while it is killed. Each one either
	// succeeds, and must then be on every survivor, or fails with an error
	// that tells the client to retry.
	type outcome struct {
		user string
		err  error
	}
	var mu sync.Mutex
	var outcomes []outcome
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		node := leader.c.Node()
		for i := 0; i < 500; i++ {
			select {
			case <-stop:
				return
			default:
			}
			user := fmt.Sprintf("u%d", i)
			data, err := fsm.Encode(fsm.SetLimitsCommand{Service: "front", User: user,
				Limits: map[string]quota.Limit{"traffic_up": {Rate: float64(i + 1)}}, TS: 1, Slot: 1})
			if err != nil {
				t.Error(err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = node.Apply(ctx, data)
			cancel()
			mu.Lock()
			outcomes = append(outcomes, outcome{user, err})
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	waitFor(t, "some acknowledged writes", func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(outcomes) < 20 {
			return fmt.Sprintf("%d writes so far", len(outcomes))
		}
		return ""
	})
	leader.kill(t)
	close(stop)
	wg.Wait()

	survivors := []*testNode{}
	for _, n := range nodes {
		if n.c != nil {
			survivors = append(survivors, n)
		}
	}
	var newLeader string
	waitFor(t, "a new leader", func() string {
		newLeader = ""
		for _, n := range survivors {
			if n.c.Node().IsLeader() {
				newLeader = n.id()
			}
		}
		if newLeader == "" {
			return "no survivor leads"
		}
		return ""
	})
	if got := term(t, nodeByID(t, nodes, newLeader)); got <= oldTerm {
		t.Errorf("new leader %s has term %d, want above the old term %d", newLeader, got, oldTerm)
	}

	acknowledged := 0
	for _, o := range outcomes {
		if o.err != nil {
			if !errors.Is(o.err, raftnode.ErrNotLeader) && !errors.Is(o.err, raftnode.ErrNoLeader) &&
				!errors.Is(o.err, raftnode.ErrTimeout) && !errors.Is(o.err, raftnode.ErrClosed) {
				t.Errorf("write of %s failed with %v, want a retryable raftnode error", o.user, o.err)
			}
			continue
		}
		acknowledged++
		for _, n := range survivors {
			if _, ok := waitForUser(n, "front", o.user); !ok {
				t.Errorf("acknowledged write of %s is missing on %s", o.user, n.id())
			}
		}
	}
	if acknowledged == 0 {
		t.Fatalf("no write was acknowledged before the kill")
	}

	// A write through the API of a survivor succeeds with the new leader.
	// A follower returns 503 until the new leader's first heartbeat names
	// it, and a client retries a 503.
	waitFor(t, "a PUT through a survivor to succeed", func() string {
		status, body := putLimit(t, survivors[0].c.HTTPAddr(), "front", "after", 7)
		if status == http.StatusServiceUnavailable {
			return fmt.Sprintf("status %d, body %s", status, body)
		}
		if status != http.StatusOK {
			t.Fatalf("PUT after failover: status %d, body %s", status, body)
		}
		return ""
	})
	for _, n := range survivors {
		waitForLimit(t, n, "front", "after", 7)
	}
}

// waitForUser polls until n holds limits for the user, bounded by
// waitTimeout.
func waitForUser(n *testNode, service, user string) (fsm.UserLimits, bool) {
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		if got, ok := n.c.State().Limits(service, user); ok {
			return got, true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fsm.UserLimits{}, false
}

func TestWholeClusterRestartKeepsLimits(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := nodeByID(t, nodes, waitForCluster(t, nodes))
	for i := 1; i <= 5; i++ {
		if status, body := putLimit(t, leader.c.HTTPAddr(), "front", fmt.Sprintf("u%d", i), float64(i)); status != http.StatusOK {
			t.Fatalf("PUT u%d: %d %s", i, status, body)
		}
	}
	for _, n := range nodes {
		n.stop(t)
	}
	for _, n := range nodes {
		n.start(t)
	}
	waitForCluster(t, nodes)
	for _, n := range nodes {
		for i := 1; i <= 5; i++ {
			waitForLimit(t, n, "front", fmt.Sprintf("u%d", i), float64(i))
		}
	}
}

func TestRestartedFollowerKeepsLeaderTerm(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := nodeByID(t, nodes, waitForCluster(t, nodes))
	before := term(t, leader)
	var follower *testNode
	for _, n := range nodes {
		if n != leader {
			follower = n
			break
		}
	}
	follower.stop(t)
	if status, body := putLimit(t, leader.c.HTTPAddr(), "front", "while-down", 3); status != http.StatusOK {
		t.Fatalf("PUT while a follower is down: %d %s", status, body)
	}
	follower.start(t)
	waitForCluster(t, nodes)
	waitForLimit(t, follower, "front", "while-down", 3)
	if !leader.c.Node().IsLeader() {
		t.Errorf("%s lost leadership when a follower restarted", leader.id())
	}
	if after := term(t, leader); after != before {
		t.Errorf("leader term changed from %d to %d when a follower restarted", before, after)
	}
}

func TestFourthNodeJoinsAndCatchesUpFromSnapshot(t *testing.T) {
	first := startNodeWith(t, "c1", true, nil, func(cfg *Config) {
		cfg.Raft.SnapshotThreshold = 20
		cfg.Raft.TrailingLogs = 5
		cfg.Raft.SnapshotInterval = 50 * time.Millisecond
	})
	nodes := []*testNode{first}
	for i := 2; i <= 3; i++ {
		nodes = append(nodes, startNode(t, fmt.Sprintf("c%d", i), false, []string{first.c.HTTPAddr()}))
	}
	waitForCluster(t, nodes)
	for i := 0; i < 60; i++ {
		if status, body := putLimit(t, first.c.HTTPAddr(), "front", fmt.Sprintf("u%d", i), float64(i+1)); status != http.StatusOK {
			t.Fatalf("PUT u%d: %d %s", i, status, body)
		}
	}
	waitFor(t, "a snapshot on c1", func() string {
		stats, _ := first.c.Node().Stats()
		if stats.LastSnapshotIndex == 0 {
			return "no snapshot yet"
		}
		return ""
	})

	fourth := startNode(t, "c4", false, []string{nodes[1].c.HTTPAddr()})
	nodes = append(nodes, fourth)
	waitForCluster(t, nodes)
	want := first.c.State().AllLimits()
	waitFor(t, "c4 to hold the leader's limits", func() string {
		got := fourth.c.State().AllLimits()
		if len(got) != len(want) {
			return fmt.Sprintf("%d users, want %d", len(got), len(want))
		}
		return ""
	})
	for i, u := range fourth.c.State().AllLimits() {
		if u.User != want[i].User || u.Limits["traffic_up"] != want[i].Limits["traffic_up"] {
			t.Errorf("c4 holds %s=%v, leader %s=%v", u.User, u.Limits, want[i].User, want[i].Limits)
		}
	}
}

func TestRemovedServerWithOldDataIsRefused(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := nodeByID(t, nodes, waitForCluster(t, nodes))
	var victim *testNode
	for _, n := range nodes {
		if n != leader {
			victim = n
			break
		}
	}
	victim.stop(t)
	status, body := request(t, http.MethodDelete, leader.c.HTTPAddr(), "/v1/cluster/servers/"+victim.id(), nil)
	if status != http.StatusNoContent {
		t.Fatalf("DELETE server %s: %d %s", victim.id(), status, body)
	}

	// It comes back with its old data and its join address: the cluster
	// refuses it and the central stops with a message for the operator.
	victim.cfg.Join = []string{leader.c.HTTPAddr()}
	victim.start(t)
	select {
	case err := <-victim.c.Fatal():
		if !strings.Contains(err.Error(), "delete its data directory") {
			t.Errorf("fatal error %q does not tell the operator what to do", err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("removed server with old data was not refused within %v", waitTimeout)
	}
	if got, _ := leader.c.Node().Servers(); len(got) != 2 {
		t.Errorf("cluster has %d servers after the refused join, want 2", len(got))
	}
}

func TestRemovedServerIsTold(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := nodeByID(t, nodes, waitForCluster(t, nodes))
	victim := followerOf(t, nodes, leader.id())
	if status, body := putLimit(t, leader.c.HTTPAddr(), "front", "alice", 100); status != http.StatusOK {
		t.Fatalf("PUT: %d %s", status, body)
	}
	waitForLimit(t, victim, "front", "alice", 100)

	status, body := request(t, http.MethodDelete, leader.c.HTTPAddr(), "/v1/cluster/servers/"+victim.id(), nil)
	if status != http.StatusNoContent {
		t.Fatalf("DELETE server %s: %d %s", victim.id(), status, body)
	}

	// The leader sends the removed central a notice, after which it sends
	// clients away instead of serving state that no longer changes.
	waitFor(t, "the removed central to answer 503 removed", func() string {
		status, body := request(t, http.MethodGet, victim.c.HTTPAddr(), "/v1/limits/front/alice", nil)
		if status != http.StatusServiceUnavailable || !strings.Contains(string(body), `"removed"`) {
			return fmt.Sprintf("GET limits: %d %s", status, body)
		}
		return ""
	})
	status, body = request(t, http.MethodGet, victim.c.HTTPAddr(), "/readyz", nil)
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), "removed from the cluster by leader") {
		t.Errorf("readyz of the removed central: %d %s, want 503 naming the removal", status, body)
	}

	// The notice survives a restart on the same data.
	victim.stop(t)
	victim.start(t)
	status, body = request(t, http.MethodGet, victim.c.HTTPAddr(), "/v1/limits/front/alice", nil)
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), "delete its data directory") {
		t.Errorf("GET limits after a restart: %d %s, want 503 telling the operator what to do", status, body)
	}
	if status, _ := request(t, http.MethodGet, victim.c.HTTPAddr(), "/healthz", nil); status != http.StatusOK {
		t.Errorf("healthz of the removed central: %d, want 200", status)
	}
}

func TestRemovedLeaderRefusesRequests(t *testing.T) {
	nodes := startCluster(t, 3)
	leader := nodeByID(t, nodes, waitForCluster(t, nodes))

	status, body := request(t, http.MethodDelete, leader.c.HTTPAddr(), "/v1/cluster/servers/"+leader.id(), nil)
	if status != http.StatusNoContent {
		t.Fatalf("DELETE the leader %s: %d %s", leader.id(), status, body)
	}

	status, body = request(t, http.MethodGet, leader.c.HTTPAddr(), "/v1/limits", nil)
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), `"removed"`) {
		t.Errorf("GET limits on the removed leader: %d %s, want 503 removed", status, body)
	}
	status, body = request(t, http.MethodGet, leader.c.HTTPAddr(), "/readyz", nil)
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), "removed from the cluster") {
		t.Errorf("readyz of the removed leader: %d %s, want 503 naming the removal", status, body)
	}
}

func TestNotReadyWithoutLeader(t *testing.T) {
	// A node started without --bootstrap and without --join has no leader.
	n := startNode(t, "lonely", false, nil)
	status, body := request(t, http.MethodGet, n.c.HTTPAddr(), "/readyz", nil)
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), "no leader") {
		t.Errorf("readyz without a leader: %d %s, want 503 naming the missing leader", status, body)
	}
	status, _ = request(t, http.MethodGet, n.c.HTTPAddr(), "/healthz", nil)
	if status != http.StatusOK {
		t.Errorf("healthz: %d, want 200", status)
	}
	status, body = putLimit(t, n.c.HTTPAddr(), "front", "x", 1)
	if status != http.StatusServiceUnavailable {
		t.Errorf("PUT without a leader: %d %s, want 503", status, body)
	}
}
