package quota

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
)

// Liveness tells the engine which edge nodes may receive quota. A nil
// Liveness treats every node as live.
type Liveness interface {
	Live(nodeID string) bool
}

// liveReportSlots is how many slots a node may go without a report before
// assignments leave it out: at the middle of slot S a node's newest report
// should carry the counts of S-1, and one missed report is tolerated.
const liveReportSlots = 2

// AssignResult summarises one assignment.
type AssignResult struct {
	// Slot is the slot the quotas are for: the assignment slot + 2.
	Slot int64
	// Users is how many users with a limit got quota on at least one node.
	Users int
	// Buckets is how many buckets exist (users with a limit × resources).
	Buckets int
	// Nodes is how many nodes were live.
	Nodes int
	// Entries is how many (node, user) quota entries were published.
	Entries int
}

// ErrAlreadyAssigned is returned by Assign for a slot that is not newer
// than the latest assignment.
var ErrAlreadyAssigned = errors.New("slot already assigned")

// Assign runs the assignment of slot: it refills every bucket, expires
// grants that waited LateSlots for their report, and splits each bucket
// among the live nodes that reported the user within Window slots, giving
// them their quotas for slot+2. A node is live when live says so and it
// sent a report for one of the last liveReportSlots slots; every edge node
// reports once a slot even when it has nothing to count. A node that is not
// live gets nothing, so its share goes to the others at once.
func (e *Engine) Assign(slot int64, live Liveness) (AssignResult, error) {
	e.assignMu.Lock()
	defer e.assignMu.Unlock()
	if last := e.lastAssigned.Load(); slot <= last {
		return AssignResult{}, fmt.Errorf("%w: slot %d, latest assignment %d", ErrAlreadyAssigned, slot, last)
	}
	target := slot + 2

	nodes := e.snapshotNodes()
	alive := make([]bool, len(nodes))
	var liveIDs []string
	for i, n := range nodes {
		if n == nil || n.newestSlot() < slot-liveReportSlots || (live != nil && !live.Live(n.id)) {
			continue
		}
		alive[i] = true
		liveIDs = append(liveIDs, n.id)
	}
	liveCount := len(liveIDs)
	e.liveNodes.Store(int64(liveCount))

	workers := min(runtime.GOMAXPROCS(0), shardCount)
	outputs := make([]*assignWorker, workers)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range outputs {
		aw := &assignWorker{engine: e, slot: slot, nodes: nodes, alive: alive, perNode: make([][]quotaEntry, len(nodes))}
		outputs[w] = aw
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= shardCount {
					return
				}
				aw.assignShard(&e.shards[i])
			}
		}()
	}
	wg.Wait()

	result := AssignResult{Slot: target, Nodes: liveCount}
	published := make(map[string]*nodeQuotas)
	for i, n := range nodes {
		if n == nil {
			continue
		}
		q := &nodeQuotas{slot: target}
		for _, aw := range outputs {
			q.entries = append(q.entries, aw.perNode[i]...)
		}
		n.publish(q)
		if len(q.entries) > 0 {
			published[n.id] = q
			result.Entries += len(q.entries)
		}
	}
	for _, aw := range outputs {
		result.Users += aw.users
		result.Buckets += aw.buckets
	}

	e.history.addAssignment(slot, target, liveIDs, published)
	e.pruneNodes(slot)
	e.lastAssigned.Store(slot)
	return result, nil
}

// assignWorker splits the buckets of the shards it takes and collects the
// quota entries per node index.
type assignWorker struct {
	engine  *Engine
	slot    int64
	nodes   []*nodeState
	alive   []bool
	perNode [][]quotaEntry
	users   int
	buckets int

	cands   []candidate
	members []*userNode
	split   []float64
	arena   []float64
}

// alloc returns a zeroed slice of n float64 cut from a shared block, so an
// assignment does not allocate once per (user, node).
func (w *assignWorker) alloc(n int) []float64 {
	if len(w.arena) < n {
		w.arena = make([]float64, max(4096, n))
	}
	s := w.arena[:n:n]
	w.arena = w.arena[n:]
	return s
}

// isAlive reports whether n was live when the assignment started. A node
// registered since then, possibly under a reused index, is not.
func (w *assignWorker) isAlive(n *nodeState) bool {
	return n.idx < len(w.nodes) && w.nodes[n.idx] == n && w.alive[n.idx]
}

func (w *assignWorker) assignShard(s *shard) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, u := range s.users {
		w.engine.pruneUser(u, w.slot)
		if u.limited == 0 {
			if len(u.nodes) == 0 {
				delete(s.users, k)
			}
			continue
		}
		w.buckets += u.limited
		if w.assignUser(u) {
			w.users++
		}
	}
}

