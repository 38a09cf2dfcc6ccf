package quota

import (
	"fmt"
	"slices"
	"sync"

	"github.com/throttlecentral/throttle-central/protocol"
)

// history keeps the last historySlots slots of what the monitor shows. It
// keeps the reports and the published quota lists themselves instead of
// copies, so its cost is the memory those already take, for longer.
type history struct {
	mu     sync.Mutex
	frames []frame
}

type frame struct {
	slot int64
	// reports carry the counts of slot.
	reports []*protocol.Report
	// live lists the nodes counted live by the assignment run in slot.
	live []string
	// quotas holds the quotas for slot by node, assigned two slots earlier.
	quotas map[string]*nodeQuotas
}

// newHistory keeps slots slots before the current one, plus the current
// one and the two whose quotas are already assigned.
func newHistory(slots int) *history {
	return &history{frames: make([]frame, slots+3)}
}

// frameFor returns the frame of slot, recycling an older one, or nil when
// slot is older than the frames kept. The caller holds h.mu.
func (h *history) frameFor(slot int64) *frame {
	f := &h.frames[slot%int64(len(h.frames))]
	switch {
	case f.slot == slot:
	case f.slot > slot:
		return nil
	default:
		*f = frame{slot: slot}
	}
	return f
}

func (h *history) addReport(slot int64, r *protocol.Report) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.frameFor(slot); f != nil {
		f.reports = append(f.reports, r)
	}
}

func (h *history) addAssignment(slot, target int64, live []string, quotas map[string]*nodeQuotas) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.frameFor(slot); f != nil {
		f.live = live
	}
	if f := h.frameFor(target); f != nil {
		f.quotas = quotas
	}
}

// Monitor subjects, as the original central named them.
const (
	SubjectConnections    = "connections"
	SubjectReported       = "reported"
	SubjectConsumptionSum = "consumption_sum"
	SubjectRejectionSum   = "rejection_sum"
	SubjectDistribution   = "distribution"
	SubjectQuota          = "quota"
)

// Subjects lists the monitor subjects.
var Subjects = []string{SubjectConnections, SubjectReported, SubjectConsumptionSum, SubjectRejectionSum, SubjectDistribution, SubjectQuota}

// MonitorQuery selects monitor data. Start and End bound the slots,
// inclusive; zero means the oldest or newest slot kept. Service and User,
// when set, keep only that service or user.
type MonitorQuery struct {
	Subject    string
	Start, End int64
	Service    string
	User       string
}

// Monitor returns the monitor data of one subject by slot:
//   - connections: the live nodes of the assignment run in the slot
//   - reported: the nodes whose report carried counts of the slot
//   - consumption_sum, rejection_sum: service -> user -> resource -> sum
//     over the nodes, for every user, with or without a limit
//   - distribution: service -> user -> resource -> node -> consumption
//   - quota: service -> user -> resource -> node -> quota for the slot
//
// Slots without data are left out. An unknown subject or a reversed range
// is an error wrapping ErrInvalid.
func (e *Engine) Monitor(q MonitorQuery) (map[int64]any, error) {
	if !slices.Contains(Subjects, q.Subject) {
		return nil, fmt.Errorf("%w: monitor subject %q is unknown; use one of %v", ErrInvalid, q.Subject, Subjects)
	}
	if q.Start < 0 || q.End < 0 {
		return nil, fmt.Errorf("%w: start_slot %d and end_slot %d must not be negative", ErrInvalid, q.Start, q.End)
	}
	if q.Start != 0 && q.End != 0 && q.Start > q.End {
		return nil, fmt.Errorf("%w: start_slot %d is after end_slot %d", ErrInvalid, q.Start, q.End)
	}

	h := e.history
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[int64]any)
	for i := range h.frames {
		f := &h.frames[i]
		if f.slot == 0 || (q.Start != 0 && f.slot < q.Start) || (q.End != 0 && f.slot > q.End) {
			continue
		}
		if v := q.frameView(f); v != nil {
			out[f.slot] = v
		}
	}
	return out, nil
}

func (q MonitorQuery) keeps(service, user string) bool {
	return (q.Service == "" || q.Service == service) && (q.User == "" || q.User == user)
}

// frameView returns one frame's data for the subject, or nil when it has
// none.
func (q MonitorQuery) frameView(f *frame) any {
	switch q.Subject {
	case SubjectConnections:
		if f.live == nil {
			return nil
		}
		return f.live
	case SubjectReported:
		if len(f.reports) == 0 {
			return nil
		}
		nodes := make([]string, 0, len(f.reports))
		for _, r := range f.reports {
			nodes = append(nodes, r.NodeID)
		}
		slices.Sort(nodes)
		return nodes
	case SubjectConsumptionSum, SubjectRejectionSum:
		sums := make(protocol.Counts)
		for _, r := range f.reports {
			counts := r.Consumption
			if q.Subject == SubjectRejectionSum {
				counts = r.Rejection
			}
			for service, users := range counts {
				for user, resources := range users {
					if !q.keeps(service, user) {
						continue
					}
					for resource, amount := range resources {
						sums.Add(service, user, resource, amount)
					}
				}
			}
		}
		return nonEmpty(sums)
	case SubjectDistribution:
		dist := make(byNode)
		for _, r := range f.reports {
			for service, users := range r.Consumption {
				for user, resources := range users {
					if !q.keeps(service, user) {
						continue
					}
					for resource, amount := range resources {
						dist.set(service, user, resource, r.NodeID, amount)
					}
				}
			}
		}
		return nonEmpty(dist)
	case SubjectQuota:
		quotas := make(byNode)
		for node, nq := range f.quotas {
			for _, entry := range nq.entries {
				if !q.keeps(entry.service, entry.user) {
					continue
				}
				for i, resource := range entry.resources {
					quotas.set(entry.service, entry.user, resource, node, entry.amounts[i])
				}
			}
		}
		return nonEmpty(quotas)
	}
	return nil
}

// byNode is service -> user -> resource -> node -> amount.
type byNode map[string]map[string]map[string]map[string]float64

func (b byNode) set(service, user, resource, node string, amount float64) {
	users, ok := b[service]
	if !ok {
		users = make(map[string]map[string]map[string]float64)
		b[service] = users
	}
	resources, ok := users[user]
	if !ok {
		resources = make(map[string]map[string]float64)
		users[user] = resources
	}
	nodes, ok := resources[resource]
	if !ok {
		nodes = make(map[string]float64)
		resources[resource] = nodes
	}
	nodes[node] = amount
}

func nonEmpty[M ~map[string]V, V any](m M) any {
	if len(m) == 0 {
		return nil
	}
	return m
}
