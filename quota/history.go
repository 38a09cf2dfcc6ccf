package quota

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"

	"github.com/throttlecentral/throttle-central/protocol"
)

// history keeps the last historySlots slots of what the monitor shows: a
// compact copy of the counts of each report (see reportCounts) and the
// published quota lists themselves.
type history struct {
	mu     sync.Mutex
	frames []frame
	// compactMu serializes compact, so each frame's reports keep the order
	// in which they were ingested.
	compactMu sync.Mutex
}

type frame struct {
	slot int64
	// reports holds the counts of slot, one entry per report in the order
	// the reports were ingested.
	reports []reportCounts
	// pending holds the reports ingested since the last compact, in order;
	// compact moves them into reports.
	pending []*protocol.Report
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
		// Monitor results share only strings with the frame, so the
		// reports slice can be reused.
		clear(f.reports)
		*f = frame{slot: slot, reports: f.reports[:0]}
	}
	return f
}

// addReport keeps r in the frame of slot until the next compact turns it
// into a compact copy. Reports arrive in a burst early in each second, and
// the copy costs 0.1 to 0.3 ms per 1,000-user report on a 2-core machine
// (BenchmarkIngestHistory), so it is made later, at the assignment in the
// middle of the second.
func (h *history) addReport(slot int64, r *protocol.Report) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.frameFor(slot); f != nil {
		f.pending = append(f.pending, r)
	}
}

