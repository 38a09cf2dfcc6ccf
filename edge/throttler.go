// Package edge is the throttle logic of an edge node. It counts each user's
// consumption and rejections per slot and caches the quotas and safe shares
// that the central sends. It decides whether a request may be served, and
// builds the report that the node sends once a slot.
//
// Throttler is pure logic: every method takes the slot it acts on, and it
// never reads the clock, does I/O or starts goroutines. Client wraps a
// Throttler with the clock and the report loop: it sends the reports to the
// centrals, fails over between them and stores the quotas they return.
package edge

import (
	"errors"
	"fmt"

	"github.com/throttlecentral/throttle-central/protocol"
)

// DefaultKeepSlots is how many slots of quotas a Throttler caches per
// service when Options.KeepSlots is 0. The lua-resty-throttle client keeps
// the last 10 slots too.
const DefaultKeepSlots = 10

// Options configures a Throttler. The zero value is valid: safe-share
// fallback for every service and DefaultKeepSlots slots of quotas.
type Options struct {
	// DefaultFallback is the fallback policy of services without an entry in
	// ServiceFallback.
	DefaultFallback FallbackPolicy
	// ServiceFallback overrides DefaultFallback per service name.
	ServiceFallback map[string]FallbackPolicy
	// KeepSlots is how many slots of quotas to cache per service, counted
	// back from the newest cached slot. 0 means DefaultKeepSlots.
	KeepSlots int
}

// Throttler is the throttle state of one edge node.
//
// Locking: the counters are split into 64 shards by a hash of (service,
// user), each behind its own mutex, so Throttle and Consume lock one shard
// and requests of different users rarely wait for each other. The quota
// cache is copy-on-write: SetQuotas, SetShares and TakeReport build a new
// copy of each service they change under a writer mutex and publish it
// with an atomic pointer, so Throttle reads quotas without a lock. TakeReport locks
// the shards one at a time, never two at once. All methods are safe for
// concurrent use.
type Throttler struct {
	defaultFallback FallbackPolicy
	serviceFallback map[string]FallbackPolicy // never changed after NewThrottler

	quotas *quotaCache
	shards [shardCount]counterShard
}

// NewThrottler returns a Throttler with no quotas, shares or counts. It
// returns an error that wraps ErrInvalidFallbackPolicy for a fallback
// policy outside the defined ones, and an error for an empty service name
// in ServiceFallback or a negative KeepSlots.
func NewThrottler(options Options) (*Throttler, error) {
	if err := options.DefaultFallback.validate(); err != nil {
		return nil, fmt.Errorf("edge: default fallback policy: %w", err)
	}
	serviceFallback := make(map[string]FallbackPolicy, len(options.ServiceFallback))
	for service, policy := range options.ServiceFallback {
		if service == "" {
			return nil, errors.New("edge: fallback policy for an empty service name: use DefaultFallback for all services")
		}
		if err := policy.validate(); err != nil {
			return nil, fmt.Errorf("edge: fallback policy of service %q: %w", service, err)
		}
		serviceFallback[service] = policy
	}

	keepSlots := options.KeepSlots
	switch {
	case keepSlots < 0:
		return nil, fmt.Errorf("edge: invalid KeepSlots %d: must be 1 or more, or 0 for the default %d", keepSlots, DefaultKeepSlots)
	case keepSlots == 0:
		keepSlots = DefaultKeepSlots
	}

	t := &Throttler{
		defaultFallback: options.DefaultFallback,
		serviceFallback: serviceFallback,
		quotas:          newQuotaCache(keepSlots),
	}
	for i := range t.shards {
		t.shards[i].counters = make(map[counterKey]*userCounters)
	}
	return t, nil
}

// FallbackPolicy returns the fallback policy in force for service.
func (t *Throttler) FallbackPolicy(service string) FallbackPolicy {
	if policy, ok := t.serviceFallback[service]; ok {
		return policy
	}
	return t.defaultFallback
}

