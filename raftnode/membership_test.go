package raftnode

import (
	"context"
	"errors"
	"maps"
	"testing"

	"github.com/hashicorp/raft"
)

func TestClusterReplicatesAndRejectsFollowerApply(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	leader, follower := nodes[0], nodes[1]

	mustApply(t, leader, "a")
	mustApply(t, leader, "b")
	waitForEntries(t, []string{"a", "b"}, nodes...)

	servers, err := follower.Servers()
	if err != nil {
		t.Fatalf("Servers on a follower: %v", err)
	}
	if len(servers) != 3 {
		t.Errorf("Servers = %+v, want 3", servers)
	}
	for _, server := range servers {
		if server.Suffrage != "Voter" {
			t.Errorf("server %q suffrage = %q, want Voter", server.ID, server.Suffrage)
		}
	}

	_, err = follower.Apply(context.Background(), []byte("c"))
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("apply on a follower: error %v, want ErrNotLeader", err)
	}
	if errors.Is(err, ErrNoLeader) {
		t.Errorf("apply on a follower: error %v matches ErrNoLeader, but the leader is known", err)
	}
	var notLeader *NotLeaderError
	if !errors.As(err, &notLeader) {
		t.Fatalf("apply on a follower: error %v is not a *NotLeaderError", err)
	}
	if notLeader.LeaderID != leader.ID() {
		t.Errorf("NotLeaderError.LeaderID = %q, want %q", notLeader.LeaderID, leader.ID())
	}
	if got := LeaderAddr(err); got != leader.Addr() {
		t.Errorf("LeaderAddr(err) = %q, want %q", got, leader.Addr())
	}

	if err := follower.Join("node9", "127.0.0.1:1"); !errors.Is(err, ErrNotLeader) {
		t.Errorf("Join on a follower: error %v, want ErrNotLeader", err)
	}
	if err := follower.Remove(leader.ID()); !errors.Is(err, ErrNotLeader) {
		t.Errorf("Remove on a follower: error %v, want ErrNotLeader", err)
	}
	if err := follower.Barrier(context.Background()); !errors.Is(err, ErrNotLeader) {
		t.Errorf("Barrier on a follower: error %v, want ErrNotLeader", err)
	}
	waitForEntries(t, []string{"a", "b"}, nodes...)
}

func TestJoinSameIDAndAddressChangesNothing(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	leader, member := nodes[0], nodes[1]
	lastBefore := mustStats(t, leader).LastLogIndex

	if err := leader.Join(member.ID(), member.Addr()); err != nil {
		t.Fatalf("Join of a member at its address: %v", err)
	}
	if err := leader.Join(leader.ID(), leader.Addr()); err != nil {
		t.Fatalf("Join of the leader at its address: %v", err)
	}

	if count := configurationEntriesAfter(t, leader, lastBefore); count != 0 {
		t.Errorf("the joins wrote %d configuration entries, want 0", count)
	}
	if last := mustStats(t, leader).LastLogIndex; last != lastBefore {
		t.Errorf("last log index = %d, want %d: the join wrote a log entry", last, lastBefore)
	}
}

func TestJoinSameIDNewAddressUpdatesAddress(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	leader, moved := nodes[0], nodes[2]
	mustApply(t, leader, "a")
	waitForEntries(t, []string{"a"}, nodes...)
	oldAddr := moved.Addr()
	lastBefore := mustStats(t, leader).LastLogIndex

	// The server restarts on its data at a new port and joins again.
	moved = moved.reopen(t, "127.0.0.1:0")
	if moved.Addr() == oldAddr {
		t.Fatalf("restarted node kept address %s, want a new port", oldAddr)
	}
	if err := leader.Join(moved.ID(), moved.Addr()); err != nil {
		t.Fatalf("Join at the new address: %v", err)
	}

	want := map[string]string{
		nodes[0].ID(): nodes[0].Addr(),
		nodes[1].ID(): nodes[1].Addr(),
		moved.ID():    moved.Addr(),
	}
	if got := serverMap(t, leader); !maps.Equal(got, want) {
		t.Errorf("servers = %v, want %v", got, want)
	}
	// AddVoter on an existing voter rewrites its address in one entry.
	if count := configurationEntriesAfter(t, leader, lastBefore); count != 1 {
		t.Errorf("the join wrote %d configuration entries, want 1", count)
	}
	mustApply(t, leader, "b")
	waitForEntries(t, []string{"a", "b"}, leader, nodes[1], moved)
}