// compact replaces the reports added since the last call with compact
// copies, built outside h.mu. Assign calls it after publishing the quotas,
// and Monitor before reading.
func (h *history) compact() {
	h.compactMu.Lock()
	defer h.compactMu.Unlock()
	type batch struct {
		slot    int64
		reports []*protocol.Report
	}
	var batches []batch
	h.mu.Lock()
	for i := range h.frames {
		if f := &h.frames[i]; len(f.pending) > 0 {
			batches = append(batches, batch{f.slot, f.pending})
			f.pending = nil
		}
	}
	h.mu.Unlock()
	for _, b := range batches {
		counts := make([]reportCounts, len(b.reports))
		for i, r := range b.reports {
			counts[i] = newReportCounts(r)
		}
		h.mu.Lock()
		// A frame recycled meanwhile has dropped the slot's reports.
		if f := &h.frames[b.slot%int64(len(h.frames))]; f.slot == b.slot {
			f.reports = append(f.reports, counts...)
		}
		h.mu.Unlock()
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

// reportCounts is the monitor's copy of the counts of one report. Its bulk
// is in slices of structs without pointers, which the garbage collector
// does not scan, and every name is a span of one of two strings. It takes
// 16 bytes per count plus 12 bytes and the user name per key. A report of
// 1,000 users x 4 resources takes about 91 KB this way, against about
// 350 KB as decoded maps (BenchmarkIngestHistory).
type reportCounts struct {
	// names contains the node name and the user name of every key,
	// concatenated.
	names string
	node  nameSpan
	// symbolNames contains the distinct service and resource names of the
	// report, concatenated, and symbols holds their spans.
	symbolNames string
	symbols     []nameSpan
	// keys holds the (service, user) pairs that have at least one count. A
	// pair named in both consumption and rejection has one key for each.
	keys []countKey
	// consumption and rejection hold the counts of each key next to each
	// other, in the order of keys.
	consumption []count
	rejection   []count
}

// nameSpan is the name at [start, end) of reportCounts.names or
// reportCounts.symbolNames.
type nameSpan struct {
	start, end uint32
}

type countKey struct {
	user nameSpan
	// service is an index in reportCounts.symbols.
	service uint32
}

type count struct {
	amount float64
	// key is an index in reportCounts.keys, resource one in
	// reportCounts.symbols.
	key, resource uint32
}

// newReportCounts returns the compact copy of the counts of r. It keeps
// every count, zero amounts included, and leaves out users without
// resources, which add nothing to any monitor subject.
func newReportCounts(r *protocol.Report) reportCounts {
	consumption := measureCounts(r.Consumption)
	rejection := measureCounts(r.Rejection)
	keys := consumption.keys + rejection.keys
	nameBytes := len(r.NodeID) + consumption.nameBytes + rejection.nameBytes
	// Each key adds at most one service symbol and each count at most one
	// resource symbol.
	maxSymbols := keys + consumption.counts + rejection.counts

	if !fitsIndex(nameBytes) || !fitsIndex(maxSymbols) {
		return nodeOnlyCounts(r.NodeID)
	}

	var b countsBuilder
	b.names.Grow(nameBytes)
	b.rc.node = b.addName(r.NodeID)
	b.rc.keys = make([]countKey, 0, keys)
	b.rc.consumption = b.addCounts(make([]count, 0, consumption.counts), r.Consumption)
	b.rc.rejection = b.addCounts(make([]count, 0, rejection.counts), r.Rejection)
	b.rc.names = b.names.String()
	if !b.finishSymbols() {
		return nodeOnlyCounts(r.NodeID)
	}
	return b.rc
}

// fitsIndex reports whether every index or offset below n fits a uint32.
func fitsIndex(n int) bool {
	return uint64(n) <= math.MaxUint32
}

// countsSize is the number of keys, counts and user name bytes that one
// Counts of a report adds to its reportCounts.
type countsSize struct {
	keys, counts, nameBytes int
}

func measureCounts(c protocol.Counts) countsSize {
	var size countsSize
	for _, users := range c {
		for user, resources := range users {
			if len(resources) > 0 {
				size.keys++
				size.counts += len(resources)
				size.nameBytes += len(user)
			}
		}
	}
	return size
}

// linearSymbols is how many symbols countsBuilder searches one by one
// before it indexes them in a map. A report usually names a few services
// and resources, and comparing a few strings is cheaper than hashing one.
const linearSymbols = 16

// countsBuilder builds a reportCounts.
type countsBuilder struct {
	rc    reportCounts
	names strings.Builder
	// symbolNames holds the distinct service and resource names in the
	// order of their indexes. symbolIndex maps them to their indexes once
	// there are more than linearSymbols.
	symbolNames []string
	symbolIndex map[string]uint32
	// lastResources holds the symbol indexes of the resources of the key
	// added last.
	lastResources []uint32
}

func (b *countsBuilder) addName(name string) nameSpan {
	start := b.names.Len()
	b.names.WriteString(name)
	return nameSpan{uint32(start), uint32(b.names.Len())}
}

// symbol returns the index of a service or resource name, adding it when
// it is new.
func (b *countsBuilder) symbol(name string) uint32 {
	if b.symbolIndex != nil {
		if i, ok := b.symbolIndex[name]; ok {
			return i
		}
	} else {
		for i, known := range b.symbolNames {
			if known == name {
				return uint32(i)
			}
		}
	}

	i := uint32(len(b.symbolNames))
	b.symbolNames = append(b.symbolNames, name)
	switch {
	case b.symbolIndex != nil:
		b.symbolIndex[name] = i
	case len(b.symbolNames) > linearSymbols:
		b.symbolIndex = make(map[string]uint32, 2*len(b.symbolNames))
		for j, known := range b.symbolNames {
			b.symbolIndex[known] = uint32(j)
		}
	}
	return i
}

// addCounts appends the counts of c to dst, adding a key for each
// (service, user) pair with at least one count, and returns dst.
func (b *countsBuilder) addCounts(dst []count, c protocol.Counts) []count {
	for service, users := range c {
		serviceIndex, known := uint32(0), false
		for user, resources := range users {
			if len(resources) == 0 {
				continue
			}
			if !known {
				serviceIndex, known = b.symbol(service), true
			}
			key := uint32(len(b.rc.keys))
			b.rc.keys = append(b.rc.keys, countKey{user: b.addName(user), service: serviceIndex})
			dst = b.addResources(dst, key, resources)
		}
	}
	return dst
}

// addResources appends the counts of one key to dst and returns dst. It
// first looks the amounts up by the resource names of the previous key,
// because the users of one report mostly have the same resources. Looking
// up a few names in a small map is cheaper than iterating it, and made the
// copy of a 1,000-user report about 40% faster (BenchmarkReportCounts).
// When those names do not cover resources, it iterates.
func (b *countsBuilder) addResources(dst []count, key uint32, resources map[string]float64) []count {
	if len(resources) == len(b.lastResources) {
		start := len(dst)
		found := true
		for _, resource := range b.lastResources {
			amount, ok := resources[b.symbolNames[resource]]
			if !ok {
				found = false
				break
			}
			dst = append(dst, count{amount: amount, key: key, resource: resource})
		}
		// The names are distinct, so finding all len(resources) of them
		// means no other resource is left.
		if found {
			return dst
		}
		dst = dst[:start]
	}

	b.lastResources = b.lastResources[:0]
	for name, amount := range resources {
		resource := b.symbol(name)
		b.lastResources = append(b.lastResources, resource)
		dst = append(dst, count{amount: amount, key: key, resource: resource})
	}
	return dst
}

// finishSymbols concatenates the symbol names into rc.symbolNames and sets
// their spans. It returns false when their offsets do not fit a uint32.
func (b *countsBuilder) finishSymbols() bool {
	size := 0
	for _, name := range b.symbolNames {
		size += len(name)
	}
	if !fitsIndex(size) {
		return false
	}

	var names strings.Builder
	names.Grow(size)
	b.rc.symbols = make([]nameSpan, len(b.symbolNames))
	for i, name := range b.symbolNames {
		start := names.Len()
		names.WriteString(name)
		b.rc.symbols[i] = nameSpan{uint32(start), uint32(names.Len())}
	}
	b.rc.symbolNames = names.String()
	return true
}

// nodeOnlyCounts returns the copy of a report whose names or counts are
// too many to index with a uint32: only its node name, so the monitor lists
// the node as reported but leaves out its counts.
//
// NOTE: such a report cannot arrive through the API, whose body limit is
// 1 MiB by default, but a direct caller of Ingest could pass one.
func nodeOnlyCounts(node string) reportCounts {
	return reportCounts{
		names: strings.Clone(node),
		node:  nameSpan{0, uint32(len(node))},
	}
}

func (rc *reportCounts) nodeName() string {
	return rc.names[rc.node.start:rc.node.end]
}

// eachCount calls fn with the names and the amount of every count in
// counts, which is rc.consumption or rc.rejection, whose service and user q
// keeps, in the order they were stored. The names are substrings of the
// strings of rc, so maps keyed by them keep those strings alive.
func (rc *reportCounts) eachCount(counts []count, q MonitorQuery, fn func(service, user, resource string, amount float64)) {
	var service, user string
	selected := false
	for i, c := range counts {
		// The counts of a key are next to each other, so the key's names
		// and filter result are looked up once per key.
		if i == 0 || c.key != counts[i-1].key {
			k := rc.keys[c.key]
			service = rc.symbol(k.service)
			user = rc.names[k.user.start:k.user.end]
			selected = q.keeps(service, user)
		}
		if selected {
			fn(service, user, rc.symbol(c.resource), c.amount)
		}
	}
}

func (rc *reportCounts) symbol(i uint32) string {
	span := rc.symbols[i]
	return rc.symbolNames[span.start:span.end]
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
	h.compact()
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
		for i := range f.reports {
			nodes = append(nodes, f.reports[i].nodeName())
		}
		slices.Sort(nodes)
		return nodes
	case SubjectConsumptionSum, SubjectRejectionSum:
		sums := make(protocol.Counts)
		for i := range f.reports {
			rc := &f.reports[i]
			counts := rc.consumption
			if q.Subject == SubjectRejectionSum {
				counts = rc.rejection
			}
			rc.eachCount(counts, q, sums.Add)
		}
		return nonEmpty(sums)
	case SubjectDistribution:
		dist := make(byNode)
		for i := range f.reports {
			rc := &f.reports[i]
			node := rc.nodeName()
			rc.eachCount(rc.consumption, q, func(service, user, resource string, amount float64) {
				dist.set(service, user, resource, node, amount)
			})
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
