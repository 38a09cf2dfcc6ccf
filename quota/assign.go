package quota

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
)

// Liveness reports which edge nodes may receive quota. A nil
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
// them their quotas for slot+2. A node is live when live reports it live and it
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
	// An assignment that finds no live node, as the first one of a new
	// leader does before any report reached it, keeps the previous count,
	// so the safe shares sent meanwhile stay the limit divided among the
	// nodes last known live instead of the whole limit.
	if liveCount > 0 {
		e.liveNodes.Store(int64(liveCount))
	}

	workers := min(runtime.GOMAXPROCS(0), shardCount)
	outputs := make([]*assignWorker, workers)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range outputs {
		aw := &assignWorker{engine: e, slot: slot, nodes: nodes, alive: alive, perNode: make([]entryChunks, len(nodes))}
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

	lists := mergeEntries(nodes, outputs, workers)
	result := AssignResult{Slot: target, Nodes: liveCount}
	published := make(map[string]*nodeQuotas)
	for i, n := range nodes {
		if n == nil {
			continue
		}
		q := &nodeQuotas{slot: target, entries: lists[i]}
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

// mergeEntries returns the quota entries of each node index, joining the
// lists of all workers. Each list is allocated at its final size and filled
// with one copy, and the nodes are divided among `workers` goroutines.
func mergeEntries(nodes []*nodeState, outputs []*assignWorker, workers int) [][]quotaEntry {
	lists := make([][]quotaEntry, len(nodes))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(nodes) {
					return
				}
				if nodes[i] == nil {
					continue
				}
				total := 0
				for _, aw := range outputs {
					total += aw.perNode[i].len
				}
				if total == 0 {
					continue
				}
				entries := make([]quotaEntry, 0, total)
				for _, aw := range outputs {
					for _, chunk := range aw.perNode[i].chunks {
						entries = append(entries, chunk...)
					}
				}
				lists[i] = entries
			}
		})
	}
	wg.Wait()
	return lists
}

// Sizes of the chunks in which a worker collects one node's quota entries.
// The first chunk is small because many nodes get few entries, and each
// next one doubles up to the maximum.
const (
	minEntryChunk = 16
	maxEntryChunk = 4096
)

// entryChunks is a list of quota entries kept in chunks, so it grows without
// copying what it already holds, as append would on every reallocation.
type entryChunks struct {
	chunks [][]quotaEntry
	len    int
}

func (c *entryChunks) add(entry quotaEntry) {
	last := len(c.chunks) - 1
	if last < 0 || len(c.chunks[last]) == cap(c.chunks[last]) {
		size := minEntryChunk
		if last >= 0 {
			size = min(2*cap(c.chunks[last]), maxEntryChunk)
		}
		c.chunks = append(c.chunks, make([]quotaEntry, 0, size))
		last++
	}
	c.chunks[last] = append(c.chunks[last], entry)
	c.len++
}

// assignWorker splits the buckets of the shards it takes and collects the
// quota entries per node index.
type assignWorker struct {
	engine  *Engine
	slot    int64
	nodes   []*nodeState
	alive   []bool
	perNode []entryChunks
	users   int
	buckets int

	cands   []candidate
	members []*userNode
	split   []float64
	// amountArena and shareArena are separate because the monitor history
	// keeps the amounts of HistorySlots slots, while shares are needed only
	// until their grant is settled or expires.
	amountArena floatArena
	shareArena  floatArena
	// amountRows and shareRows hold, per member of the current user, the
	// slices cut from the arenas for its amounts and shares.
	amountRows [][]float64
	shareRows  [][]float64
}

// floatArena cuts float64 slices from shared blocks, so an assignment does
// not allocate once per (user, node). A block stays in memory while any
// slice cut from it is referenced.
type floatArena []float64

// alloc returns a zeroed slice of n float64.
func (a *floatArena) alloc(n int) []float64 {
	if len(*a) < n {
		*a = make([]float64, max(4096, n))
	}
	s := (*a)[:n:n]
	*a = (*a)[n:]
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
			un.grow(len(u.resources))
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
	if cap(w.amountRows) < n {
		w.amountRows = make([][]float64, n)
		w.shareRows = make([][]float64, n)
	}
	amounts, shares := w.amountRows[:n], w.shareRows[:n]
	for m := range w.members {
		amounts[m] = w.amountArena.alloc(limited)
		if e.mode == ModeReserve {
			shares[m] = w.shareArena.alloc(limited)
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
			un.grantsFrom = min(un.grantsFrom, target)
		}
		w.perNode[un.node.idx].add(quotaEntry{
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
		if slot-LateSlots < un.grantsFrom {
			continue
		}
		oldest := int64(math.MaxInt64)
		for gi := range un.grants {
			g := &un.grants[gi]
			if g.amounts == nil {
				continue
			}
			if g.slot+LateSlots > slot {
				oldest = min(oldest, g.slot)
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
		un.grantsFrom = oldest
	}
}

// pruneUser removes nodes that have not reported the user for longer than
// the window and hold no grant waiting for a report.
func (e *Engine) pruneUser(u *userState, slot int64) {
	kept := u.nodes[:0]
	for _, un := range u.nodes {
		if un.slot > slot-1-Window-LateSlots || un.hasOpenGrants() {
			kept = append(kept, un)
		}
	}
	removed := len(u.nodes) - len(kept)
	clear(u.nodes[len(kept):])
	u.nodes = kept
	if removed > 0 && u.byNode != nil {
		u.indexNodes()
	}
}

// pruneNodes drops nodes that have not reported for longer than the
// duplicate filter and the history reach back, and frees their index. No
// user refers to them any more by then, because pruneUser removes a node
// after Window + LateSlots slots without a report.
func (e *Engine) pruneNodes(slot int64) {
	horizon := slot - int64(max(duplicateSlots, e.historySlots)) - 1
	e.nodesMu.Lock()
	defer e.nodesMu.Unlock()
	for id, n := range e.nodes {
		if n.prune(horizon) {
			delete(e.nodes, id)
			e.nodeByIdx[n.idx] = nil
			e.freeIdx = append(e.freeIdx, n.idx)
		}
	}
}
