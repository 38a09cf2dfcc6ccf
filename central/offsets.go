package central

import "sync"

// clockOffsets keeps the clock offset of each edge node: the whole seconds
// added to the node's slot numbers to get the central's. A report's own
// offset comes from its arrival time, which a late or replayed report
// makes too large. So a larger offset is adopted only when two reports in
// a row show it. Until then the report keeps the node's offset and counts
// for its own second: a replay of a second already counted is a
// duplicate, and a late report cannot take the slot of the node's next
// report. A smaller offset is adopted at once, because neither lateness
// nor a replay makes one.
type clockOffsets struct {
	mu    sync.Mutex
	nodes map[string]*nodeOffset
}

// nodeOffset is one node's offset and the larger offset that its latest
// report showed, if any.
type nodeOffset struct {
	current    int64
	pending    int64
	hasPending bool
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
		o.nodes[node] = &nodeOffset{current: measured}
		return measured, 0, measured != 0, false
	}
	previous = n.current
	switch {
	case measured > n.current && !(n.hasPending && n.pending == measured):
		n.pending, n.hasPending = measured, true
		return n.current, previous, false, true
	case measured != n.current:
		n.current = measured
		changed = true
	}
	n.hasPending = false
	return n.current, previous, changed, true
}
