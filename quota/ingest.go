package quota

import (
	"fmt"

	"github.com/throttlecentral/throttle-central/protocol"
)

// IngestResult describes what Ingest did with a report.
type IngestResult struct {
	// Duplicate is true when a report from the same node for the same slot
	// was applied before, or the slot is too old to tell. Such a report is
	// answered but not counted again.
	Duplicate bool
	// Users is how many (service, user) pairs the report named.
	Users int
}

// ValidateReport checks a report without changing anything: node_id and
// every name follow ValidateName, slot_number is positive, and every count
// is finite, not negative and at most 2^53. Errors wrap ErrInvalid and name
// the field path, for example consumption.front.alice.traffic_up.
func ValidateReport(r *protocol.Report) error {
	if r.NodeID == "" {
		return fmt.Errorf("%w: node_id is missing", ErrInvalid)
	}
	if err := ValidateName("node_id", r.NodeID); err != nil {
		return err
	}
	if r.Slot <= 0 {
		return fmt.Errorf("%w: slot_number is %d; it must be a positive unix second", ErrInvalid, r.Slot)
	}
	for _, part := range []struct {
		field  string
		counts protocol.Counts
	}{{"consumption", r.Consumption}, {"rejection", r.Rejection}} {
		for service, users := range part.counts {
			if !validName(service) {
				return ValidateName(part.field, service)
			}
			for user, resources := range users {
				if !validName(user) {
					return ValidateName(part.field+"."+service, user)
				}
				for resource, amount := range resources {
					// Field paths are built only for an error, because a
					// report names thousands of users.
					if !validName(resource) {
						return ValidateName(part.field+"."+service+"."+user, resource)
					}
					if !validAmount(amount) {
						return CheckAmount(part.field+"."+service+"."+user+"."+resource, amount)
					}
				}
			}
		}
	}
	return nil
}

// Ingest applies a report: the counts of slot r.Slot-1 from node r.NodeID.
// It validates the whole report first and applies nothing when it is
// invalid. A repeated report for a (node, slot) already applied is not
// counted again. A report arriving late never moves refill time, because
// refill happens only in Assign.
//
// The monitor history keeps r until the next assignment or monitor query
// replaces it with a compact copy of its counts, so the caller must not
// change r after Ingest.
func (e *Engine) Ingest(r *protocol.Report) (IngestResult, error) {
	if err := ValidateReport(r); err != nil {
		return IngestResult{}, err
	}
	slot := r.Slot - 1
	n, fresh := e.markApplied(r.NodeID, slot)
	if !fresh {
		return IngestResult{Duplicate: true}, nil
	}
	lastAssigned := e.lastAssigned.Load()

	users := 0
	for _, service := range r.Services() {
		consumption := r.Consumption[service]
		rejection := r.Rejection[service]
		for user := range consumption {
			e.applyUser(n, slot, userKey{service, user}, consumption[user], rejection[user], lastAssigned)
			users++
		}
		for user := range rejection {
			if _, done := consumption[user]; !done {
				e.applyUser(n, slot, userKey{service, user}, nil, rejection[user], lastAssigned)
				users++
			}
		}
	}

	if e.mode == ModeReserve {
		e.settleUnnamed(n, slot, r, lastAssigned)
	}
	e.history.addReport(slot, r)
	return IngestResult{Users: users}, nil
}

// applyUser records a node's counts about one user and settles or bills
// them against the user's buckets. Users without a limit are only kept in
// the monitor history.
func (e *Engine) applyUser(n *nodeState, slot int64, k userKey, consumption, rejection map[string]float64, lastAssigned int64) {
	s := e.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[k]
	if u == nil || u.limited == 0 {
		return
	}
	un := u.node(n)
	un.grow(len(u.resources))
	latest := slot > un.slot
	if latest {
		un.slot = slot
		for i, r := range u.resources {
			un.consumption[i] = consumption[r.name]
			un.rejection[i] = rejection[r.name]
		}
	}
	e.settle(u, un, slot, consumption, latest, lastAssigned)
}

// settleUnnamed settles the grants of slot that node n held for users its
// report did not name: those users consumed nothing there, so the whole
// grant is refunded.
func (e *Engine) settleUnnamed(n *nodeState, slot int64, r *protocol.Report, lastAssigned int64) {
	q := n.quotasFor(slot)
	if q == nil {
		return
	}
	for _, entry := range q.entries {
		if _, named := r.Consumption[entry.service][entry.user]; named {
			continue
		}
		if _, named := r.Rejection[entry.service][entry.user]; named {
			continue
		}
		k := userKey{entry.service, entry.user}
		s := e.shardOf(k)
		s.mu.Lock()
		if u := s.users[k]; u != nil {
			if un := u.find(n); un != nil {
				e.settle(u, un, slot, nil, false, lastAssigned)
			}
		}
		s.mu.Unlock()
	}
}

// settle bills the consumption of slot on one node against each limited
// bucket of the user. In reserve mode the node's grant for the slot is
// settled: the unused part goes back to the bucket and an overrun is
// charged. Consumption without a grant is charged in full, unless the slot
// is not billable. The caller holds the user's shard lock.
func (e *Engine) settle(u *userState, un *userNode, slot int64, consumption map[string]float64, latest bool, lastAssigned int64) {
	var g *grant
	if e.mode == ModeReserve {
		g = un.grantFor(slot)
	}
	for i, r := range u.resources {
		if !r.hasLimit {
			continue
		}
		used := consumption[r.name]
		share := -1.0
		granted, grantShare, ok := 0.0, 0.0, false
		if g != nil {
			granted, grantShare, ok = g.amountOf(i)
		}
		switch {
		case ok:
			r.settle(granted, used)
			share = grantShare
		case e.billable(r, slot, lastAssigned):
			r.level -= used
		}
		r.clamp()
		if latest {
			un.observedShare[i] = share
		}
	}
	if g != nil {
		g.clear()
	}
}

// billable reports whether consumption of slot without a grant is charged.
// Slots before billFrom were covered by a previous leader or came before
// the bucket's first quota, and in reserve mode a report more than
// LateSlots late finds its grant already counted as consumed.
func (e *Engine) billable(r *resourceState, slot, lastAssigned int64) bool {
	if slot < r.billFrom || (e.mode == ModeReserve && !r.started) {
		return false
	}
	if e.mode == ModeReserve && lastAssigned > 0 && slot+LateSlots <= lastAssigned {
		return false
	}
	return true
}

// markApplied finds or registers the node and records that it applied the
// counts of slot, retrying when an assignment pruned the node in between.
func (e *Engine) markApplied(id string, slot int64) (*nodeState, bool) {
	for {
		n := e.node(id)
		fresh, removed := n.markApplied(slot)
		if !removed {
			return n, fresh
		}
	}
}
