package quota

import (
	"fmt"
	"math"
	"testing"

	"github.com/throttlecentral/throttle-central/protocol"
)

func counts(user string, resources map[string]float64) map[string]map[string]float64 {
	return map[string]map[string]float64{user: resources}
}

// startReserve returns a reserve engine with a limit of 1000 per slot for
// front/u/traffic_up (capacity 10000) set in slot 100, and node A reporting
// the user with zero consumption so the first assignment, in slot 100,
// grants the initial second of tokens.
func startReserve(t *testing.T) *Engine {
	t.Helper()
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	mustIngest(t, e, report("A", 100, "front", counts("u", map[string]float64{"traffic_up": 0}), nil))
	mustAssign(t, e, 100, nil)
	return e
}

func TestReserveGrantIsSetAside(t *testing.T) {
	e := startReserve(t)
	assertQuota(t, e, "A", 102, "front", "u", "traffic_up", 1000)
	assertLevel(t, e, "front", "u", "traffic_up", 0)
}

func TestReserveRefundsUnusedGrant(t *testing.T) {
	e := startReserve(t)
	mustIngest(t, e, report("A", 101, "front", counts("u", map[string]float64{"traffic_up": 0}), nil))
	mustAssign(t, e, 101, nil)
	// Slot 101 refilled 1000 and granted it all for slot 103.
	assertLevel(t, e, "front", "u", "traffic_up", 0)

	mustIngest(t, e, report("A", 103, "front", counts("u", map[string]float64{"traffic_up": 300}), nil))
	assertLevel(t, e, "front", "u", "traffic_up", 700)
}

func TestReserveChargesOverrun(t *testing.T) {
	e := startReserve(t)
	mustIngest(t, e, report("A", 103, "front", counts("u", map[string]float64{"traffic_up": 1300}), nil))
	assertLevel(t, e, "front", "u", "traffic_up", -300)
}

func TestReserveUnnamedUserGrantRefunded(t *testing.T) {
	e := startReserve(t)
	// A's report for slot 102 does not name the user: it consumed nothing
	// of its grant of 1000 there.
	mustIngest(t, e, report("A", 103, "front", nil, nil))
	assertLevel(t, e, "front", "u", "traffic_up", 1000)
}

func TestReserveUnreportedGrantExpires(t *testing.T) {
	e := startReserve(t)
	// A keeps reporting but never for slot 102, so its grant for slot 102
	// waits LateSlots slots and then counts as consumed.
	for slot := int64(101); slot <= 102+LateSlots; slot++ {
		if slot != 103 {
			mustIngest(t, e, report("A", slot, "front", counts("u", map[string]float64{"traffic_up": 0}), nil))
		}
		mustAssign(t, e, slot, nil)
	}
	// The late report for slot 102 is not billed: its grant is gone.
	before, _ := e.BucketLevel("front", "u", "traffic_up")
	res := mustIngest(t, e, report("A", 103, "front", counts("u", map[string]float64{"traffic_up": 999}), nil))
	if res.Duplicate {
		t.Fatalf("late report for slot 102 was taken as a duplicate")
	}
	assertLevel(t, e, "front", "u", "traffic_up", before)
}

func TestReserveLiveNodesOnly(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	for _, node := range []string{"A", "B"} {
		mustIngest(t, e, report(node, 100, "front", counts("u", map[string]float64{"traffic_up": 10}), nil))
	}
	mustAssign(t, e, 100, liveSet{"A": true})
	assertQuota(t, e, "A", 102, "front", "u", "traffic_up", 1000)
	if q, ok := quotaOf(e, "B", 102, "front", "u", "traffic_up"); ok {
		t.Errorf("dead node B got quota %v", q)
	}
}

func TestReserveSilentNodeDropsOut(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	for _, node := range []string{"A", "B"} {
		mustIngest(t, e, report(node, 100, "front", counts("u", map[string]float64{"traffic_up": 10}), nil))
	}
	mustAssign(t, e, 100, nil)
	if _, ok := quotaOf(e, "B", 102, "front", "u", "traffic_up"); !ok {
		t.Fatalf("B has no quota while it reports")
	}
	// B stops reporting; A goes on. B misses the reports of slots 100 and
	// 101 and is out of the assignment of slot 102.
	for slot := int64(101); slot <= 102; slot++ {
		mustIngest(t, e, report("A", slot, "front", counts("u", map[string]float64{"traffic_up": 10}), nil))
		mustAssign(t, e, slot, nil)
	}
	if q, ok := quotaOf(e, "B", 104, "front", "u", "traffic_up"); ok {
		t.Errorf("B got quota %v for slot 104 after two missed reports", q)
	}
	if _, ok := quotaOf(e, "A", 104, "front", "u", "traffic_up"); !ok {
		t.Errorf("A has no quota for slot 104")
	}
}

