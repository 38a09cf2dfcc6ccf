package central

import (
	"slices"
	"strings"
	"sync"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/quota"
)

// encodedSlots is how many slots of encoded quotas the cache keeps: the
// slot being reported for, and the next one, already assigned.
const encodedSlots = 2

// replyCache contains each node's quotas of the newest assigned slots,
// encoded per service right after the assignment. The reports that fetch
// them arrive about half a second later, nearly all at once, so encoding
// ahead takes that work out of the burst, and building a reply becomes
// mostly a copy. For a node or slot that is not in the cache, the reply is
// built from the engine's quotas.
type replyCache struct {
	mu    sync.RWMutex
	slots map[int64]*encodedSlot
}

// encodedSlot is one slot's encoded quotas, by node and service. engine is
// the engine that assigned them, so a cache filled under an earlier
// leadership is never used by the next one.
type encodedSlot struct {
	engine *quota.Engine
	nodes  map[string]map[string][]byte
}

// emptyQuotas is the encoded quotas of a service with no entry for the node.
var emptyQuotas = []byte("{}")

// fill encodes the quotas e assigned for slot and drops older slots.
func (c *replyCache) fill(e *quota.Engine, slot int64) {
	nodes := make(map[string]map[string][]byte)
	e.EachNodeQuotas(slot, func(node string, entries []quota.QuotaEntry) {
		// The entries are grouped by service, which is all the encoding
		// needs: the users of a service may come in any order. Sorting them
		// took about a twentieth of the leader's CPU at 500 nodes.
		if !oneService(entries) {
			slices.SortStableFunc(entries, func(a, b quota.QuotaEntry) int { return strings.Compare(a.Service, b.Service) })
		}
		byService := make(map[string][]byte)
		for start := 0; start < len(entries); {
			end := start + 1
			for end < len(entries) && entries[end].Service == entries[start].Service {
				end++
			}
			group := entries[start:end]
			byService[entries[start].Service] = api.AppendQuotaEntries(make([]byte, 0, api.QuotaEntriesSize(group)), group)
			start = end
		}
		nodes[node] = byService
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slots == nil {
		c.slots = make(map[int64]*encodedSlot)
	}
	c.slots[slot] = &encodedSlot{engine: e, nodes: nodes}
	for s := range c.slots {
		if s <= slot-encodedSlots {
			delete(c.slots, s)
		}
	}
}

// oneService reports whether every entry is of the same service.
func oneService(entries []quota.QuotaEntry) bool {
	for i := 1; i < len(entries); i++ {
		if entries[i].Service != entries[0].Service {
			return false
		}
	}
	return true
}

// lookup returns the encoded quotas of node for slot, for each of services,
// or nil when e has not encoded that node's quotas for the slot.
func (c *replyCache) lookup(e *quota.Engine, slot int64, node string, services []string) map[string][]byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	encoded := c.slots[slot]
	if encoded == nil || encoded.engine != e {
		return nil
	}
	byService, ok := encoded.nodes[node]
	if !ok {
		return nil
	}
	out := make(map[string][]byte, len(services))
	for _, service := range services {
		if quotas, ok := byService[service]; ok {
			out[service] = quotas
		} else {
			out[service] = emptyQuotas
		}
	}
	return out
}

// clear drops every slot, to free the memory when leadership ends.
func (c *replyCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.slots = nil
}
