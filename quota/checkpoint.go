package quota

import "fmt"

// Checkpoint is the state a new leader needs to resume allocation: the
// bucket levels after the assignment of Slot. It is a plain value, so it can be
// encoded and replicated. Buckets at full capacity are left out to keep it
// small; Restore treats a missing bucket as full when its limit is older
// than the checkpoint.
type Checkpoint struct {
	Slot int64 `json:"slot"`
	Mode Mode  `json:"mode"`
	// LiveNodes is how many nodes the assignment of Slot counted live, so a
	// new leader divides safe shares by the fleet size from its first
	// reply on.
	LiveNodes int           `json:"live_nodes"`
	Buckets   []BucketLevel `json:"buckets"`
}

// BucketLevel is one bucket in a checkpoint.
type BucketLevel struct {
	Service  string  `json:"service"`
	User     string  `json:"user"`
	Resource string  `json:"resource"`
	Level    float64 `json:"level"`
	// Credit is the part of Level that came back from unused grants.
	Credit float64 `json:"credit,omitempty"`
}

// Checkpoint returns the bucket levels after the latest assignment.
func (e *Engine) Checkpoint() Checkpoint {
	e.assignMu.Lock()
	defer e.assignMu.Unlock()
	cp := Checkpoint{Slot: e.lastAssigned.Load(), Mode: e.mode, LiveNodes: e.LiveNodes()}
	for i := range e.shards {
		s := &e.shards[i]
		s.mu.Lock()
		for k, u := range s.users {
			for _, ri := range u.limitedIdx {
				r := u.resources[ri]
				if r.level < r.limit.Capacity() {
					cp.Buckets = append(cp.Buckets, BucketLevel{
						Service: k.service, User: k.user, Resource: r.name, Level: r.level, Credit: r.credit,
					})
				}
			}
		}
		s.mu.Unlock()
	}
	return cp
}

// Restore resumes from a checkpoint on a new leader whose first assignment
// will be of slot. The caller sets the limits first. Each bucket takes the
// checkpoint's level, or its full capacity when the checkpoint left it out
// and its limit predates the checkpoint, or one second of tokens when the
// limit is newer.
//
// The refill of the slots between the checkpoint and slot is skipped, and
// consumption of slots before slot+2 is not billed. The old leader had
// already granted those tokens as quota, and the edge fallback covered the
// slots it did not reach. One slot of refill is added, so the first quotas
// continue at the rate instead of starting empty. In reserve mode a bucket
// then waits for its first grant without refill, as a new bucket does, so
// the slots before the first reports reach the new leader add nothing. Grants
// and the allocation history are dropped; the split is rebuilt from the
// reports that arrive.
func (e *Engine) Restore(cp Checkpoint, slot int64) error {
	if slot <= cp.Slot {
		return fmt.Errorf("%w: restore slot %d must be after the checkpoint slot %d", ErrInvalid, slot, cp.Slot)
	}
	e.assignMu.Lock()
	defer e.assignMu.Unlock()

	levels := make(map[userKey]map[string]BucketLevel, len(cp.Buckets))
	for _, b := range cp.Buckets {
		k := userKey{b.Service, b.User}
		if levels[k] == nil {
			levels[k] = make(map[string]BucketLevel)
		}
		levels[k][b.Resource] = b
	}
	for i := range e.shards {
		s := &e.shards[i]
		s.mu.Lock()
		for k, u := range s.users {
			for _, ri := range u.limitedIdx {
				r := u.resources[ri]
				saved, ok := levels[k][r.name]
				refill := r.limit.Rate
				switch {
				case ok:
				case r.setSlot <= cp.Slot:
					saved.Level = r.limit.Capacity()
				default:
					// A limit newer than the checkpoint starts as a new
					// bucket, with one second of tokens.
					saved.Level, refill = r.limit.Rate, 0
				}
				r.level, r.credit, r.outstanding = saved.Level, saved.Credit, 0
				r.refilled = slot - 1
				r.billFrom = slot + 2
				r.started = true
				if e.mode == ModeReserve {
					// The one slot of refill is added now and the bucket
					// waits for its first grant like a new one, so slots in
					// which no node has reported yet add nothing.
					r.level += refill
					r.started = false
				}
				r.clamp()
			}
			for _, un := range u.nodes {
				for gi := range un.grants {
					un.grants[gi].clear()
				}
				for j := range un.observedShare {
					un.observedShare[j] = -1
				}
			}
		}
		s.mu.Unlock()
	}
	e.lastAssigned.Store(slot - 1)
	e.liveNodes.Store(int64(cp.LiveNodes))
	return nil
}
