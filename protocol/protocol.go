// Package protocol defines the messages that edge nodes and centrals
// exchange: the per-slot report an edge node sends and the quotas it gets
// back. The JSON field names are fixed by the lua-resty-throttle client and
// must not change.
package protocol

// Limits of one report that the central enforces: a report over any of
// them is rejected whole. Edge clients leave out what goes beyond them.
const (
	// MaxReportServices is the maximum number of services in a report's
	// consumption map, and again in its rejection map.
	MaxReportServices = 64
	// MaxReportUsers is the maximum number of users of one service in
	// consumption or in rejection.
	MaxReportUsers = 100_000
	// MaxReportResources is the maximum number of resources of one user in
	// consumption or in rejection.
	MaxReportResources = 16
)

// Counts holds per-slot amounts: service -> user -> resource -> amount.
// Amounts are float64 because the Lua client encodes large integers in
// exponent form (for example 1.2345678901234e+14).
type Counts map[string]map[string]map[string]float64

// Add adds amount to counts[service][user][resource], creating the inner
// maps as needed.
func (c Counts) Add(service, user, resource string, amount float64) {
	users, ok := c[service]
	if !ok {
		users = make(map[string]map[string]float64)
		c[service] = users
	}
	resources, ok := users[user]
	if !ok {
		resources = make(map[string]float64)
		users[user] = resources
	}
	resources[resource] += amount
}

// Report is the message an edge node sends once a slot. Slot is the slot in which
// the node sends; Consumption and Rejection hold the totals of Slot-1.
// Rejection counts rejected requests, attributed to the resource that was
// exhausted, so its unit is requests, not the resource's unit.
type Report struct {
	// Version is 0 for the Lua client; newer clients send 2 and get an
	// extended reply.
	Version     int    `json:"version,omitempty"`
	NodeID      string `json:"node_id"`
	Slot        int64  `json:"slot_number"`
	Consumption Counts `json:"consumption"`
	Rejection   Counts `json:"rejection"`
}

// Services returns the services the report names in either map. A reply
// may only contain these services, because the Lua client fails on any
// other top-level key.
func (r *Report) Services() []string {
	seen := make(map[string]bool, len(r.Consumption)+len(r.Rejection))
	services := make([]string, 0, len(r.Consumption)+len(r.Rejection))
	for _, counts := range []Counts{r.Consumption, r.Rejection} {
		for service := range counts {
			if !seen[service] {
				seen[service] = true
				services = append(services, service)
			}
		}
	}
	return services
}

// Users returns the users of service that the report names in either map.
func (r *Report) Users(service string) []string {
	consumption, rejection := r.Consumption[service], r.Rejection[service]
	users := make([]string, 0, len(consumption)+len(rejection))
	for user := range consumption {
		users = append(users, user)
	}
	for user := range rejection {
		if _, named := consumption[user]; !named {
			users = append(users, user)
		}
	}
	return users
}

// Quotas holds one node's quotas of one service for one slot:
// user -> resource -> tokens the node may let the user consume.
type Quotas map[string]map[string]float64

// Shares holds the safe fallback of one service: user -> resource -> tokens
// per slot a node may admit when it has no quota for the current slot. It is
// the user's limit divided among the live edge nodes.
type Shares map[string]map[string]float64
