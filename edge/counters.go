package edge

import (
	"math"
	"sync"

	"github.com/throttlecentral/throttle-central/protocol"
)

// shardCount is the number of counter shards. A power of two lets the shard
// be picked with a mask. 64 is an estimate, measured only on 2 cores: enough
// shards to spread the requests of tens of cores, and few enough locks for
// TakeReport to visit once a slot.
const shardCount = 64

// counterKey identifies the counters of one user of one service in one slot.
type counterKey struct {
	slot    int64
	service string
	user    string
}

// userCounters is the consumption and rejection of one user in one slot,
// by resource. A map is nil until its first count.
type userCounters struct {
	consumption map[string]float64
	rejection   map[string]float64
}

// counterShard holds the counters of the (service, user) pairs that hash to
// it. The padding makes a shard 64 bytes, so no two shards' mutexes share a
// 64-byte cache line and goroutines on different shards do not contend for
// one line.
type counterShard struct {
	mu       sync.Mutex
	counters map[counterKey]*userCounters
	_        [64 - 16]byte
}

// shardIndex hashes service and user with 64-bit FNV-1a. The 0xff byte
// between them cannot occur in UTF-8, so ("ab", "c") and ("a", "bc") hash
// differently.
func shardIndex(service, user string) int {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	hash := uint64(offset)
	for i := 0; i < len(service); i++ {
		hash = (hash ^ uint64(service[i])) * prime
	}
	hash = (hash ^ 0xff) * prime
	for i := 0; i < len(user); i++ {
		hash = (hash ^ uint64(user[i])) * prime
	}
	return int(hash & (shardCount - 1))
}

// countersLocked returns the counters for key, creating them when create is
// true, or nil. The caller holds the shard's mutex.
func (s *counterShard) countersLocked(key counterKey, create bool) *userCounters {
	counters := s.counters[key]
	if counters == nil && create {
		counters = &userCounters{}
		s.counters[key] = counters
	}
	return counters
}

// validAmount reports whether amount can be counted. encoding/json cannot
// encode NaN or infinity, and the central rejects a whole report with a
// negative number, so such amounts are never counted.
func validAmount(amount float64) bool {
	return amount >= 0 && !math.IsInf(amount, 1)
}

// Consume adds amounts (resource -> amount) to the user's consumption in
// slot. The edge calls it after serving a request, and may call it for
// rejected requests too, as the Lua client does when its log phase runs for
// them. Negative, NaN and infinite amounts are skipped.
//
// Consumption of a slot is reported by TakeReport one slot later. Counts
// added to a slot after its report was taken are dropped by the next
// TakeReport.
func (t *Throttler) Consume(slot int64, service, user string, amounts map[string]float64) {
	shard := &t.shards[shardIndex(service, user)]
	shard.mu.Lock()
	defer shard.mu.Unlock()

	// The counters are created at the first valid amount, so a call with
	// none leaves no empty entry behind.
	var counters *userCounters
	for resource, amount := range amounts {
		if !validAmount(amount) {
			continue
		}
		if counters == nil {
			counters = shard.countersLocked(counterKey{slot: slot, service: service, user: user}, true)
			if counters.consumption == nil {
				counters.consumption = make(map[string]float64, len(amounts))
			}
		}
		counters.consumption[resource] += amount
	}
}

// TakeReport builds the report that the node sends in slot: the consumption
// and rejection counted in slot-1. Every service that has quotas cached or
// has counts in slot-1 is present in both maps, with an empty user map when
// it has no counts of that kind, as the Lua client sends it.
//
// TakeReport then drops the counters of slot-1 and of every older slot, so
// a second call for the same slot returns empty counts. Counters of slot and
// later slots stay. It also drops cached quotas of slots at or before
// slot-KeepSlots, so a service whose quotas stopped arriving and that has no
// counts leaves the report.
func (t *Throttler) TakeReport(nodeID string, slot int64) protocol.Report {
	report := protocol.Report{
		NodeID:      nodeID,
		Slot:        slot,
		Consumption: protocol.Counts{},
		Rejection:   protocol.Counts{},
	}
	countedSlot := slot - 1

	for i := range t.shards {
		shard := &t.shards[i]
		shard.mu.Lock()
		for key, counters := range shard.counters {
			if key.slot > countedSlot {
				continue
			}
			if key.slot == countedSlot {
				// The counters leave the shard here, so the report takes
				// their maps without copying them.
				addUserCounts(report.Consumption, key.service, key.user, counters.consumption)
				addUserCounts(report.Rejection, key.service, key.user, counters.rejection)
			}
			delete(shard.counters, key)
		}
		shard.mu.Unlock()
	}

	services := t.quotas.prune(slot)
	for service := range report.Consumption {
		services = append(services, service)
	}
	for service := range report.Rejection {
		services = append(services, service)
	}
	for _, service := range services {
		if report.Consumption[service] == nil {
			report.Consumption[service] = make(map[string]map[string]float64)
		}
		if report.Rejection[service] == nil {
			report.Rejection[service] = make(map[string]map[string]float64)
		}
	}
	return report
}

// addUserCounts stores resources as counts[service][user], and skips an
// empty resources map so that the report holds no empty user entries.
func addUserCounts(counts protocol.Counts, service, user string, resources map[string]float64) {
	if len(resources) == 0 {
		return
	}
	users := counts[service]
	if users == nil {
		users = make(map[string]map[string]float64)
		counts[service] = users
	}
	users[user] = resources
}
