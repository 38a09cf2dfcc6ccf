package quota

import "github.com/throttlecentral/throttle-central/protocol"

// Quotas returns node's quotas for slot, for each of services: the shape of
// a report's reply. Every service asked for is present, possibly empty,
// and no other service is, because the Lua client rejects a reply that
// names a service it did not report.
func (e *Engine) Quotas(nodeID string, slot int64, services []string) map[string]protocol.Quotas {
	out := make(map[string]protocol.Quotas, len(services))
	for _, s := range services {
		out[s] = protocol.Quotas{}
	}
	n := e.lookupNode(nodeID)
	if n == nil {
		return out
	}
	addQuotas(out, n.quotasFor(slot))
	return out
}

// QuotaEntry is one user's quotas of one service on one node. Resources
// and Amounts are aligned, and shared with the engine: callers must not
// change them.
type QuotaEntry struct {
	Service, User string
	Resources     []string
	Amounts       []float64
}

// EachNodeQuotas calls fn for every node that has quotas for slot, with all
// of that node's entries in no particular order. The central calls it
// after an assignment to encode the replies ahead of the reports that
// fetch them.
func (e *Engine) EachNodeQuotas(slot int64, fn func(nodeID string, entries []QuotaEntry)) {
	var entries []QuotaEntry
	for _, n := range e.snapshotNodes() {
		if n == nil {
			continue
		}
		q := n.quotasFor(slot)
		if q == nil {
			continue
		}
		entries = entries[:0]
		for _, entry := range q.entries {
			entries = append(entries, QuotaEntry{Service: entry.service, User: entry.user, Resources: entry.resources, Amounts: entry.amounts})
		}
		fn(n.id, entries)
	}
}

// addQuotas adds the entries of q for the services already in out.
func addQuotas(out map[string]protocol.Quotas, q *nodeQuotas) {
	if q == nil {
		return
	}
	for _, entry := range q.entries {
		quotas, ok := out[entry.service]
		if !ok {
			continue
		}
		resources := make(map[string]float64, len(entry.resources))
		for i, name := range entry.resources {
			resources[name] = entry.amounts[i]
		}
		quotas[entry.user] = resources
	}
}

// LiveNodes returns how many live nodes the latest assignment that found
// any counted, or before such an assignment the restored checkpoint's
// count, or else how many nodes have reported.
func (e *Engine) LiveNodes() int {
	if n := e.liveNodes.Load(); n > 0 {
		return int(n)
	}
	e.nodesMu.RLock()
	defer e.nodesMu.RUnlock()
	return len(e.nodes)
}

// Shares returns the safe fallback of the given users of one service: each
// limited resource's rate divided among the live nodes of the latest
// assignment (see LiveNodes, at least one). An edge node that has no quota for the current
// slot may admit that much per slot; together the live nodes then admit at
// most the limit. Users without a limit are left out.
func (e *Engine) Shares(service string, users []string) protocol.Shares {
	nodes := max(e.LiveNodes(), 1)
	out := make(protocol.Shares)
	for _, user := range users {
		k := userKey{service, user}
		s := e.shardOf(k)
		s.mu.Lock()
		if u := s.users[k]; u != nil && u.limited > 0 {
			shares := make(map[string]float64, u.limited)
			for _, i := range u.limitedIdx {
				r := u.resources[i]
				shares[r.name] = r.limit.Rate / float64(nodes)
			}
			out[user] = shares
		}
		s.mu.Unlock()
	}
	return out
}
