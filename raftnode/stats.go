package raftnode

import (
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// NoContact is Stats.LastContact for a node that has never heard from a
// leader.
const NoContact time.Duration = -1

// Stats is a typed view of raft.Stats.
type Stats struct {
	State raft.RaftState
	Term  uint64
	// CommitIndex is the index of the newest entry that this node has
	// learned is committed.
	CommitIndex uint64
	// AppliedIndex is the index of the newest entry applied to the FSM.
	AppliedIndex uint64
	// LastLogIndex is the index of the newest entry in the log.
	LastLogIndex uint64
	LastLogTerm  uint64
	// LastSnapshotIndex is the index the newest snapshot covers, or 0.
	LastSnapshotIndex uint64
	// LastContact is the time since the last contact with the leader: 0 on
	// the leader, NoContact when there has been none.
	LastContact time.Duration
}

// Stats returns the node's Raft state, term and indexes, parsed from
// raft.Stats.
func (n *Node) Stats() (Stats, error) {
	raw := n.raft.Stats()
	var stats Stats
	var err error

	state, ok := parseRaftState(raw["state"])
	if !ok {
		return Stats{}, fmt.Errorf("raftnode: stats: unknown state %q", raw["state"])
	}
	stats.State = state

	fields := []struct {
		key   string
		value *uint64
	}{
		{"term", &stats.Term},
		{"commit_index", &stats.CommitIndex},
		{"applied_index", &stats.AppliedIndex},
		{"last_log_index", &stats.LastLogIndex},
		{"last_log_term", &stats.LastLogTerm},
		{"last_snapshot_index", &stats.LastSnapshotIndex},
	}
	for _, field := range fields {
		text := raw[field.key]
		if *field.value, err = strconv.ParseUint(text, 10, 64); err != nil {
			return Stats{}, fmt.Errorf("raftnode: stats: parse %s %q: %w", field.key, text, err)
		}
	}

	switch contact := raw["last_contact"]; contact {
	case "never":
		stats.LastContact = NoContact
	case "0":
		stats.LastContact = 0
	default:
		if stats.LastContact, err = time.ParseDuration(contact); err != nil {
			return Stats{}, fmt.Errorf("raftnode: stats: parse last_contact %q: %w", contact, err)
		}
	}
	return stats, nil
}

func parseRaftState(text string) (raft.RaftState, bool) {
	for _, state := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		if state.String() == text {
			return state, true
		}
	}
	return 0, false
}
