package quota

import (
	"cmp"
	"container/heap"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
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
	// Accuracy holds the amounts the nodes reported admitting in the slot
	// before the assignment slot, set against the limits.
	Accuracy Accuracy
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
	accuracy := Accuracy{Slot: slot - 1}
	for i, n := range nodes {
		if n == nil {
			continue
		}
		if n.hasApplied(accuracy.Slot) {
			accuracy.ReportedNodes++
		}
		newest := n.newestSlot()
		if newest < slot-liveReportSlots || (live != nil && !live.Live(n.id)) {
			if newest > slot-1-Window {
				accuracy.NodesWithoutQuota++
			}
			continue
		}
		alive[i] = true
		liveIDs = append(liveIDs, n.id)
	}
	liveCount := len(liveIDs)
	// An assignment that finds no live node keeps the previous count. The
	// first assignment of a new leader runs before any report reached it,
	// and the safe shares sent meanwhile must stay the limit divided among
	// the nodes last known live, not the whole limit.
	if liveCount > 0 {
		e.liveNodes.Store(int64(liveCount))
	}

	workers := min(runtime.GOMAXPROCS(0), shardCount)
	outputs := make([]*assignWorker, workers)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range outputs {
		aw := &assignWorker{engine: e, slot: slot, nodes: nodes, alive: alive, perNode: make([]entryChunks, len(nodes)),
			accuracy: accuracyTotals{top: topUsers{k: e.topUsers}}}
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
	accuracy.Resources, accuracy.TopUsers = mergeAccuracy(outputs, e.topUsers)
	result.Accuracy = accuracy

	e.history.addAssignment(slot, target, liveIDs, published)
	e.history.compact()
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

	accuracy accuracyTotals

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
		w.account(u)
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

// Accuracy holds the amounts the edge nodes reported admitting in the
// latest complete slot, set against the limits. The assignment of slot S
// sums the counts of S-1 that had arrived when it ran. A node sends its
// report of S-1 about 50 ms into S, and the assignment runs at the middle
// of S. A report that arrives later, or never, counts nothing here,
// although Ingest still bills it. So Admitted and Rejected are lower bounds
// when ReportedNodes is below the number of nodes that serve the users.
type Accuracy struct {
	// Slot is the slot whose counts are summed: the assignment slot - 1.
	Slot int64
	// ReportedNodes is how many nodes' reports of Slot had been ingested.
	ReportedNodes int
	// NodesWithoutQuota is how many nodes sent a report within the last
	// Window slots but were not live, so this assignment gave them no
	// quota and they admit by their fallback. A node that stopped counts
	// here until Window slots after its last report.
	NodesWithoutQuota int
	// Resources holds one entry per (service, resource) on which a user has
	// a limit, sorted by service and resource.
	Resources []ResourceAccuracy
	// TopUsers holds up to Config.TopUsers buckets with the highest
	// admitted/limit ratio in Slot, highest first. Ties are ordered by
	// service, user and resource.
	TopUsers []UserAccuracy
}

// ResourceAccuracy sums the counts of Accuracy.Slot over the users with a
// limit on one resource of one service.
type ResourceAccuracy struct {
	Service, Resource string
	// ActiveUsers is how many users consumed or were rejected on the
	// resource in the slot, on any node.
	ActiveUsers int
	// Admitted is the consumption the nodes reported for those users, in
	// the resource's unit.
	Admitted float64
	// Limit is the sum of the rates of those users, per slot, so that
	// Admitted/Limit is their admitted share of their limits.
	Limit float64
	// Rejected is the rejections the nodes reported for those users, in
	// requests.
	Rejected float64
	// RatioCounts counts the users that consumed the resource by their
	// admitted/rate ratio: RatioCounts[i] those above RatioBuckets()[i-1]
	// and at most RatioBuckets()[i], and the last entry those above every
	// bound. Users with a rate of 0 are left out, because their ratio is
	// not finite.
	RatioCounts []uint64
	// RatioSum is the sum of the ratios counted in RatioCounts.
	RatioSum float64
}

// UserAccuracy is one bucket's admitted amount in Accuracy.Slot against its
// rate.
type UserAccuracy struct {
	Service, User, Resource string
	Admitted, Limit, Ratio  float64
}

// ratioBuckets are the upper bounds of ResourceAccuracy.RatioCounts: fine
// around 1, where an exact limit lands, and coarse away from it. A ratio
// above 1 in one slot can be stored burst being spent.
var ratioBuckets = [...]float64{0.5, 0.8, 0.9, 0.95, 1, 1.05, 1.1, 1.2, 1.5, 2}

// RatioBuckets returns the upper bounds of ResourceAccuracy.RatioCounts,
// in increasing order.
func RatioBuckets() []float64 {
	return slices.Clone(ratioBuckets[:])
}

// ratioBucket returns the index in ResourceAccuracy.RatioCounts of ratio.
func ratioBucket(ratio float64) int {
	for i, bound := range ratioBuckets {
		if ratio <= bound {
			return i
		}
	}
	return len(ratioBuckets)
}

// hasApplied reports whether the counts of slot from n were applied.
func (n *nodeState) hasApplied(slot int64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.newest == 0 || slot > n.newest || slot <= n.newest-duplicateSlots {
		return false
	}
	return n.applied&(uint64(1)<<uint(n.newest-slot)) != 0
}

// accuracyTotals is one assignment worker's share of the Accuracy.
type accuracyTotals struct {
	services map[string]*serviceTotals
	// last caches the totals of the latest service looked up, because
	// consecutive users are often of the same service.
	last *serviceTotals
	top  topUsers
	// admitted and rejected hold the current user's sums over the nodes,
	// aligned with its limitedIdx.
	admitted, rejected []float64
}

// serviceTotals holds the totals of one service's resources, found by a
// scan because a service has few resources.
type serviceTotals struct {
	service   string
	resources []ResourceAccuracy
}

func (a *accuracyTotals) service(name string) *serviceTotals {
	if a.last != nil && a.last.service == name {
		return a.last
	}
	t := a.services[name]
	if t == nil {
		if a.services == nil {
			a.services = make(map[string]*serviceTotals)
		}
		t = &serviceTotals{service: name}
		a.services[name] = t
	}
	a.last = t
	return t
}

func (t *serviceTotals) resource(name string) *ResourceAccuracy {
	for i := range t.resources {
		if t.resources[i].Resource == name {
			return &t.resources[i]
		}
	}
	t.resources = append(t.resources, ResourceAccuracy{
		Service:     t.service,
		Resource:    name,
		RatioCounts: make([]uint64, len(ratioBuckets)+1),
	})
	return &t.resources[len(t.resources)-1]
}

// add adds the totals of o, of the same service and resource.
func (r *ResourceAccuracy) add(o *ResourceAccuracy) {
	r.ActiveUsers += o.ActiveUsers
	r.Admitted += o.Admitted
	r.Limit += o.Limit
	r.Rejected += o.Rejected
	for i, n := range o.RatioCounts {
		r.RatioCounts[i] += n
	}
	r.RatioSum += o.RatioSum
}

// account adds what the nodes reported about u for the slot before the
// assignment slot to the worker's accuracy totals. A node whose report of
// that slot has not been ingested counts nothing. The caller holds the
// user's shard lock.
func (w *assignWorker) account(u *userState) {
	reported := w.slot - 1
	limited := len(u.limitedIdx)
	a := &w.accuracy
	if cap(a.admitted) < limited {
		a.admitted = make([]float64, limited)
		a.rejected = make([]float64, limited)
	}
	admitted, rejected := a.admitted[:limited], a.rejected[:limited]
	clear(admitted)
	clear(rejected)
	for _, un := range u.nodes {
		if un.slot != reported {
			continue
		}
		for j, i := range u.limitedIdx {
			// A node's slices are shorter when the resource was added
			// after its latest report, which then did not name it.
			if i < len(un.consumption) {
				admitted[j] += un.consumption[i]
				rejected[j] += un.rejection[i]
			}
		}
	}

	totals := a.service(u.key.service)
	for j, i := range u.limitedIdx {
		r := u.resources[i]
		admitted, rejected := admitted[j], rejected[j]
		t := totals.resource(r.name)
		if admitted == 0 && rejected == 0 {
			continue
		}
		t.ActiveUsers++
		t.Admitted += admitted
		t.Rejected += rejected
		t.Limit += r.limit.Rate
		if admitted == 0 || r.limit.Rate == 0 {
			continue
		}
		ratio := admitted / r.limit.Rate
		t.RatioCounts[ratioBucket(ratio)]++
		t.RatioSum += ratio
		a.top.offer(u.key.service, u.key.user, r.name, admitted, r.limit.Rate, ratio)
	}
}

// topUsers keeps the k highest-ranked buckets offered, as a heap
// (container/heap) whose root is the lowest-ranked one kept.
type topUsers struct {
	k    int
	kept []UserAccuracy
}

func (t *topUsers) Len() int           { return len(t.kept) }
func (t *topUsers) Less(i, j int) bool { return ranksAbove(&t.kept[j], &t.kept[i]) }
func (t *topUsers) Swap(i, j int)      { t.kept[i], t.kept[j] = t.kept[j], t.kept[i] }
func (t *topUsers) Push(x any)         { t.kept = append(t.kept, x.(UserAccuracy)) }

func (t *topUsers) Pop() any {
	last := t.kept[len(t.kept)-1]
	t.kept = t.kept[:len(t.kept)-1]
	return last
}

// offer keeps the bucket when it ranks among the k highest so far.
func (t *topUsers) offer(service, user, resource string, admitted, limit, ratio float64) {
	if t.k == 0 || (len(t.kept) == t.k && ratio < t.kept[0].Ratio) {
		return
	}
	u := UserAccuracy{Service: service, User: user, Resource: resource, Admitted: admitted, Limit: limit, Ratio: ratio}
	if len(t.kept) < t.k {
		heap.Push(t, u)
		return
	}
	if ranksAbove(&u, &t.kept[0]) {
		t.kept[0] = u
		heap.Fix(t, 0)
	}
}

// ranksAbove reports whether a comes before b in Accuracy.TopUsers: a
// higher ratio, or the same ratio and a lower service, user and resource.
func ranksAbove(a, b *UserAccuracy) bool {
	if a.Ratio != b.Ratio {
		return a.Ratio > b.Ratio
	}
	return cmp.Or(
		strings.Compare(a.Service, b.Service),
		strings.Compare(a.User, b.User),
		strings.Compare(a.Resource, b.Resource),
	) < 0
}

// mergeAccuracy joins the workers' totals into the Resources and the k
// TopUsers of an Accuracy.
func mergeAccuracy(outputs []*assignWorker, k int) ([]ResourceAccuracy, []UserAccuracy) {
	type key struct{ service, resource string }
	index := make(map[key]int)
	var resources []ResourceAccuracy
	var top []UserAccuracy
	for _, aw := range outputs {
		for _, totals := range aw.accuracy.services {
			for j := range totals.resources {
				t := &totals.resources[j]
				k := key{t.Service, t.Resource}
				if i, ok := index[k]; ok {
					resources[i].add(t)
					continue
				}
				index[k] = len(resources)
				resources = append(resources, *t)
			}
		}
		top = append(top, aw.accuracy.top.kept...)
	}
	slices.SortFunc(resources, func(a, b ResourceAccuracy) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Resource, b.Resource))
	})
	slices.SortFunc(top, func(a, b UserAccuracy) int {
		if ranksAbove(&a, &b) {
			return -1
		}
		if ranksAbove(&b, &a) {
			return 1
		}
		return 0
	})
	return resources, top[:min(k, len(top))]
}
