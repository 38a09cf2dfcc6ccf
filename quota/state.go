package quota

import (
	"math"
	"sync"
)

// userState is everything the engine keeps about one (service, user). It is
// guarded by its shard's mutex.
type userState struct {
	key userKey
	// resources is append-only, so an index into it stays valid for the
	// per-node slices below; names is replaced, never changed in place, so
	// published quota lists can share it without a lock.
	resources []*resourceState
	names     []string
	limited   int
	// limitedIdx holds the indexes of the resources with a limit and
	// limitedNames their names; both are replaced, never changed in place.
	limitedIdx   []int
	limitedNames []string
	nodes        []*userNode
	// byNode indexes nodes once there are more than indexNodesAbove.
	byNode map[*nodeState]*userNode
}

func newUserState(k userKey) *userState {
	return &userState{key: k}
}

// resource returns the state of the named resource, adding it if needed.
func (u *userState) resource(name string) *resourceState {
	if i := u.resourceIndex(name); i >= 0 {
		return u.resources[i]
	}
	r := &resourceState{name: name}
	u.resources = append(u.resources, r)
	names := make([]string, len(u.resources))
	copy(names, u.names)
	names[len(names)-1] = name
	u.names = names
	return r
}

func (u *userState) resourceIndex(name string) int {
	for i, r := range u.resources {
		if r.name == name {
			return i
		}
	}
	return -1
}

func (u *userState) countLimits() {
	var idx []int
	var names []string
	for i, r := range u.resources {
		if r.hasLimit {
			idx = append(idx, i)
			names = append(names, r.name)
		}
	}
	u.limited = len(idx)
	u.limitedIdx, u.limitedNames = idx, names
}

// nodeState returns the user's state on node n, adding it if needed.
func (u *userState) node(n *nodeState) *userNode {
	if un := u.find(n); un != nil {
		return un
	}
	un := &userNode{node: n}
	u.nodes = append(u.nodes, un)
	if u.byNode != nil {
		u.byNode[n] = un
	} else if len(u.nodes) > indexNodesAbove {
		u.indexNodes()
	}
	return un
}

// indexNodesAbove is how many nodes a user may have before its node list
// gets a map index: a scan is faster for a few, and a user seen on hundreds
// of nodes would otherwise cost a scan per node on every report.
const indexNodesAbove = 8

// find returns the user's state on node n, or nil.
func (u *userState) find(n *nodeState) *userNode {
	if u.byNode != nil {
		return u.byNode[n]
	}
	for _, un := range u.nodes {
		if un.node == n {
			return un
		}
	}
	return nil
}

// indexNodes rebuilds byNode from nodes, or drops it when the list is
// short again.
func (u *userState) indexNodes() {
	if len(u.nodes) <= indexNodesAbove {
		u.byNode = nil
		return
	}
	u.byNode = make(map[*nodeState]*userNode, len(u.nodes))
	for _, un := range u.nodes {
		u.byNode[un.node] = un
	}
}

// resourceState is one resource of one user: its limit and token bucket.
type resourceState struct {
	name     string
	hasLimit bool
	limit    Limit
	// setSlot is the slot in which the limit was last changed.
	setSlot int64

	// level is the bucket's content in tokens; it goes below zero when
	// consumption overruns what was granted (debt), but never below minus
	// the capacity.
	level float64
	// outstanding is the sum of grants not yet settled by a report (reserve
	// mode). level + outstanding never exceeds the capacity plus
	// inFlightRefills slots of refill (see clamp).
	outstanding float64
	// credit is the part of level that came back from grants left unused
	// while the user was rejected elsewhere, and has not been granted
	// again; 0 <= credit <= max(level, 0).
	credit float64
	// refunded is the amount of unused grants returned since the latest
	// assignment. The next assignment turns it into credit when a node
	// rejected the user in the same reports, and into plain tokens when not.
	refunded float64
	// refilled is the slot of the last refill.
	refilled int64
	// billFrom is the first slot whose reports are billed. A new leader sets
	// it past the slots that the old leader's quotas or the edge fallback
	// covered, because it skipped their refill.
	billFrom int64
	// started is set by the first assignment that grants from the bucket
	// (reserve mode). Until then the bucket holds its initial second of
	// tokens without refill and bills nothing: the slots before its first
	// quota were held to the edge fallback, and no tokens were set aside
	// for them.
	started bool
	// grantedTotal is the total of the latest assignment, for the monitor.
	grantedTotal float64
}