// assignUser refills and splits every bucket of one user and records the
// quotas of slot+2. It reports whether any node got quota.
func (w *assignWorker) assignUser(u *userState) bool {
	e := w.engine
	slot, target := w.slot, w.slot+2

	w.members = w.members[:0]
	for _, un := range u.nodes {
		if w.isAlive(un.node) && un.slot > slot-1-Window {
			w.members = append(w.members, un)
		}
	}
	if e.mode == ModeReserve {
		expireGrants(u, slot)
	}

	n := len(w.members)
	for _, i := range u.limitedIdx {
		r := u.resources[i]
		switch {
		case e.mode == ModeClassic || r.started:
			r.refill(slot)
		case n > 0:
			r.start(slot)
		default:
			r.refilled = slot
		}
	}
	if n == 0 {
		for _, i := range u.limitedIdx {
			r := u.resources[i]
			r.grantedTotal = 0
			r.classifyRefunds(false)
		}
		return false
	}

	limited := len(u.limitedIdx)
	amounts := make([][]float64, n)
	shares := make([][]float64, n)
	for m := range w.members {
		amounts[m] = w.alloc(limited)
		if e.mode == ModeReserve {
			shares[m] = w.alloc(limited)
		}
	}
	if cap(w.split) < n {
		w.split = make([]float64, n)
		w.cands = make([]candidate, n)
	}
	split, cands := w.split[:n], w.cands[:n]

	for j, i := range u.limitedIdx {
		r := u.resources[i]
		for m, un := range w.members {
			un.grow(len(u.resources))
			cands[m] = candidate{
				slot:          un.slot,
				consumption:   un.consumption[i],
				rejection:     un.rejection[i],
				observedShare: un.observedShare[i],
			}
		}
		var granted float64
		if e.mode == ModeClassic {
			splitClassic(slot, max(r.level, 0), cands, split)
			for _, q := range split {
				granted += q
			}
		} else {
			r.classifyRefunds(anyRejection(cands))
			granted = splitReserve(r.level, r.credit, r.limit.Rate, cands, split)
			r.grant(granted)
		}
		r.grantedTotal = granted
		for m := range w.members {
			amounts[m][j] = split[m]
			if e.mode == ModeReserve && granted > 0 {
				shares[m][j] = split[m] / granted
			}
		}
	}

	for m, un := range w.members {
		if e.mode == ModeReserve {
			un.grants[target%quotaRing] = grant{slot: target, idx: u.limitedIdx, amounts: amounts[m], shares: shares[m]}
		}
		w.perNode[un.node.idx] = append(w.perNode[un.node.idx], quotaEntry{
			service:   u.key.service,
			user:      u.key.user,
			resources: u.limitedNames,
			amounts:   amounts[m],
		})
	}
	return true
}

// expireGrants counts as consumed every grant of the user that waited
// LateSlots slots for its report.
func expireGrants(u *userState, slot int64) {
	for _, un := range u.nodes {
		for gi := range un.grants {
			g := &un.grants[gi]
			if g.amounts == nil || g.slot+LateSlots > slot {
				continue
			}
			for j, i := range g.idx {
				r := u.resources[i]
				if r.hasLimit {
					r.outstanding = max(r.outstanding-g.amounts[j], 0)
				}
			}
			g.clear()
		}
	}
}

// pruneUser forgets nodes that have not reported the user for longer than
// the window and hold no grant waiting for a report.
func (e *Engine) pruneUser(u *userState, slot int64) {
	kept := u.nodes[:0]
	for _, un := range u.nodes {
		if un.slot > slot-1-Window-LateSlots || un.hasOpenGrants() {
			kept = append(kept, un)
		}
	}
	clear(u.nodes[len(kept):])
	u.nodes = kept
}

// pruneNodes drops nodes that have not reported for longer than the
// duplicate filter and the history reach back, and frees their index. No
// user refers to them any more by then, because pruneUser forgets a node
// after Window + LateSlots slots without a report.
func (e *Engine) pruneNodes(slot int64) {
	horizon := slot - int64(max(duplicateSlots, e.historySlots)) - 1
	e.nodesMu.Lock()
	defer e.nodesMu.Unlock()
	for id, n := range e.nodes {
		if n.newestSlot() < horizon {
			delete(e.nodes, id)
			e.nodeByIdx[n.idx] = nil
			e.freeIdx = append(e.freeIdx, n.idx)
		}
	}
}
