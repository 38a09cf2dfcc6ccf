package raftnode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestLeaderCrashElectsNewLeader(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	oldLeader, survivors := nodes[0], nodes[1:]
	termBefore := mustStats(t, oldLeader).Term

	// Apply on the old leader without pause until an apply fails, so one
	// is in flight when the leader stops.
	var acknowledged []string
	var applied atomic.Int64
	writerDone := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			command := fmt.Sprintf("w%d", i)
			if _, err := oldLeader.Apply(context.Background(), []byte(command)); err != nil {
				writerDone <- err
				return
			}
			acknowledged = append(acknowledged, command)
			applied.Add(1)
		}
	}()
	waitFor(t, "10 applies on the old leader", func() bool { return applied.Load() >= 10 })

	// A context that is already done skips the leadership transfer, so the
	// others see a crash and must elect a leader themselves.
	crashed, cancel := context.WithCancel(context.Background())
	cancel()
	if err := oldLeader.Close(crashed); err != nil {
		t.Fatalf("close the old leader: %v", err)
	}

	var writeErr error
	select {
	case writeErr = <-writerDone:
	case <-time.After(waitTimeout):
		t.Fatalf("apply on the closed leader did not fail within %s", waitTimeout)
	}
	t.Logf("apply pending on the old leader failed: %v", writeErr)
	if !errors.Is(writeErr, ErrNotLeader) && !errors.Is(writeErr, ErrClosed) && !errors.Is(writeErr, ErrTimeout) {
		t.Errorf("apply pending on the old leader: error %v, want ErrNotLeader, ErrClosed or ErrTimeout", writeErr)
	}

	newLeader := waitForLeader(t, survivors...)
	if term := mustStats(t, newLeader).Term; term <= termBefore {
		t.Errorf("new leader's term = %d, want more than %d", term, termBefore)
	}

	// Barrier makes the new leader apply everything the old one
	// committed, including entries the old leader never acknowledged.
	if err := newLeader.Barrier(context.Background()); err != nil {
		t.Fatalf("barrier on the new leader: %v", err)
	}
	mustApply(t, newLeader, "after-failover")
	want := newLeader.fsm.Entries()
	waitForEntries(t, want, survivors...)
	if want[len(want)-1] != "after-failover" {
		t.Errorf("new leader's last entry = %q, want %q", want[len(want)-1], "after-failover")
	}
	for _, command := range acknowledged {
		if !slices.Contains(want, command) {
			t.Errorf("acknowledged entry %q is missing after failover", command)
		}
	}
}

func TestFollowerCatchesUpFromSnapshot(t *testing.T) {
	const entries = 60
	nodes := startCluster(t, 1, func(cfg *Config) {
		cfg.SnapshotInterval = 20 * time.Millisecond
		cfg.SnapshotThreshold = 10
		cfg.TrailingLogs = 5
	})
	leader := nodes[0]

	var want []string
	for i := range entries {
		command := fmt.Sprintf("e%d", i)
		mustApply(t, leader, command)
		want = append(want, command)
	}
	// Wait until the leader has a snapshot and dropped the log it covers,
	// so a new follower can only catch up from the snapshot.
	waitFor(t, "a snapshot that compacted the leader's log", func() bool {
		first, err := leader.store.FirstIndex()
		return err == nil && first > 1 && mustStats(t, leader).LastSnapshotIndex > 0
	})

	cfg := testConfig(t, leader.cfg.Logger, "fresh")
	fresh := openTestNode(t, cfg)
	if err := leader.Join(fresh.ID(), fresh.Addr()); err != nil {
		t.Fatalf("join the fresh node: %v", err)
	}
	waitForEntries(t, want, fresh)

	if restores := fresh.fsm.Restores(); restores == 0 {
		t.Errorf("fresh node restored %d snapshots, want at least 1", restores)
	}
	// Raft restores the FSM before it records the installed snapshot in
	// its stats, so the index can lag the entries for a moment.
	waitFor(t, "the fresh node's stats to name the installed snapshot", func() bool {
		return mustStats(t, fresh).LastSnapshotIndex > 0
	})
	mustApply(t, leader, "after-snapshot")
	waitForEntries(t, append(want, "after-snapshot"), leader, fresh)
}

// voteCounter counts the pre-vote and vote requests that one server sends
// to the leader, using raft's observer API.
type voteCounter struct {
	preVotes, votes atomic.Int64
}

func countVoteRequests(t *testing.T, leader *testNode, fromID string) *voteCounter {
	t.Helper()
	counter := &voteCounter{}
	observations := make(chan raft.Observation, 64)
	observer := raft.NewObserver(observations, false, func(o *raft.Observation) bool {
		switch request := o.Data.(type) {
		case raft.RequestPreVoteRequest:
			return string(request.ID) == fromID
		case raft.RequestVoteRequest:
			return string(request.ID) == fromID
		}
		return false
	})
	leader.raft.RegisterObserver(observer)
	done := make(chan struct{})
	t.Cleanup(func() {
		leader.raft.DeregisterObserver(observer)
		close(done)
	})
	go func() {
		for {
			select {
			case o := <-observations:
				if _, ok := o.Data.(raft.RequestPreVoteRequest); ok {
					counter.preVotes.Add(1)
				} else {
					counter.votes.Add(1)
				}
			case <-done:
				return
			}
		}
	}()
	return counter
}