// SetQuotas stores the node's quotas of service for slot, replacing any
// earlier quotas for that service and slot. Nil quotas are stored as an
// empty set: the central replied, with no entry for any user. The cache
// keeps the slots newer than the newest cached slot minus KeepSlots, drops
// older ones, and ignores quotas for a slot that old. The quotas are copied.
func (t *Throttler) SetQuotas(service string, slot int64, quotas protocol.Quotas) {
	t.quotas.setQuotas(service, slot, quotas)
}

// SetShares replaces the safe shares of service: per user and resource, the
// tokens per slot this node may admit when it has no quota for the user.
// Nil or empty shares remove them. The shares are copied.
func (t *Throttler) SetShares(service string, shares protocol.Shares) {
	t.quotas.setShares(service, shares)
}

// Throttle decides whether a request of user to service may be served in
// slot. It applies the Lua client's rules when the node has quotas of the
// service for the slot:
//   - no entry for the user: allowed, unless the service's fallback policy
//     is safe-share and the user's safe share is known, which is then
//     enforced as the quota;
//   - for each resource in the user's entry, a quota below 1 rejects, and a
//     consumption so far in the slot strictly above the quota rejects;
//   - otherwise allowed, including for resources not in the entry.
//
// Without quotas of the service for the slot, the service's fallback policy
// decides: open allows, closed rejects, and safe-share enforces the user's
// safe share with the same two rules and allows a user whose share is not
// known.
//
// A rejection adds one to the user's rejection count of the exhausted
// resource in slot.
//
// NOTE: a closed-policy rejection is not counted, because no resource was
// checked and the report can only attribute a rejection to a resource.
func (t *Throttler) Throttle(slot int64, service, user string) Decision {
	cache := t.quotas.load(service)
	if cache != nil {
		if users, ok := cache.quotasAt(slot); ok {
			if quotas, ok := users[user]; ok {
				return t.enforce(slot, service, user, quotas, SourceCentral)
			}
			if share, ok := cache.shares[user]; ok && t.FallbackPolicy(service) == FallbackSafeShare {
				return t.enforce(slot, service, user, share, SourceFallback)
			}
			return Decision{Allowed: true, Source: SourceCentral}
		}
	}

	switch t.FallbackPolicy(service) {
	case FallbackOpen:
		return Decision{Allowed: true, Source: SourceFallback}
	case FallbackClosed:
		return Decision{Allowed: false, Source: SourceFallback}
	}
	if cache != nil {
		if share, ok := cache.shares[user]; ok {
			return t.enforce(slot, service, user, share, SourceFallback)
		}
	}
	return Decision{Allowed: true, Source: SourceFallback}
}

// enforce checks the user's consumption in slot against quotas, and counts a
// rejection on the first resource, in name order, that fails.
func (t *Throttler) enforce(slot int64, service, user string, quotas []resourceQuota, source QuotaSource) Decision {
	if len(quotas) == 0 {
		return Decision{Allowed: true, Source: source}
	}

	shard := &t.shards[shardIndex(service, user)]
	shard.mu.Lock()
	defer shard.mu.Unlock()

	key := counterKey{slot: slot, service: service, user: user}
	counters := shard.countersLocked(key, false)
	for _, quota := range quotas {
		var consumption float64
		if counters != nil {
			consumption = counters.consumption[quota.resource]
		}
		// The two rules are written as the Lua client states them. A NaN
		// quota fails both comparisons, so it allows the request.
		rejected := quota.quota < 1 || consumption > quota.quota
		if !rejected {
			continue
		}

		if counters == nil {
			counters = shard.countersLocked(key, true)
		}
		if counters.rejection == nil {
			counters.rejection = make(map[string]float64, 1)
		}
		counters.rejection[quota.resource]++
		return Decision{
			Allowed:     false,
			Source:      source,
			Resource:    quota.resource,
			Quota:       quota.quota,
			Consumption: consumption,
		}
	}
	return Decision{Allowed: true, Source: source}
}