func (r *resourceState) setLimit(l Limit, slot int64) {
	if !r.hasLimit {
		r.hasLimit = true
		r.level = l.Rate
		r.outstanding, r.credit = 0, 0
		r.refilled = slot
		r.billFrom = 0
		r.started = false
	}
	r.limit = l
	r.setSlot = slot
	r.level = math.Min(r.level, l.Capacity())
	r.clamp()
}

func (r *resourceState) removeLimit() {
	r.hasLimit = false
	r.limit = Limit{}
	r.level, r.outstanding, r.credit = 0, 0, 0
}

// grant takes amount out of the level as outstanding grants, using fresh
// tokens before credit.
func (r *resourceState) grant(amount float64) {
	fresh := math.Max(r.level-r.credit, 0)
	r.credit = math.Max(r.credit-math.Max(amount-fresh, 0), 0)
	r.level -= amount
	r.outstanding += amount
	r.clamp()
}

// settle returns what a node did not use of its grant to the bucket, or
// charges what it used beyond it.
func (r *resourceState) settle(granted, used float64) {
	r.outstanding = math.Max(r.outstanding-granted, 0)
	r.level += granted - used
	if unused := granted - used; unused > 0 {
		r.refunded += unused
	}
	r.clamp()
}

// classifyRefunds turns the refunds since the latest assignment into credit
// when the user is rejected somewhere (saturated): a grant that went unused
// on one node while another rejected was misplaced, not saved. When nobody
// rejects, all stored tokens are plain savings.
func (r *resourceState) classifyRefunds(saturated bool) {
	if saturated {
		r.credit += r.refunded
	} else {
		r.credit = 0
	}
	r.refunded = 0
	r.clamp()
}

// start marks the first grant of a bucket at slot (reserve mode): its
// initial second of tokens is granted without refill, and billing begins
// with the slot of the first quota.
func (r *resourceState) start(slot int64) {
	r.started = true
	r.refilled = slot
	r.billFrom = slot + 2
}

// refill adds the tokens of the slots since the last refill, up to the
// capacity not already granted.
func (r *resourceState) refill(slot int64) {
	if slot <= r.refilled {
		return
	}
	r.level += r.limit.Rate * float64(slot-r.refilled)
	r.refilled = slot
	r.clamp()
}

// inFlightRefills is how many refills the grants in flight may draw on
// beyond the capacity: quotas are assigned two slots ahead.
const inFlightRefills = 2

// clamp keeps the level within the capacity, level + outstanding within
// the capacity plus the refill of the slots in flight, the debt within one
// capacity, and the credit within the level.
//
// The bound is a token bucket's across the slots that hold grants. The
// assignment in slot S grants slot S+2 while the grants of S and S+1 are
// out. A bucket full at the start of S admits at most its capacity plus
// two refills over S, S+1 and S+2. A bound of the capacity alone made a
// bucket whose burst is below three slots of rate grant its full rate only
// every third slot (TestReserveStrictCapGrantsRateEverySlot).
func (r *resourceState) clamp() {
	capacity := r.limit.Capacity()
	r.level = math.Min(r.level, capacity)
	if inFlight := capacity + inFlightRefills*r.limit.Rate; r.level+r.outstanding > inFlight {
		r.level = inFlight - r.outstanding
	}
	if r.level < -capacity {
		r.level = -capacity
	}
	r.credit = math.Min(r.credit, math.Max(r.level, 0))
}

// userNode is the engine's state of one user on one edge node.
type userNode struct {
	node *nodeState
	// slot is the slot whose counts the node's latest report about this
	// user carried; zero before the first report.
	slot int64
	// consumption and rejection are that report's counts, by resource
	// index of the user. A resource the report did not name counts as 0.
	consumption []float64
	rejection   []float64
	// observedShare is, by resource index, the share of the total grant
	// that the node held for the slot of its latest report, or -1 when it
	// held none. The reserve split corrects the share that produced the
	// observation, not the latest one, so feedback delay does not wind up.
	observedShare []float64
	grants        [quotaRing]grant
	// grantsFrom is at most the slot of every open grant, so expireGrants
	// can skip the ring while no grant is old enough to expire. Settling a
	// grant leaves it unchanged, which keeps it a lower bound.
	grantsFrom int64
}

