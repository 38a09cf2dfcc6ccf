package central

import (
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/raftnode"
)

type fakeRaft struct {
	leader string
	stats  raftnode.Stats
	// outside makes the node's configuration leave it out.
	outside bool
}

func (f *fakeRaft) Leader() (string, string) { return f.leader, "" }
func (f *fakeRaft) ID() string               { return "c2" }
func (f *fakeRaft) Servers() ([]raftnode.Server, error) {
	if f.outside {
		return []raftnode.Server{{ID: "c1"}}, nil
	}
	return []raftnode.Server{{ID: "c1"}, {ID: "c2"}}, nil
}
func (f *fakeRaft) Stats() (raftnode.Stats, error) {
	return f.stats, nil
}

func TestReadinessWaitsForReplay(t *testing.T) {
	node := &fakeRaft{stats: raftnode.Stats{State: raft.Follower, LastContact: raftnode.NoContact}}
	r := &readiness{node: node}

	steps := []struct {
		name   string
		change func()
		ready  bool
		reason string
	}{
		{"no leader", func() {}, false, "no leader"},
		{"leader without contact", func() { node.leader = "c1" }, false, "has not contacted"},
		{"behind its own log", func() {
			node.stats.LastContact = 0
			node.stats.CommitIndex, node.stats.LastLogIndex, node.stats.AppliedIndex = 40, 50, 10
		}, false, "applied index 10 is behind index 50"},
		{"still behind", func() { node.stats.AppliedIndex = 49 }, false, "behind index 50"},
		{"caught up", func() { node.stats.AppliedIndex = 50 }, true, ""},
		{"later entries do not move the target", func() { node.stats.LastLogIndex = 90 }, true, ""},
	}
	for _, step := range steps {
		step.change()
		ready, reason := r.check()
		if ready != step.ready {
			t.Errorf("%s: ready %v (%s), want %v", step.name, ready, reason, step.ready)
		}
		if !strings.Contains(reason, step.reason) {
			t.Errorf("%s: reason %q, want it to contain %q", step.name, reason, step.reason)
		}
	}
}

func TestReadinessOnLeaderNeedsNoContact(t *testing.T) {
	node := &fakeRaft{leader: "c1", stats: raftnode.Stats{State: raft.Leader, LastContact: raftnode.NoContact, AppliedIndex: 3, CommitIndex: 3, LastLogIndex: 3}}
	r := &readiness{node: node}
	if ready, reason := r.check(); !ready {
		t.Errorf("leader not ready: %s", reason)
	}
}

func TestReadinessLeaderWaitsForQuotaEngine(t *testing.T) {
	node := &fakeRaft{leader: "c1", stats: raftnode.Stats{State: raft.Leader, AppliedIndex: 3, CommitIndex: 3, LastLogIndex: 3}}
	engine := false
	r := &readiness{node: node, allocating: func() bool { return engine }}
	if ready, reason := r.check(); ready || !strings.Contains(reason, "quota engine") {
		t.Errorf("leader without a quota engine: ready %v (%s), want not ready naming the engine", ready, reason)
	}
	engine = true
	if ready, reason := r.check(); !ready {
		t.Errorf("leader with its quota engine: not ready: %s", reason)
	}
}

func TestReadinessNamesMissingMembership(t *testing.T) {
	node := &fakeRaft{outside: true, stats: raftnode.Stats{State: raft.Follower, LastContact: raftnode.NoContact}}
	r := &readiness{node: node}
	ready, reason := r.check()
	if ready {
		t.Fatal("a node outside its configuration is ready")
	}
	if !strings.Contains(reason, "not in its cluster configuration") {
		t.Errorf("reason %q, want it to say the node is not in the configuration", reason)
	}
	node.outside = false
	if _, reason := r.check(); reason != "no leader is known" {
		t.Errorf("a member without a leader: reason %q, want %q", reason, "no leader is known")
	}
}