// checkTermsHold polls the term of every node for window and fails the
// test as soon as one differs from term.
func checkTermsHold(t *testing.T, term uint64, window time.Duration, nodes ...*testNode) {
	t.Helper()
	end := time.NewTimer(window)
	defer end.Stop()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		for _, n := range nodes {
			if got := mustStats(t, n).Term; got != term {
				t.Fatalf("node %q term = %d, want %d", n.ID(), got, term)
			}
		}
		select {
		case <-ticker.C:
		case <-end.C:
			return
		}
	}
}

// TestRemovedServerKeepsLeaderTerm checks that a removed server cannot
// raise the cluster's term, whether it keeps running or comes back with
// its old data.
//
// hashicorp/raft v1.7.2 has pre-vote on by default with the TCP
// transport. A server that still believes it is a voter requests pre-votes
// first. The others reject them because it is not in their configuration,
// so it never starts a real election and its term stays where it was. That
// matters when it is joined again: a raised term would depose the leader.
func TestRemovedServerKeepsLeaderTerm(t *testing.T) {
	// window is how long each case checks that no term changes: five
	// election timeouts, each a chance for the removed server to campaign.
	const window = 5 * testElectionTimeout

	tests := []struct {
		name string
		// removeAndReturn removes nodes[2] from the cluster led by
		// nodes[0] and returns the removed server, running again.
		removeAndReturn func(t *testing.T, nodes []*testNode) *testNode
		// campaigns is whether the returned server still believes it is a
		// voter, so it must send pre-votes.
		campaigns bool
	}{
		{
			// The server is down during its removal and comes back on its
			// old data at another port, so the leader cannot tell it about
			// the removal: it still believes it is a voter.
			name: "restarted on old data at another address",
			removeAndReturn: func(t *testing.T, nodes []*testNode) *testNode {
				closeNode(t, nodes[2])
				if err := nodes[0].Remove(nodes[2].ID()); err != nil {
					t.Fatalf("remove %q: %v", nodes[2].ID(), err)
				}
				return nodes[2].reopen(t, "127.0.0.1:0")
			},
			campaigns: true,
		},
		{
			// The server learns its removal from the leader's last append,
			// or not, depending on timing. Either way the term holds.
			name: "restarted on old data at the same address",
			removeAndReturn: func(t *testing.T, nodes []*testNode) *testNode {
				addr := nodes[2].Addr()
				closeNode(t, nodes[2])
				if err := nodes[0].Remove(nodes[2].ID()); err != nil {
					t.Fatalf("remove %q: %v", nodes[2].ID(), err)
				}
				return nodes[2].reopen(t, addr)
			},
		},
		{
			name: "kept running",
			removeAndReturn: func(t *testing.T, nodes []*testNode) *testNode {
				if err := nodes[0].Remove(nodes[2].ID()); err != nil {
					t.Fatalf("remove %q: %v", nodes[2].ID(), err)
				}
				return nodes[2]
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := startCluster(t, 3, nil)
			leader, other := nodes[0], nodes[1]
			mustApply(t, leader, "a")
			waitForEntries(t, []string{"a"}, nodes...)
			term := mustStats(t, leader).Term
			counter := countVoteRequests(t, leader, nodes[2].ID())

			removed := tt.removeAndReturn(t, nodes)
			if tt.campaigns {
				const rounds = 3
				waitFor(t, fmt.Sprintf("%d pre-vote requests from the removed server", rounds), func() bool {
					return counter.preVotes.Load() >= rounds
				})
			}
			checkTermsHold(t, term, window, leader, other)

			if votes := counter.votes.Load(); votes != 0 {
				t.Errorf("the removed server sent %d vote requests, want 0: pre-vote should stop it before an election", votes)
			}
			if !leader.IsLeader() {
				t.Errorf("node %q is no longer the leader", leader.ID())
			}
			if got := mustStats(t, removed).Term; got > term {
				t.Errorf("removed server's term = %d, want at most %d", got, term)
			}

			// Joined again, the server catches up without an election.
			if err := leader.Join(removed.ID(), removed.Addr()); err != nil {
				t.Fatalf("join the removed server again: %v", err)
			}
			mustApply(t, leader, "b")
			waitForEntries(t, []string{"a", "b"}, leader, other, removed)
			if got := mustStats(t, leader).Term; got != term {
				t.Errorf("leader's term after the rejoin = %d, want %d", got, term)
			}
		})
	}
}
