package quota

import (
	"math"
	"testing"

	"github.com/throttlecentral/throttle-central/protocol"
)

const eps = 1e-9

func newTestEngine(t *testing.T, mode Mode) *Engine {
	t.Helper()
	e, err := New(Config{Mode: mode})
	if err != nil {
		t.Fatalf("New(%q): %v", mode, err)
	}
	return e
}

// report builds a report sent in slot `sent` (so carrying counts of
// sent-1) with consumption and rejection of one service.
func report(node string, sent int64, service string, consumption, rejection map[string]map[string]float64) *protocol.Report {
	r := &protocol.Report{
		NodeID:      node,
		Slot:        sent,
		Consumption: protocol.Counts{service: {}},
		Rejection:   protocol.Counts{service: {}},
	}
	for user, resources := range consumption {
		r.Consumption[service][user] = resources
	}
	for user, resources := range rejection {
		r.Rejection[service][user] = resources
	}
	return r
}

func mustIngest(t *testing.T, e *Engine, r *protocol.Report) IngestResult {
	t.Helper()
	res, err := e.Ingest(r)
	if err != nil {
		t.Fatalf("Ingest(%s, slot %d): %v", r.NodeID, r.Slot, err)
	}
	return res
}

func mustAssign(t *testing.T, e *Engine, slot int64, live Liveness) AssignResult {
	t.Helper()
	res, err := e.Assign(slot, live)
	if err != nil {
		t.Fatalf("Assign(%d): %v", slot, err)
	}
	return res
}

func mustSetLimits(t *testing.T, e *Engine, service, user string, limits map[string]Limit, slot int64) {
	t.Helper()
	if err := e.SetLimits(service, user, limits, slot); err != nil {
		t.Fatalf("SetLimits(%s, %s): %v", service, user, err)
	}
}

// quotaOf returns node's quota of one (service, user, resource) for slot and
// whether there is an entry.
func quotaOf(e *Engine, node string, slot int64, service, user, resource string) (float64, bool) {
	q := e.Quotas(node, slot, []string{service})[service][user]
	if q == nil {
		return 0, false
	}
	v, ok := q[resource]
	return v, ok
}

func assertQuota(t *testing.T, e *Engine, node string, slot int64, service, user, resource string, want float64) {
	t.Helper()
	got, ok := quotaOf(e, node, slot, service, user, resource)
	if !ok {
		t.Fatalf("node %s slot %d %s/%s/%s: no quota entry, want %v", node, slot, service, user, resource, want)
	}
	if math.Abs(got-want) > 1e-6 {
		t.Errorf("node %s slot %d %s/%s/%s: quota %v, want %v", node, slot, service, user, resource, got, want)
	}
}

func assertLevel(t *testing.T, e *Engine, service, user, resource string, want float64) {
	t.Helper()
	got, ok := e.BucketLevel(service, user, resource)
	if !ok {
		t.Fatalf("bucket %s/%s/%s does not exist", service, user, resource)
	}
	if math.Abs(got-want) > 1e-6 {
		t.Errorf("bucket %s/%s/%s: level %v, want %v", service, user, resource, got, want)
	}
}

type liveSet map[string]bool

func (l liveSet) Live(node string) bool { return l[node] }

func TestClassicWorkedExample(t *testing.T) {
	e := newTestEngine(t, ModeClassic)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000, Burst: 10000}}, 100)
	mustAssign(t, e, 100, nil)
	assertLevel(t, e, "front", "u", "traffic_up", 1000)

	mustIngest(t, e, report("A", 101, "front", map[string]map[string]float64{"u": {"traffic_up": 300}}, nil))
	mustIngest(t, e, report("B", 101, "front",
		map[string]map[string]float64{"u": {"traffic_up": 100}},
		map[string]map[string]float64{"u": {"traffic_up": 5}}))
	mustIngest(t, e, report("C", 101, "front", map[string]map[string]float64{"u": {"database_read": 7}}, nil))
	assertLevel(t, e, "front", "u", "traffic_up", 600)

	mustAssign(t, e, 101, nil)
	assertLevel(t, e, "front", "u", "traffic_up", 1600)
	assertQuota(t, e, "C", 103, "front", "u", "traffic_up", 1600.0/30)
	assertQuota(t, e, "A", 103, "front", "u", "traffic_up", 696.0)
	assertQuota(t, e, "B", 103, "front", "u", "traffic_up", 1600*29.0/30*0.55)

	sum := 0.0
	for _, node := range []string{"A", "B", "C"} {
		q, _ := quotaOf(e, node, 103, "front", "u", "traffic_up")
		sum += q
	}
	if math.Abs(sum-1600) > 1e-6 {
		t.Errorf("quotas add up to %v, want 1600", sum)
	}
}