// grant is the quota one node received for one user and one slot
// (reserve mode). amounts and shares are aligned with idx, the user's resource
// indexes that had a limit when the grant was made.
type grant struct {
	slot    int64
	idx     []int
	amounts []float64
	shares  []float64
}

// amountOf returns the grant for resource index i, and false when the grant
// does not cover that resource.
func (g *grant) amountOf(i int) (amount, share float64, ok bool) {
	for j, gi := range g.idx {
		if gi == i {
			return g.amounts[j], g.shares[j], true
		}
	}
	return 0, 0, false
}

// clear marks the grant settled.
func (g *grant) clear() {
	g.idx, g.amounts, g.shares = nil, nil, nil
}

func (un *userNode) grantFor(slot int64) *grant {
	g := &un.grants[slot%quotaRing]
	if g.slot != slot || g.amounts == nil {
		return nil
	}
	return g
}

func (un *userNode) hasOpenGrants() bool {
	for i := range un.grants {
		if un.grants[i].amounts != nil {
			return true
		}
	}
	return false
}

// grow extends the per-resource slices to n resources.
func (un *userNode) grow(n int) {
	for len(un.consumption) < n {
		un.consumption = append(un.consumption, 0)
		un.rejection = append(un.rejection, 0)
		un.observedShare = append(un.observedShare, -1)
	}
}

// nodeState is one edge node: its duplicate filter and its published
// quotas.
type nodeState struct {
	id  string
	idx int

	mu sync.Mutex
	// newest is the newest counts slot applied from this node; applied has
	// bit i set when slot newest-i was applied.
	newest  int64
	applied uint64
	// removed is set when pruneNodes drops the node from the registry.
	removed bool
	quotas  [quotaRing]*nodeQuotas
}

// markApplied records that the counts of slot were applied and reports
// whether they had been already, or are too old to tell. It reports removed
// when pruneNodes dropped the node from the registry first; the caller then
// registers the node anew.
func (n *nodeState) markApplied(slot int64) (fresh, removed bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.removed {
		return false, true
	}
	return n.markAppliedLocked(slot), false
}

func (n *nodeState) markAppliedLocked(slot int64) bool {
	switch {
	case n.newest == 0 || slot >= n.newest+duplicateSlots:
		n.newest = slot
		n.applied = 1
		return true
	case slot > n.newest:
		n.applied = n.applied<<uint(slot-n.newest) | 1
		n.newest = slot
		return true
	case slot <= n.newest-duplicateSlots:
		return false
	}
	bit := uint64(1) << uint(n.newest-slot)
	if n.applied&bit != 0 {
		return false
	}
	n.applied |= bit
	return true
}

func (n *nodeState) publish(q *nodeQuotas) {
	n.mu.Lock()
	n.quotas[q.slot%quotaRing] = q
	n.mu.Unlock()
}

func (n *nodeState) quotasFor(slot int64) *nodeQuotas {
	n.mu.Lock()
	defer n.mu.Unlock()
	q := n.quotas[slot%quotaRing]
	if q == nil || q.slot != slot {
		return nil
	}
	return q
}

// nodeQuotas is one node's quotas for one slot, as assigned. It is never
// changed after it is published.
type nodeQuotas struct {
	slot    int64
	entries []quotaEntry
}

type quotaEntry struct {
	service, user string
	// resources and amounts are aligned.
	resources []string
	amounts   []float64
}

func (n *nodeState) newestSlot() int64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.newest
}

// prune marks the node removed when its newest report is older than
// horizon. A node registered by a report that has not marked its slot yet
// (newest 0) is kept, and a report that finds the node removed registers it
// again, so no report lands on a node outside the registry.
func (n *nodeState) prune(horizon int64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.newest == 0 || n.newest >= horizon {
		return false
	}
	n.removed = true
	return true
}