func TestReserveRejectionOnlyNodeGetsQuota(t *testing.T) {
	e := startReserve(t)
	// B has no grant and rejected every request: it reports rejections only.
	mustIngest(t, e, report("A", 101, "front", counts("u", map[string]float64{"traffic_up": 900}), nil))
	mustIngest(t, e, report("B", 101, "front", nil, counts("u", map[string]float64{"traffic_up": 40})))
	mustAssign(t, e, 101, nil)
	q, ok := quotaOf(e, "B", 103, "front", "u", "traffic_up")
	if !ok || q < 1 {
		t.Errorf("rejection-only node B got quota %v (entry %v), want at least 1", q, ok)
	}
}

func TestReserveSaturatedCreditHandedOutSlowly(t *testing.T) {
	e := startReserve(t)
	mustIngest(t, e, report("B", 101, "front", counts("u", map[string]float64{"traffic_up": 0}), nil))
	mustIngest(t, e, report("A", 101, "front", counts("u", map[string]float64{"traffic_up": 0}), nil))
	mustAssign(t, e, 101, nil)

	// In slot 102 A used nothing of its 1000 while B rejected: the user was
	// saturated, so the 1000 comes back as credit.
	mustIngest(t, e, report("A", 103, "front", counts("u", map[string]float64{"traffic_up": 0}), nil))
	mustIngest(t, e, report("B", 103, "front", nil, counts("u", map[string]float64{"traffic_up": 50})))
	mustAssign(t, e, 102, nil) // saturated from now on
	level, _ := e.BucketLevel("front", "u", "traffic_up")

	// The grant for slot 104 holds back all credit but 5% of the rate.
	var granted float64
	for _, node := range []string{"A", "B"} {
		q, _ := quotaOf(e, node, 104, "front", "u", "traffic_up")
		granted += q
	}
	if granted > 1000*(1+creditPerSlot)+eps {
		t.Errorf("saturated grant %v exceeds %v", granted, 1000*(1+creditPerSlot))
	}
	if level < 0 {
		t.Errorf("level %v is negative; the test needs stored credit", level)
	}
}

func TestReserveNewBucketHoldsFirstSecondUntilFirstGrant(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	for slot := int64(100); slot < 110; slot++ {
		mustAssign(t, e, slot, nil)
	}
	// No node reported the user, so there is no refill yet.
	assertLevel(t, e, "front", "u", "traffic_up", 1000)

	// Consumption before the first quota was held to the edge fallback and
	// is not billed.
	mustIngest(t, e, report("A", 110, "front", counts("u", map[string]float64{"traffic_up": 5000}), nil))
	assertLevel(t, e, "front", "u", "traffic_up", 1000)
	mustAssign(t, e, 110, nil)
	assertQuota(t, e, "A", 112, "front", "u", "traffic_up", 1000)
}

func TestReserveBurstAfterIdle(t *testing.T) {
	e := startReserve(t)
	// A reports nothing of the user; its grants come back and the bucket
	// refills to its capacity of 10 x rate.
	for slot := int64(101); slot <= 130; slot++ {
		mustIngest(t, e, report("A", slot, "front", nil, nil))
		mustAssign(t, e, slot, nil)
	}
	assertLevel(t, e, "front", "u", "traffic_up", 10000)

	mustIngest(t, e, report("A", 131, "front", nil, counts("u", map[string]float64{"traffic_up": 20})))
	mustAssign(t, e, 131, nil)
	assertQuota(t, e, "A", 133, "front", "u", "traffic_up", 10000)
}

func TestReserveLimitLoweredCutsLevel(t *testing.T) {
	e := startReserve(t)
	for slot := int64(101); slot <= 120; slot++ {
		mustIngest(t, e, report("A", slot, "front", nil, nil))
		mustAssign(t, e, slot, nil)
	}
	assertLevel(t, e, "front", "u", "traffic_up", 10000)

	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 100}}, 121)
	assertLevel(t, e, "front", "u", "traffic_up", 1000)

	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 5000}}, 121)
	assertLevel(t, e, "front", "u", "traffic_up", 1000)
	mustIngest(t, e, report("A", 121, "front", counts("u", map[string]float64{"traffic_up": 0}), nil))
	mustAssign(t, e, 121, nil)
	// The raised rate refills from the next assignment on; the level is
	// granted whole because no node rejects.
	assertQuota(t, e, "A", 123, "front", "u", "traffic_up", 6000)
}