func TestClassicAllZeroNodesSplitEqually(t *testing.T) {
	e := newTestEngine(t, ModeClassic)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 900}}, 10)
	for _, node := range []string{"A", "B", "C"} {
		mustIngest(t, e, report(node, 11, "front", map[string]map[string]float64{"u": {"traffic_up": 0}}, nil))
	}
	mustAssign(t, e, 11, nil)
	// Level 900 at creation in slot 10, one slot of refill: 1800.
	for _, node := range []string{"A", "B", "C"} {
		assertQuota(t, e, node, 13, "front", "u", "traffic_up", 600)
	}
}

func TestClassicRejectionOnlyNodes(t *testing.T) {
	e := newTestEngine(t, ModeClassic)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 10)
	mustIngest(t, e, report("A", 11, "front", nil, map[string]map[string]float64{"u": {"traffic_up": 3}}))
	mustIngest(t, e, report("B", 11, "front", nil, map[string]map[string]float64{"u": {"traffic_up": 1}}))
	mustAssign(t, e, 11, nil)
	// C = 0, so the weight is the rejection share alone: 3/4 and 1/4 of 2000.
	assertQuota(t, e, "A", 13, "front", "u", "traffic_up", 1500)
	assertQuota(t, e, "B", 13, "front", "u", "traffic_up", 500)
}

func TestClassicRecencyWeightAndWindow(t *testing.T) {
	e := newTestEngine(t, ModeClassic)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000, Burst: 1000}}, 10)
	// A's latest report about the user is for slot 10, B's for slot 13.
	// Both nodes keep reporting every slot, so both stay live.
	mustIngest(t, e, report("A", 11, "front", map[string]map[string]float64{"u": {"traffic_up": 100}}, nil))
	mustIngest(t, e, report("B", 14, "front", map[string]map[string]float64{"u": {"traffic_up": 100}}, nil))
	for sent := int64(12); sent <= 16; sent++ {
		mustIngest(t, e, report("A", sent, "front", nil, nil))
	}
	mustIngest(t, e, report("B", 15, "front", nil, nil))
	mustIngest(t, e, report("B", 16, "front", nil, nil))

	// At slot 15, A's report is 4 slots old: weight 1 against B's 4.
	mustAssign(t, e, 15, nil)
	qa, _ := quotaOf(e, "A", 17, "front", "u", "traffic_up")
	qb, _ := quotaOf(e, "B", 17, "front", "u", "traffic_up")
	if math.Abs(qb-4*qa) > 1e-6 {
		t.Errorf("slot 17: B quota %v, want 4 × A quota %v", qb, qa)
	}

	// At slot 16, slot 10 falls out of the 5-slot window: A gets no entry.
	mustAssign(t, e, 16, nil)
	if q, ok := quotaOf(e, "A", 18, "front", "u", "traffic_up"); ok {
		t.Errorf("slot 18: A has quota %v after its report left the window", q)
	}
	if _, ok := quotaOf(e, "B", 18, "front", "u", "traffic_up"); !ok {
		t.Errorf("slot 18: B has no quota entry")
	}
}

func TestClassicBurstCapAndDebt(t *testing.T) {
	e := newTestEngine(t, ModeClassic)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000, Burst: 3000}}, 1)
	for slot := int64(1); slot <= 10; slot++ {
		mustAssign(t, e, slot, nil)
	}
	assertLevel(t, e, "front", "u", "traffic_up", 3000)

	// A report of 5000 drives the level to -2000 (debt).
	mustIngest(t, e, report("A", 11, "front", map[string]map[string]float64{"u": {"traffic_up": 5000}}, nil))
	assertLevel(t, e, "front", "u", "traffic_up", -2000)
	mustAssign(t, e, 11, nil)
	assertLevel(t, e, "front", "u", "traffic_up", -1000)
	assertQuota(t, e, "A", 13, "front", "u", "traffic_up", 0)

	// Debt is bounded by one capacity.
	mustIngest(t, e, report("A", 12, "front", map[string]map[string]float64{"u": {"traffic_up": 1e9}}, nil))
	assertLevel(t, e, "front", "u", "traffic_up", -3000)
}

func TestClassicUsersWithoutLimitAreSummedNotBucketed(t *testing.T) {
	e := newTestEngine(t, ModeClassic)
	mustIngest(t, e, report("A", 11, "front", map[string]map[string]float64{"free": {"traffic_up": 40}}, nil))
	mustIngest(t, e, report("B", 11, "front", map[string]map[string]float64{"free": {"traffic_up": 2}}, nil))
	mustAssign(t, e, 11, nil)
	if _, ok := e.BucketLevel("front", "free", "traffic_up"); ok {
		t.Errorf("a user without a limit has a bucket")
	}
	if q, ok := quotaOf(e, "A", 13, "front", "free", "traffic_up"); ok {
		t.Errorf("a user without a limit got quota %v", q)
	}
	data, err := e.Monitor(MonitorQuery{Subject: SubjectConsumptionSum})
	if err != nil {
		t.Fatalf("Monitor: %v", err)
	}
	sums, _ := data[10].(protocol.Counts)
	if got := sums["front"]["free"]["traffic_up"]; got != 42 {
		t.Errorf("consumption_sum of slot 10 = %v, want 42", got)
	}
}
