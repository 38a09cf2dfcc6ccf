package fsm

import (
	"fmt"
	"maps"
	"slices"

	"github.com/throttlecentral/throttle-central/quota"
)

// state is everything the FSM replicates. Only Apply and Restore change it,
// under the FSM's write lock.
type state struct {
	// limits maps service, then user, to the user's limit set. A service
	// without users is removed, so it never appears empty.
	limits map[string]map[string]storedLimits
	// checkpoint is the latest bucket checkpoint, or nil before the first.
	checkpoint *quota.Checkpoint
	// servers maps a Raft server ID to its addresses.
	servers map[string]Server
	// tombstones maps a removed server ID to its removal time in unix
	// milliseconds, until the ID joins again.
	tombstones   map[string]int64
	appliedIndex uint64
}

// storedLimits is one user's limit set, in the FSM and in snapshots.
type storedLimits struct {
	Limits map[string]quota.Limit `json:"limits"`
	// TS is the leader-stamped time of the last change, in unix milliseconds.
	TS int64 `json:"ts"`
	// Slot is the slot (unix second) of the last change.
	Slot int64 `json:"slot"`
}

func newState() state {
	return state{
		limits:     make(map[string]map[string]storedLimits),
		servers:    make(map[string]Server),
		tombstones: make(map[string]int64),
	}
}

// apply changes the state by one validated command.
func (s *state) apply(cmd Command) {
	switch c := cmd.(type) {
	case SetLimitsCommand:
		users := s.limits[c.Service]
		if users == nil {
			users = make(map[string]storedLimits)
			s.limits[c.Service] = users
		}
		users[c.User] = storedLimits{Limits: maps.Clone(c.Limits), TS: c.TS, Slot: c.Slot}

	case DeleteLimitsCommand:
		users := s.limits[c.Service]
		delete(users, c.User)
		if len(users) == 0 {
			delete(s.limits, c.Service)
		}

	case CheckpointCommand:
		cp := cloneCheckpoint(c.Checkpoint)
		s.checkpoint = &cp

	case SetServerCommand:
		s.servers[c.ID] = Server(c)
		delete(s.tombstones, c.ID)

	case RemoveServerCommand:
		delete(s.servers, c.ID)
		s.tombstones[c.ID] = c.TS

	default:
		// Decode returns only the types above, so this is a programming
		// error, not a corrupt entry.
		panic(fmt.Sprintf("fsm: command type %T has no apply case", cmd))
	}
}

// clone returns a deep copy that shares no map or slice with s.
func (s *state) clone() state {
	out := state{
		limits:       make(map[string]map[string]storedLimits, len(s.limits)),
		servers:      maps.Clone(s.servers),
		tombstones:   maps.Clone(s.tombstones),
		appliedIndex: s.appliedIndex,
	}
	for service, users := range s.limits {
		copied := make(map[string]storedLimits, len(users))
		for user, stored := range users {
			stored.Limits = maps.Clone(stored.Limits)
			copied[user] = stored
		}
		out.limits[service] = copied
	}
	if s.checkpoint != nil {
		cp := cloneCheckpoint(*s.checkpoint)
		out.checkpoint = &cp
	}
	return out
}

func (l storedLimits) userLimits(service, user string) UserLimits {
	return UserLimits{Service: service, User: user, Limits: maps.Clone(l.Limits), TS: l.TS, Slot: l.Slot}
}

func cloneCheckpoint(cp quota.Checkpoint) quota.Checkpoint {
	cp.Buckets = slices.Clone(cp.Buckets)
	return cp
}

func sortedServers(servers map[string]Server) []Server {
	out := make([]Server, 0, len(servers))
	for _, id := range slices.Sorted(maps.Keys(servers)) {
		out = append(out, servers[id])
	}
	return out
}
