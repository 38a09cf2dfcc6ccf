package edge

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/throttlecentral/throttle-central/protocol"
)

// resourceQuota is the quota or safe share of one resource.
type resourceQuota struct {
	resource string
	quota    float64
}

// userQuotas maps a user to its quotas, sorted by resource name so that the
// check visits the resources in the same order every time and attributes a
// rejection to the same resource.
type userQuotas map[string][]resourceQuota

// slotQuotas is the node's quotas of one service for one slot.
type slotQuotas struct {
	slot  int64
	users userQuotas
}

// serviceCache is the cached quotas and safe shares of one service. It is
// never changed after it is published: writers build a new one and swap it
// in, so readers use it without a lock.
type serviceCache struct {
	slots  []slotQuotas // ascending by slot
	shares userQuotas
}

// quotasAt returns the quotas for slot, and false when none are cached.
func (c *serviceCache) quotasAt(slot int64) (userQuotas, bool) {
	for i := range c.slots {
		if c.slots[i].slot == slot {
			return c.slots[i].users, true
		}
	}
	return nil, false
}

func (c *serviceCache) empty() bool {
	return len(c.slots) == 0 && len(c.shares) == 0
}

// serviceEntry is the swappable pointer to one service's cache. It stays
// in the service map while the service has quotas or shares, so replacing a
// service's cache does not copy the map.
type serviceEntry struct {
	cache atomic.Pointer[serviceCache]
}

// quotaCache stores the quotas and safe shares of every service. Readers
// load the service map and the service's cache atomically and take no lock.
// Writers hold mu, copy what they change and publish it, and copy the
// service map only when a service is added or removed.
type quotaCache struct {
	keepSlots int64

	mu       sync.Mutex
	services atomic.Pointer[map[string]*serviceEntry]
}

func newQuotaCache(keepSlots int) *quotaCache {
	c := &quotaCache{keepSlots: int64(keepSlots)}
	services := make(map[string]*serviceEntry)
	c.services.Store(&services)
	return c
}

// load returns the service's cache, or nil when nothing is cached for it.
func (c *quotaCache) load(service string) *serviceCache {
	entry := (*c.services.Load())[service]
	if entry == nil {
		return nil
	}
	return entry.cache.Load()
}

// setQuotas stores quotas for one slot of a service, replacing earlier
// quotas for that slot. It drops the slots at or before the newest cached
// slot minus keepSlots, and does not store quotas for a slot that old.
func (c *quotaCache) setQuotas(service string, slot int64, quotas protocol.Quotas) {
	c.mu.Lock()
	defer c.mu.Unlock()

	old := c.loadLocked(service)
	newest := slot
	if n := len(old.slots); n > 0 {
		newest = max(newest, old.slots[n-1].slot)
	}
	oldest := newest - c.keepSlots + 1
	if slot < oldest {
		return
	}

	next := &serviceCache{
		slots:  make([]slotQuotas, 0, len(old.slots)+1),
		shares: old.shares,
	}
	for _, cached := range old.slots {
		if cached.slot >= oldest && cached.slot != slot {
			next.slots = append(next.slots, cached)
		}
	}
	next.slots = append(next.slots, slotQuotas{slot: slot, users: copyUserQuotas(quotas)})
	slices.SortFunc(next.slots, func(a, b slotQuotas) int {
		return cmp.Compare(a.slot, b.slot)
	})

	c.storeLocked(service, next)
}

// setShares replaces the safe shares of a service. Nil or empty shares
// remove them.
func (c *quotaCache) setShares(service string, shares protocol.Shares) {
	c.mu.Lock()
	defer c.mu.Unlock()

	old := c.loadLocked(service)
	next := &serviceCache{slots: old.slots}
	if len(shares) > 0 {
		next.shares = copyUserQuotas(protocol.Quotas(shares))
	}
	c.storeLocked(service, next)
}

// prune drops the quotas of slots at or before slot-keepSlots in every
// service, and returns the services that still have quotas cached.
func (c *quotaCache) prune(slot int64) []string {
	c.mu.Lock()
	defer c.mu.Unlock()

	oldest := slot - c.keepSlots + 1
	var withQuotas []string
	for service, entry := range *c.services.Load() {
		old := entry.cache.Load()
		keep := 0
		for keep < len(old.slots) && old.slots[keep].slot < oldest {
			keep++
		}
		if keep > 0 {
			c.storeLocked(service, &serviceCache{slots: old.slots[keep:], shares: old.shares})
		}
		if len(old.slots) > keep {
			withQuotas = append(withQuotas, service)
		}
	}
	return withQuotas
}

// loadLocked returns the service's cache, or an empty one. The caller
// holds mu.
func (c *quotaCache) loadLocked(service string) *serviceCache {
	if cache := c.load(service); cache != nil {
		return cache
	}
	return &serviceCache{}
}

// storeLocked publishes next as the service's cache, and adds or removes the
// service in the service map when needed. The caller holds mu.
func (c *quotaCache) storeLocked(service string, next *serviceCache) {
	services := *c.services.Load()
	entry, found := services[service]
	switch {
	case found && next.empty():
		copied := make(map[string]*serviceEntry, len(services))
		for name, e := range services {
			if name != service {
				copied[name] = e
			}
		}
		c.services.Store(&copied)
	case found:
		entry.cache.Store(next)
	case !next.empty():
		entry = &serviceEntry{}
		entry.cache.Store(next)
		copied := make(map[string]*serviceEntry, len(services)+1)
		for name, e := range services {
			copied[name] = e
		}
		copied[service] = entry
		c.services.Store(&copied)
	}
}

// copyUserQuotas copies quotas into the sorted form the check reads, so
// that later changes to the caller's maps do not reach the cache.
func copyUserQuotas(quotas protocol.Quotas) userQuotas {
	total := 0
	for _, resources := range quotas {
		total += len(resources)
	}

	// One backing array for all users keeps the copy to two allocations
	// besides the map.
	backing := make([]resourceQuota, 0, total)
	users := make(userQuotas, len(quotas))
	for user, resources := range quotas {
		start := len(backing)
		for resource, quota := range resources {
			backing = append(backing, resourceQuota{resource: resource, quota: quota})
		}
		entry := backing[start:len(backing):len(backing)]
		slices.SortFunc(entry, func(a, b resourceQuota) int {
			return strings.Compare(a.resource, b.resource)
		})
		users[user] = entry
	}
	return users
}