func TestReserveDeletedLimitGetsNoQuota(t *testing.T) {
	e := startReserve(t)
	e.DeleteLimits("front", "u")
	mustIngest(t, e, report("A", 101, "front", counts("u", map[string]float64{"traffic_up": 10}), nil))
	mustAssign(t, e, 101, nil)
	if q, ok := quotaOf(e, "A", 103, "front", "u", "traffic_up"); ok {
		t.Errorf("user with deleted limits got quota %v", q)
	}
	if got := e.Limits("front", "u"); got != nil {
		t.Errorf("Limits after delete = %v, want nil", got)
	}
}

// edgeModel plays nodes with fixed demand against the engine: each node
// consumes min(demand, quota) and rejects the rest in requests of size 10.
func edgeModel(t *testing.T, e *Engine, demand map[string]float64, from, to int64) map[string]float64 {
	t.Helper()
	held := make(map[string]float64)
	for slot := from; slot <= to; slot++ {
		for node, d := range demand {
			q, ok := quotaOf(e, node, slot-1, "front", "u", "traffic_up")
			if !ok {
				q = 1000 / float64(len(demand))
			}
			used := math.Min(d, q)
			r := report(node, slot, "front", counts("u", map[string]float64{"traffic_up": used}), nil)
			if d > q {
				r.Rejection = protocol.Counts{"front": counts("u", map[string]float64{"traffic_up": math.Ceil((d - q) / 10)})}
			}
			mustIngest(t, e, r)
		}
		mustAssign(t, e, slot, nil)
	}
	for node := range demand {
		held[node], _ = quotaOf(e, node, to+2, "front", "u", "traffic_up")
	}
	return held
}

func TestReserveSharesConvergeToDemand(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	demand := map[string]float64{"A": 6000, "B": 3000, "C": 1000}
	held := edgeModel(t, e, demand, 101, 111)
	total := held["A"] + held["B"] + held["C"]
	for node, d := range demand {
		want := d / 10000
		if got := held[node] / total; math.Abs(got-want) > 0.05 {
			t.Errorf("after 10 slots node %s holds share %.3f of %v, want %.3f ± 0.05", node, got, total, want)
		}
	}
	if math.Abs(total-1000) > 60 {
		t.Errorf("total quota %v, want 1000 ± 60", total)
	}
}

func TestReserveSatisfiedNodeKeepsItsDemand(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	// C needs 300, less than an equal share: it keeps its demand plus
	// headroom, and A and B split the rest 2:1 as their demand.
	demand := map[string]float64{"A": 1800, "B": 900, "C": 300}
	held := edgeModel(t, e, demand, 101, 111)
	if want := 300 * (1 + headroom); math.Abs(held["C"]-want) > 1 {
		t.Errorf("satisfied node C holds %v, want %v", held["C"], want)
	}
	if ratio := held["A"] / held["B"]; math.Abs(ratio-2) > 0.2 {
		t.Errorf("A/B quota ratio %.3f (A %v, B %v), want 2 ± 0.2", ratio, held["A"], held["B"])
	}
}

func TestReserveNewNodeGetsQuotaWithinThreeSlots(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	edgeModel(t, e, map[string]float64{"A": 3000}, 101, 110)
	// D first serves the user in slot 110, reports it in slot 111, and
	// holds quota for slot 113: within 3 slots of first seeing the user.
	mustIngest(t, e, report("D", 111, "front", nil, counts("u", map[string]float64{"traffic_up": 5})))
	mustIngest(t, e, report("A", 111, "front", counts("u", map[string]float64{"traffic_up": 1000}), counts("u", map[string]float64{"traffic_up": 200})))
	mustAssign(t, e, 111, nil)
	q, ok := quotaOf(e, "D", 113, "front", "u", "traffic_up")
	if !ok || q < 1 {
		t.Errorf("new node D holds quota %v (entry %v) for slot 113, want at least 1", q, ok)
	}
}

