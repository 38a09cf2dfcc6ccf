package raftnode

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestOpenRejectsInvalidConfig(t *testing.T) {
	valid := func() Config {
		return Config{NodeID: "a", RaftAddr: "127.0.0.1:0", DataDir: t.TempDir(), FSM: &listFSM{}}
	}
	tests := []struct {
		name      string
		change    func(*Config)
		wantField string
	}{
		{"missing node ID", func(c *Config) { c.NodeID = "" }, "NodeID"},
		{"missing address", func(c *Config) { c.RaftAddr = "" }, "RaftAddr"},
		{"address without port", func(c *Config) { c.RaftAddr = "127.0.0.1" }, "RaftAddr"},
		{"address without host", func(c *Config) { c.RaftAddr = ":0" }, "RaftAddr"},
		{"wildcard address", func(c *Config) { c.RaftAddr = "0.0.0.0:7001" }, "RaftAddr"},
		{"port out of range", func(c *Config) { c.RaftAddr = "127.0.0.1:70000" }, "RaftAddr"},
		{"missing data dir", func(c *Config) { c.DataDir = "" }, "DataDir"},
		{"missing FSM", func(c *Config) { c.FSM = nil }, "FSM"},
		{"negative apply timeout", func(c *Config) { c.ApplyTimeout = -time.Second }, "ApplyTimeout"},
		{"heartbeat below minimum", func(c *Config) {
			c.HeartbeatTimeout = time.Millisecond
			c.ElectionTimeout = time.Millisecond
			c.LeaderLeaseTimeout = time.Millisecond
		}, "HeartbeatTimeout"},
		{"election shorter than heartbeat", func(c *Config) {
			c.HeartbeatTimeout = time.Second
			c.ElectionTimeout = 500 * time.Millisecond
		}, "ElectionTimeout"},
		{"lease longer than heartbeat", func(c *Config) {
			c.HeartbeatTimeout = 100 * time.Millisecond
			c.ElectionTimeout = 100 * time.Millisecond
			c.LeaderLeaseTimeout = 200 * time.Millisecond
		}, "LeaderLeaseTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid()
			tt.change(&cfg)
			node, err := Open(cfg)
			if err == nil {
				_ = node.Close(context.Background())
				t.Fatalf("Open succeeded, want an error naming %s", tt.wantField)
			}
			if !strings.Contains(err.Error(), tt.wantField) {
				t.Errorf("Open error = %q, want it to name %s", err, tt.wantField)
			}
		})
	}
}

