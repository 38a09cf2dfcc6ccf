package central

import "sync"

// offsetWindow is how many of a node's latest reports its clock offset is
// taken from.
const offsetWindow = 5

// clockOffsets keeps the clock offset of each edge node: the whole seconds
// added to the node's slot numbers to get the central's. A report's own
// offset comes from its arrival time, which a late or replayed report
// makes too large, and nothing makes too small. So a node's offset is the
// smallest that its latest offsetWindow reports showed. A late report or a
// replay then counts for the second it was sent for, and a replay of a
// second already counted is a duplicate, however often it is sent.
//
// NOTE: after a node's clock steps back by whole seconds, its reports map
// onto seconds already counted until offsetWindow reports have shown the
// new offset, and their counts are dropped as duplicates. A new leader
// takes a node's first report as it comes, so a burst of one node's
// queued reports can map onto one second.
type clockOffsets struct {
	mu    sync.Mutex
	nodes map[string]*nodeOffset
}

// nodeOffset is one node's offset and the offsets its latest reports
// showed, in a ring of n entries.
type nodeOffset struct {
	current int64
	seen    [offsetWindow]int64
	n, next int
}

// resolve returns the offset for a report of node whose arrival time gives
// measured. It also returns the node's previous offset and whether the
// offset changed, and known is false for the node's first report.
func (o *clockOffsets) resolve(node string, measured int64) (offset, previous int64, changed, known bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.nodes == nil {
		o.nodes = make(map[string]*nodeOffset)
	}
	n, known := o.nodes[node]
	if !known {
		n = &nodeOffset{}
		o.nodes[node] = n
	}
	n.seen[n.next] = measured
	n.next = (n.next + 1) % offsetWindow
	n.n = min(n.n+1, offsetWindow)
	previous = n.current
	n.current = n.seen[0]
	for _, seen := range n.seen[1:n.n] {
		n.current = min(n.current, seen)
	}
	if !known {
		return n.current, 0, n.current != 0, false
	}
	return n.current, previous, n.current != previous, true
}

// reset drops every node's offset, for a new leadership term.
func (o *clockOffsets) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.nodes = nil
}
