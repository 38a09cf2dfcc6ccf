package central

import (
	"fmt"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// readiness decides /readyz: a leader is known, this node has heard from it
// (or is it, with its quota engine running), and the FSM has applied every
// entry that this node's log held when it first saw a leader. A restarted node therefore reports not ready
// until it has replayed its own log and caught up to that point.
type readiness struct {
	node raftView
	// allocating reports whether the quota engine runs; a leader is ready
	// only once it does. Nil skips the check.
	allocating func() bool
	// removal holds the leader's notice that this central was removed;
	// nil skips the check.
	removal api.Removal

	mu     sync.Mutex
	target uint64
	armed  bool
}

// raftView is the part of the Raft node that readiness reads.
type raftView interface {
	Leader() (id, addr string)
	Stats() (raftnode.Stats, error)
	ID() string
	Servers() ([]raftnode.Server, error)
}

func (r *readiness) check() (bool, string) {
	if reason := api.RemovedReason(r.removal); reason != "" {
		return false, reason
	}
	id, _ := r.node.Leader()
	if id == "" {
		if !r.member() {
			return false, "no leader is known, and this central is not in its cluster configuration: it has not been added yet (with --join that takes seconds), or it was removed; POST /v1/cluster/join on a member adds it"
		}
		return false, "no leader is known"
	}
	stats, err := r.node.Stats()
	if err != nil {
		return false, "reading raft stats failed: " + err.Error()
	}
	if stats.State != raft.Leader && stats.LastContact == raftnode.NoContact {
		return false, "the leader has not contacted this node yet"
	}
	if stats.State == raft.Leader && r.allocating != nil && !r.allocating() {
		return false, "this central is the leader and is starting its quota engine"
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.armed {
		r.target = max(stats.CommitIndex, stats.LastLogIndex)
		r.armed = true
	}
	if stats.AppliedIndex < r.target {
		return false, fmt.Sprintf("applied index %d is behind index %d, the newest entry known when a leader appeared", stats.AppliedIndex, r.target)
	}
	return true, ""
}

// member reports whether this node is in its own copy of the Raft configuration.
// A node that cannot read its configuration counts as a member, so the
// plainer reason is given.
func (r *readiness) member() bool {
	servers, err := r.node.Servers()
	if err != nil {
		return true
	}
	for _, server := range servers {
		if server.ID == r.node.ID() {
			return true
		}
	}
	return false
}