func TestBootstrapApplyAndRestart(t *testing.T) {
	cfg := testConfig(t, newTestLogger(t), "solo")
	cfg.Bootstrap = true
	node := openTestNode(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	leaderID, err := node.WaitForLeader(ctx)
	if err != nil {
		t.Fatalf("WaitForLeader: %v", err)
	}
	if leaderID != "solo" {
		t.Errorf("leader = %q, want %q", leaderID, "solo")
	}
	if !node.IsLeader() {
		t.Errorf("IsLeader = false on the bootstrapped node")
	}
	if _, addr := node.Leader(); addr != node.Addr() {
		t.Errorf("leader address = %q, want the node's address %q", addr, node.Addr())
	}
	if strings.HasSuffix(node.Addr(), ":0") {
		t.Errorf("Addr = %q, want the port the kernel picked", node.Addr())
	}

	for i, command := range []string{"a", "b"} {
		response := mustApply(t, node, command)
		if response != i+1 {
			t.Errorf("apply %q response = %v, want %d", command, response, i+1)
		}
	}
	response, err := node.Apply(context.Background(), []byte("fail:bad"))
	if err == nil || err.Error() != "fail:bad" {
		t.Errorf("apply of a command the FSM rejects: response %v, error %v, want the FSM's error fail:bad", response, err)
	}
	termBefore := mustStats(t, node).Term

	restarted := node.reopen(t, "127.0.0.1:0")
	if _, err := restarted.WaitForLeader(ctx); err != nil {
		t.Fatalf("WaitForLeader after restart: %v", err)
	}
	waitForLeader(t, restarted)
	waitForEntries(t, []string{"a", "b"}, restarted)
	mustApply(t, restarted, "c")
	waitForEntries(t, []string{"a", "b", "c"}, restarted)
	if term := mustStats(t, restarted).Term; term <= termBefore {
		t.Errorf("term after restart = %d, want more than %d", term, termBefore)
	}
	servers := serverMap(t, restarted)
	if len(servers) != 1 {
		t.Errorf("servers after restart = %v, want only %q", servers, "solo")
	}

	// The node restarted on a new port, so its configuration lists the old
	// address until it joins again with the one it listens on.
	if err := restarted.Join(restarted.ID(), restarted.Addr()); err != nil {
		t.Fatalf("Join of the leader at the address it listens on: %v", err)
	}
	if got := serverMap(t, restarted)["solo"]; got != restarted.Addr() {
		t.Errorf("configured address = %q, want %q", got, restarted.Addr())
	}
	mustApply(t, restarted, "d")
	waitForEntries(t, []string{"a", "b", "c", "d"}, restarted)
}

func TestOpenDataDirInUse(t *testing.T) {
	cfg := testConfig(t, newTestLogger(t), "first")
	cfg.Bootstrap = true
	openTestNode(t, cfg)

	second := cfg
	second.NodeID = "second"
	second.FSM = &listFSM{}
	node, err := Open(second)
	if err == nil {
		_ = node.Close(context.Background())
		t.Fatal("second Open on the same data dir succeeded, want an error")
	}
	if !strings.Contains(err.Error(), "another process") {
		t.Errorf("Open error = %q, want it to suggest another process holds the data dir", err)
	}
}

func TestApplyErrors(t *testing.T) {
	cfg := testConfig(t, newTestLogger(t), "solo")
	cfg.Bootstrap = true
	node := openTestNode(t, cfg)
	waitForLeader(t, node)

	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := node.Apply(expired, []byte("late")); !errors.Is(err, ErrTimeout) {
		t.Errorf("apply with an expired deadline: error %v, want ErrTimeout", err)
	}
	if err := node.Barrier(expired); !errors.Is(err, ErrTimeout) {
		t.Errorf("barrier with an expired deadline: error %v, want ErrTimeout", err)
	}

	canceled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	if _, err := node.Apply(canceled, []byte("canceled")); !errors.Is(err, context.Canceled) {
		t.Errorf("apply with a canceled context: error %v, want context.Canceled", err)
	}

	if err := node.Barrier(context.Background()); err != nil {
		t.Errorf("barrier on the leader: %v", err)
	}
	closeNode(t, node)
	if _, err := node.Apply(context.Background(), []byte("closed")); !errors.Is(err, ErrClosed) {
		t.Errorf("apply after Close: error %v, want ErrClosed", err)
	}
	ctx, cancelWait := context.WithTimeout(context.Background(), time.Second)
	defer cancelWait()
	if _, err := node.WaitForLeader(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitForLeader after Close: error %v, want ErrClosed", err)
	}
	if err := node.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	if got := node.fsm.Entries(); len(got) != 0 {
		t.Errorf("FSM entries = %q, want none: no apply succeeded", got)
	}
}

func TestWaitForLeaderTimesOut(t *testing.T) {
	// A node that is neither bootstrapped nor joined never learns of a leader.
	node := openTestNode(t, testConfig(t, newTestLogger(t), "alone"))
	ctx, cancel := context.WithTimeout(context.Background(), 3*testElectionTimeout)
	defer cancel()
	id, err := node.WaitForLeader(ctx)
	if !errors.Is(err, ErrNoLeader) {
		t.Errorf("WaitForLeader = %q, %v, want ErrNoLeader", id, err)
	}
	if _, err := node.Apply(context.Background(), []byte("x")); !errors.Is(err, ErrNoLeader) {
		t.Errorf("apply without a leader: error %v, want ErrNoLeader", err)
	}
}

func TestStatsLeaderAndFollower(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	leader, follower := nodes[0], nodes[1]
	mustApply(t, leader, "a")
	waitForEntries(t, []string{"a"}, leader, follower)

	stats := mustStats(t, leader)
	if stats.State != raft.Leader {
		t.Errorf("leader State = %v, want Leader", stats.State)
	}
	if stats.Term == 0 {
		t.Errorf("leader Term = 0, want at least 1")
	}
	if stats.LastContact != 0 {
		t.Errorf("leader LastContact = %s, want 0", stats.LastContact)
	}
	if stats.AppliedIndex == 0 || stats.AppliedIndex > stats.CommitIndex {
		t.Errorf("leader AppliedIndex = %d, CommitIndex = %d, want 0 < applied <= commit", stats.AppliedIndex, stats.CommitIndex)
	}
	if stats.LastLogIndex < stats.CommitIndex {
		t.Errorf("leader LastLogIndex = %d, want at least CommitIndex %d", stats.LastLogIndex, stats.CommitIndex)
	}

	followerStats := mustStats(t, follower)
	if followerStats.State != raft.Follower {
		t.Errorf("follower State = %v, want Follower", followerStats.State)
	}
	if followerStats.Term != stats.Term {
		t.Errorf("follower Term = %d, want the leader's %d", followerStats.Term, stats.Term)
	}
	if followerStats.LastContact < 0 {
		t.Errorf("follower LastContact = %s, want a contact with the leader", followerStats.LastContact)
	}
}

func TestLeadershipChangesInOrder(t *testing.T) {
	logger := newTestLogger(t)
	firstConfig := testConfig(t, logger, "first")
	firstConfig.Bootstrap = true
	first := openTestNode(t, firstConfig)
	firstChanges := first.LeadershipChanges()
	second := openTestNode(t, testConfig(t, logger, "second"))
	secondChanges := second.LeadershipChanges()

	expectChange(t, first.ID(), firstChanges, true)
	joinCluster(t, second, first)
	// A follower that is still catching up right after its join can lose
	// the election the transfer starts, so let it catch up first.
	mustApply(t, first, "a")
	waitForEntries(t, []string{"a"}, first, second)

	if err := first.LeadershipTransfer(); err != nil {
		t.Fatalf("LeadershipTransfer: %v", err)
	}
	expectChange(t, first.ID(), firstChanges, false)
	expectChange(t, second.ID(), secondChanges, true)
	if leader := waitForLeader(t, first, second); leader != second {
		t.Errorf("leader after transfer = %q, want %q", leader.ID(), second.ID())
	}

	// Closing a follower ends its feed without another transition.
	closeNode(t, first)
	expectClosed(t, first.ID(), firstChanges)

	// Closing the leader delivers the loss of leadership before the end.
	closeNode(t, second)
	expectChange(t, second.ID(), secondChanges, false)
	expectClosed(t, second.ID(), secondChanges)
}

func TestLeadershipTransferOnFollower(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	err := nodes[1].LeadershipTransfer()
	if !errors.Is(err, ErrNotLeader) {
		t.Errorf("LeadershipTransfer on a follower: error %v, want ErrNotLeader", err)
	}
}

func expectChange(t *testing.T, id string, changes <-chan bool, want bool) {
	t.Helper()
	select {
	case got, ok := <-changes:
		if !ok {
			t.Fatalf("node %q: leadership channel closed, want %v", id, want)
		}
		if got != want {
			t.Fatalf("node %q: leadership change = %v, want %v", id, got, want)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("node %q: no leadership change within %s, want %v", id, waitTimeout, want)
	}
}

func expectClosed(t *testing.T, id string, changes <-chan bool) {
	t.Helper()
	select {
	case got, ok := <-changes:
		if ok {
			t.Fatalf("node %q: leadership change %v after Close, want the channel closed", id, got)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("node %q: leadership channel still open %s after Close", id, waitTimeout)
	}
}

func TestCloseHandsOverLeadership(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	leader := nodes[0]
	termBefore := mustStats(t, leader).Term
	mustApply(t, leader, "a")

	closeNode(t, leader)

	survivors := nodes[1:]
	newLeader := waitForLeader(t, survivors...)
	if term := mustStats(t, newLeader).Term; term <= termBefore {
		t.Errorf("term after hand-over = %d, want more than %d", term, termBefore)
	}
	mustApply(t, newLeader, "b")
	waitForEntries(t, []string{"a", "b"}, survivors...)
	if got := leader.fsm.Entries(); !slices.Equal(got, []string{"a"}) {
		t.Errorf("closed leader's FSM = %q, want [a]", got)
	}
}