func TestJoinNewIDAtExistingAddressReplacesStaleServer(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	leader, stale := nodes[0], nodes[2]
	mustApply(t, leader, "a")
	waitForEntries(t, []string{"a"}, nodes...)

	// The stale server's machine is rebuilt: a new server ID with an empty
	// data dir at the same address.
	staleAddr := stale.Addr()
	closeNode(t, stale)
	cfg := testConfig(t, stale.cfg.Logger, "replacement")
	cfg.RaftAddr = staleAddr
	replacement := openTestNode(t, cfg)

	if err := leader.Join(replacement.ID(), replacement.Addr()); err != nil {
		t.Fatalf("Join of a new ID at an existing address: %v", err)
	}

	want := map[string]string{
		nodes[0].ID():    nodes[0].Addr(),
		nodes[1].ID():    nodes[1].Addr(),
		replacement.ID(): staleAddr,
	}
	if got := serverMap(t, leader); !maps.Equal(got, want) {
		t.Errorf("servers = %v, want %v", got, want)
	}
	waitForEntries(t, []string{"a"}, replacement)
	mustApply(t, leader, "b")
	waitForEntries(t, []string{"a", "b"}, leader, nodes[1], replacement)
}

func TestJoinRejectsInvalidInput(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	leader, member := nodes[0], nodes[1]
	tests := []struct {
		name, id, addr string
	}{
		{"missing ID", "", "127.0.0.1:7001"},
		{"missing address", "node9", ""},
		{"wildcard address", "node9", "0.0.0.0:7001"},
		{"leader's own ID at another address", leader.ID(), "127.0.0.1:1"},
		{"new ID at the leader's address", "node9", leader.Addr()},
	}
	for _, tt := range tests {
		if err := leader.Join(tt.id, tt.addr); err == nil {
			t.Errorf("Join with %s (%q, %q) succeeded, want an error", tt.name, tt.id, tt.addr)
		}
	}
	want := map[string]string{leader.ID(): leader.Addr(), member.ID(): member.Addr()}
	if got := serverMap(t, leader); !maps.Equal(got, want) {
		t.Errorf("servers after rejected joins = %v, want %v", got, want)
	}
}

func TestRemoveServer(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	leader, removed := nodes[0], nodes[2]

	if err := leader.Remove(removed.ID()); err != nil {
		t.Fatalf("Remove %q: %v", removed.ID(), err)
	}
	want := map[string]string{nodes[0].ID(): nodes[0].Addr(), nodes[1].ID(): nodes[1].Addr()}
	if got := serverMap(t, leader); !maps.Equal(got, want) {
		t.Errorf("servers = %v, want %v", got, want)
	}

	err := leader.Remove("no-such-server")
	if !errors.Is(err, ErrUnknownServer) {
		t.Errorf("Remove of an unknown ID: error %v, want ErrUnknownServer", err)
	}

	mustApply(t, leader, "after-remove")
	waitForEntries(t, []string{"after-remove"}, nodes[0], nodes[1])
	if got := removed.fsm.Entries(); len(got) != 0 {
		t.Errorf("removed node applied %q, want nothing after its removal", got)
	}
}

func TestRemoveLeaderItself(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	leader := nodes[0]
	changes := leader.LeadershipChanges()
	expectChange(t, leader.ID(), changes, true)

	if err := leader.Remove(leader.ID()); err != nil {
		t.Fatalf("leader removing itself: %v", err)
	}
	expectChange(t, leader.ID(), changes, false)

	newLeader := waitForLeader(t, nodes[1], nodes[2])
	want := map[string]string{nodes[1].ID(): nodes[1].Addr(), nodes[2].ID(): nodes[2].Addr()}
	if got := serverMap(t, newLeader); !maps.Equal(got, want) {
		t.Errorf("servers = %v, want %v", got, want)
	}
	// The removed leader stays up as a follower outside the configuration.
	if state := mustStats(t, leader).State; state != raft.Follower {
		t.Errorf("removed leader's state = %v, want Follower", state)
	}
	mustApply(t, newLeader, "after")
	waitForEntries(t, []string{"after"}, nodes[1], nodes[2])
}