func TestManyNodesIndexSurvivesPruning(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1200}}, 100)
	nodes := make([]string, 12)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("n%02d", i)
		mustIngest(t, e, report(nodes[i], 100, "front", counts("u", map[string]float64{"traffic_up": 1}), nil))
	}
	mustAssign(t, e, 100, nil)
	for _, node := range nodes {
		if _, ok := quotaOf(e, node, 102, "front", "u", "traffic_up"); !ok {
			t.Fatalf("node %s has no quota while all 12 report", node)
		}
	}

	// Only three nodes go on reporting; the others age out of the user's
	// node list, which then drops its index.
	for slot := int64(101); slot <= 120; slot++ {
		for _, node := range nodes[:3] {
			mustIngest(t, e, report(node, slot, "front", counts("u", map[string]float64{"traffic_up": 1}), nil))
		}
		mustAssign(t, e, slot, nil)
	}
	for i, node := range nodes {
		_, ok := quotaOf(e, node, 122, "front", "u", "traffic_up")
		if want := i < 3; ok != want {
			t.Errorf("node %s holds quota %v, want %v", node, ok, want)
		}
	}

	// A node that comes back is found again.
	mustIngest(t, e, report(nodes[11], 121, "front", counts("u", map[string]float64{"traffic_up": 1}), nil))
	for _, node := range nodes[:3] {
		mustIngest(t, e, report(node, 121, "front", counts("u", map[string]float64{"traffic_up": 1}), nil))
	}
	mustAssign(t, e, 121, nil)
	if _, ok := quotaOf(e, nodes[11], 123, "front", "u", "traffic_up"); !ok {
		t.Errorf("node %s has no quota after it came back", nodes[11])
	}
}

// runTwoNodes drives nodes A and B through slots first..last: each reports
// the slot before with the consumption use returns for it, given the
// node's quota of that slot, and the engine assigns every slot. It returns
// each slot's quotas summed over the nodes, by resource.
func runTwoNodes(t *testing.T, e *Engine, user string, first, last int64, use func(slot int64, resource string, quota float64) float64) map[int64]map[string]float64 {
	t.Helper()
	totals := make(map[int64]map[string]float64)
	for slot := first; slot <= last; slot++ {
		for _, node := range []string{"A", "B"} {
			used := map[string]float64{}
			for _, resource := range []string{"traffic_up", "database_read"} {
				q, _ := quotaOf(e, node, slot-1, "front", user, resource)
				if amount := use(slot-1, resource, q); amount > 0 {
					used[resource] = amount
				}
			}
			if len(used) == 0 {
				used["traffic_up"] = 0
			}
			mustIngest(t, e, report(node, slot, "front", counts(user, used), nil))
		}
		mustAssign(t, e, slot, nil)
		total := map[string]float64{}
		for _, node := range []string{"A", "B"} {
			for _, resource := range []string{"traffic_up", "database_read"} {
				q, _ := quotaOf(e, node, slot+2, "front", user, resource)
				total[resource] += q
			}
		}
		totals[slot+2] = total
	}
	return totals
}

func TestReserveStrictCapGrantsRateEverySlot(t *testing.T) {
	// A burst equal to the rate is a strict per-second cap: the quotas of
	// every slot add up to the rate, also for a resource no node consumes.
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "v", map[string]Limit{"traffic_up": {Rate: 1000, Burst: 1000}, "database_read": {Rate: 200, Burst: 200}}, 100)
	totals := runTwoNodes(t, e, "v", 101, 120, func(slot int64, resource string, quota float64) float64 {
		if resource == "traffic_up" {
			return quota // each node uses all of its quota
		}
		return 0
	})
	for slot := int64(106); slot <= 122; slot++ {
		if got := totals[slot]["traffic_up"]; math.Abs(got-1000) > 1e-6 {
			t.Errorf("slot %d: traffic_up quotas add up to %v, want the rate 1000", slot, got)
		}
		if got := totals[slot]["database_read"]; got < 200-1e-6 {
			t.Errorf("slot %d: database_read quotas add up to %v, want at least the rate 200", slot, got)
		}
	}
}

func TestReserveInFlightGrantsBoundedByBucket(t *testing.T) {
	// A resource left unused fills its bucket. When every node then uses
	// all of its quota, three slots in a row admit at most what a token
	// bucket full at the start of the first admits: the capacity plus two
	// refills.
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "v", map[string]Limit{"traffic_up": {Rate: 1000}, "database_read": {Rate: 200, Burst: 400}}, 100)
	const start = 115
	totals := runTwoNodes(t, e, "v", 101, 130, func(slot int64, resource string, quota float64) float64 {
		if resource == "database_read" && slot >= start {
			return quota
		}
		return 0
	})
	for slot := int64(start); slot <= 130; slot++ {
		window := totals[slot]["database_read"] + totals[slot+1]["database_read"] + totals[slot+2]["database_read"]
		if window > 400+2*200+1e-6 {
			t.Errorf("slots %d-%d: database_read quotas add up to %v, more than the capacity 400 plus two refills of 200", slot, slot+2, window)
		}
	}
	for slot := int64(start + 5); slot <= 132; slot++ {
		if got := totals[slot]["database_read"]; math.Abs(got-200) > 1e-6 {
			t.Errorf("slot %d: database_read quotas add up to %v once fully used, want the rate 200", slot, got)
		}
	}
}
