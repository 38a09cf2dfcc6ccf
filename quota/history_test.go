package quota

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/throttlecentral/throttle-central/protocol"
)

// referenceView returns the monitor data of one slot for the subjects
// computed from counts (reported, consumption_sum, rejection_sum and
// distribution) straight from the reports of the slot, in the order they
// were ingested. It is the computation the monitor ran when the history
// kept the reports themselves, so the compact copy must match it exactly.
func referenceView(q MonitorQuery, reports []*protocol.Report) any {
	switch q.Subject {
	case SubjectReported:
		if len(reports) == 0 {
			return nil
		}
		nodes := make([]string, 0, len(reports))
		for _, r := range reports {
			nodes = append(nodes, r.NodeID)
		}
		slices.Sort(nodes)
		return nodes
	case SubjectConsumptionSum, SubjectRejectionSum:
		sums := make(protocol.Counts)
		for _, r := range reports {
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
		for _, r := range reports {
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
	}
	panic("referenceView: subject " + q.Subject + " is not computed from counts")
}

// countsSubjects are the monitor subjects computed from the counts of
// reports.
var countsSubjects = []string{SubjectReported, SubjectConsumptionSum, SubjectRejectionSum, SubjectDistribution}

// checkMonitorMatches compares every counts subject of slot, under query
// filters, with referenceView of reports. The %v forms are compared too,
// because reflect.DeepEqual takes -0 and 0 as equal.
func checkMonitorMatches(t *testing.T, e *Engine, filter MonitorQuery, slot int64, reports []*protocol.Report) {
	t.Helper()
	for _, subject := range countsSubjects {
		q := filter
		q.Subject, q.Start, q.End = subject, slot, slot
		data, err := e.Monitor(q)
		if err != nil {
			t.Fatalf("Monitor(%+v): %v", q, err)
		}
		got, ok := data[slot]
		want := referenceView(q, reports)
		if ok != (want != nil) {
			t.Errorf("Monitor(%+v) has slot %d: %v, want %v", q, slot, ok, want != nil)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Monitor(%+v)[%d] = %v, want %v", q, slot, got, want)
			continue
		}
		if gotText, wantText := fmt.Sprintf("%v", got), fmt.Sprintf("%v", want); gotText != wantText {
			t.Errorf("Monitor(%+v)[%d] prints as %s, want %s", q, slot, gotText, wantText)
		}
	}
}

// randomReport returns a report from node sent in slot `sent` with counts
// that cover the cases the compact copy handles: several services, more
// resources than linearSymbols, users whose resource sets differ, zero and
// -0 amounts, fractions whose sum depends on the order of addition, users
// without resources, a service without users and users named only in the
// rejection counts.
func randomReport(rng *rand.Rand, node string, sent int64) *protocol.Report {
	const (
		serviceCount  = 3
		userCount     = 40
		resourceCount = linearSymbols + 4
	)
	amounts := []float64{0, math.Copysign(0, -1), 0.1, 0.2, 0.3, 1, 3, 1e15, 12345.678}
	randomAmount := func() float64 { return amounts[rng.IntN(len(amounts))] }
	randomResources := func() map[string]float64 {
		resources := make(map[string]float64)
		// Most users have resource-0 to resource-3, as in a real report.
		// The others have a random set, which may be empty.
		if rng.IntN(3) != 0 {
			for i := range 4 {
				resources[fmt.Sprintf("resource-%d", i)] = randomAmount()
			}
			return resources
		}
		for range rng.IntN(resourceCount + 1) {
			resources[fmt.Sprintf("resource-%d", rng.IntN(resourceCount))] = randomAmount()
		}
		return resources
	}

	r := &protocol.Report{
		NodeID:      node,
		Slot:        sent,
		Consumption: protocol.Counts{"idle-service": {}},
		Rejection:   protocol.Counts{},
	}
	for i := range serviceCount {
		service := fmt.Sprintf("service-%d", i)
		consumption := make(map[string]map[string]float64)
		rejection := make(map[string]map[string]float64)
		for j := range userCount {
			user := fmt.Sprintf("user-%d", j)
			switch rng.IntN(6) {
			case 0:
				// Not named by this node.
			case 1:
				rejection[user] = randomResources()
			case 2:
				consumption[user] = randomResources()
				rejection[user] = randomResources()
			default:
				consumption[user] = randomResources()
			}
		}
		r.Consumption[service] = consumption
		r.Rejection[service] = rejection
	}
	return r
}

func TestMonitorMatchesReports(t *testing.T) {
	const (
		firstSent = 101
		slotCount = 4
		nodeCount = 6
	)
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "service-0", "user-1", map[string]Limit{"resource-0": {Rate: 100}}, 100)
	rng := rand.New(rand.NewPCG(1, 2))

	bySlot := make(map[int64][]*protocol.Report)
	for sent := int64(firstSent); sent < firstSent+slotCount; sent++ {
		// A different order in every slot, so that the order of addition
		// of the sums differs from the order of the node names.
		for _, node := range rng.Perm(nodeCount) {
			r := randomReport(rng, fmt.Sprintf("edge-%d", node), sent)
			mustIngest(t, e, r)
			bySlot[sent-1] = append(bySlot[sent-1], r)
		}
		mustAssign(t, e, sent, nil)
	}

	filters := []MonitorQuery{
		{},
		{Service: "service-1"},
		{User: "user-7"},
		{Service: "service-2", User: "user-3"},
		{Service: "unknown"},
		{Service: "idle-service"},
	}
	for slot, reports := range bySlot {
		for _, filter := range filters {
			checkMonitorMatches(t, e, filter, slot, reports)
		}
	}
}

func TestMonitorFiltersByServiceAndUser(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	a := report("A", 101, "front", map[string]map[string]float64{
		"u": {"traffic_up": 1, "requests": 2},
		"v": {"traffic_up": 4},
	}, nil)
	a.Consumption["back"] = counts("u", map[string]float64{"traffic_up": 8})
	b := report("B", 101, "front", counts("u", map[string]float64{"traffic_up": 16}), nil)
	mustIngest(t, e, a)
	mustIngest(t, e, b)

	sums := func(q MonitorQuery) any {
		t.Helper()
		q.Subject = SubjectConsumptionSum
		data, err := e.Monitor(q)
		if err != nil {
			t.Fatalf("Monitor(%+v): %v", q, err)
		}
		return data[100]
	}
	tests := []struct {
		query MonitorQuery
		want  any
	}{
		{MonitorQuery{Service: "front"}, protocol.Counts{"front": {
			"u": {"traffic_up": 17, "requests": 2},
			"v": {"traffic_up": 4},
		}}},
		{MonitorQuery{User: "u"}, protocol.Counts{
			"front": {"u": {"traffic_up": 17, "requests": 2}},
			"back":  {"u": {"traffic_up": 8}},
		}},
		{MonitorQuery{Service: "back", User: "u"}, protocol.Counts{"back": {"u": {"traffic_up": 8}}}},
		{MonitorQuery{Service: "back", User: "v"}, nil},
		{MonitorQuery{User: "nobody"}, nil},
	}
	for _, tt := range tests {
		if got := sums(tt.query); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("consumption_sum %+v = %v, want %v", tt.query, got, tt.want)
		}
	}

	data, err := e.Monitor(MonitorQuery{Subject: SubjectDistribution, Service: "front", User: "u"})
	if err != nil {
		t.Fatalf("Monitor(distribution): %v", err)
	}
	want := byNode{"front": {"u": {"traffic_up": {"A": 1, "B": 16}, "requests": {"A": 2}}}}
	if got := data[100]; !reflect.DeepEqual(got, want) {
		t.Errorf("distribution of front/u = %v, want %v", got, want)
	}
}

func TestMonitorRejectionOnlyUser(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustIngest(t, e, report("A", 101, "front",
		counts("u", map[string]float64{"traffic_up": 5}),
		map[string]map[string]float64{
			"u": {"traffic_up": 1},
			"r": {"traffic_up": 2, "requests": 0},
		}))

	data, _ := e.Monitor(MonitorQuery{Subject: SubjectRejectionSum})
	wantRejection := protocol.Counts{"front": {
		"u": {"traffic_up": 1},
		"r": {"traffic_up": 2, "requests": 0},
	}}
	if got := data[100]; !reflect.DeepEqual(got, wantRejection) {
		t.Errorf("rejection_sum = %v, want %v", got, wantRejection)
	}

	data, _ = e.Monitor(MonitorQuery{Subject: SubjectConsumptionSum})
	wantConsumption := protocol.Counts{"front": {"u": {"traffic_up": 5}}}
	if got := data[100]; !reflect.DeepEqual(got, wantConsumption) {
		t.Errorf("consumption_sum = %v, want %v", got, wantConsumption)
	}

	data, _ = e.Monitor(MonitorQuery{Subject: SubjectDistribution, User: "r"})
	if got, ok := data[100]; ok {
		t.Errorf("distribution of a rejection-only user = %v, want no data", got)
	}
}

func TestMonitorKeepsZeroAmounts(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustIngest(t, e, report("A", 101, "front", counts("u", map[string]float64{"traffic_up": 0, "requests": 3}), nil))

	data, _ := e.Monitor(MonitorQuery{Subject: SubjectConsumptionSum})
	wantSums := protocol.Counts{"front": {"u": {"traffic_up": 0, "requests": 3}}}
	if got := data[100]; !reflect.DeepEqual(got, wantSums) {
		t.Errorf("consumption_sum = %v, want %v", got, wantSums)
	}

	data, _ = e.Monitor(MonitorQuery{Subject: SubjectDistribution})
	wantDistribution := byNode{"front": {"u": {"traffic_up": {"A": 0}, "requests": {"A": 3}}}}
	if got := data[100]; !reflect.DeepEqual(got, wantDistribution) {
		t.Errorf("distribution = %v, want %v", got, wantDistribution)
	}
}

func TestMonitorReportedSortsNodes(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	for _, node := range []string{"edge-c", "edge-a", "edge-b"} {
		mustIngest(t, e, report(node, 101, "front", counts("u", map[string]float64{"traffic_up": 1}), nil))
	}
	// An idle node reports no counts and is still listed.
	mustIngest(t, e, &protocol.Report{NodeID: "edge-0", Slot: 101})

	data, _ := e.Monitor(MonitorQuery{Subject: SubjectReported})
	want := []string{"edge-0", "edge-a", "edge-b", "edge-c"}
	if got := data[100]; !reflect.DeepEqual(got, want) {
		t.Errorf("reported = %v, want %v", got, want)
	}
}

func TestMonitorNodeInSeveralFrames(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	for sent := int64(101); sent <= 104; sent++ {
		amount := float64(10 * sent)
		mustIngest(t, e, report("A", sent, "front", counts("u", map[string]float64{"traffic_up": amount}), nil))
		mustIngest(t, e, report("B", sent, "front", counts("u", map[string]float64{"traffic_up": 1}), nil))
	}

	reported, _ := e.Monitor(MonitorQuery{Subject: SubjectReported})
	dist, _ := e.Monitor(MonitorQuery{Subject: SubjectDistribution})
	for slot := int64(100); slot <= 103; slot++ {
		if got, want := reported[slot], []string{"A", "B"}; !reflect.DeepEqual(got, want) {
			t.Errorf("reported[%d] = %v, want %v", slot, got, want)
		}
		want := byNode{"front": {"u": {"traffic_up": {"A": float64(10 * (slot + 1)), "B": 1}}}}
		if got := dist[slot]; !reflect.DeepEqual(got, want) {
			t.Errorf("distribution[%d] = %v, want %v", slot, got, want)
		}
	}
}

func TestMonitorRecyclesOldFrames(t *testing.T) {
	// Two history slots keep five frames, so the counts of slots 100 and
	// 105 share a frame.
	e, err := New(Config{HistorySlots: 2})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	mustIngest(t, e, report("A", 101, "front", counts("u", map[string]float64{"traffic_up": 1}), nil))
	mustIngest(t, e, report("A", 106, "front", counts("v", map[string]float64{"requests": 2}), nil))
	// Too late for the history: its frame now holds slot 105. The engine
	// still counts it, because B never sent slot 100 before.
	if result := mustIngest(t, e, report("B", 101, "front", counts("u", map[string]float64{"traffic_up": 4}), nil)); result.Duplicate {
		t.Errorf("late report of B for slot 100 skipped as a duplicate")
	}

	sums, _ := e.Monitor(MonitorQuery{Subject: SubjectConsumptionSum})
	want := map[int64]any{105: protocol.Counts{"front": {"v": {"requests": 2}}}}
	if !reflect.DeepEqual(sums, want) {
		t.Errorf("consumption_sum = %v, want %v", sums, want)
	}
	reported, _ := e.Monitor(MonitorQuery{Subject: SubjectReported})
	if want := map[int64]any{105: []string{"A"}}; !reflect.DeepEqual(reported, want) {
		t.Errorf("reported = %v, want %v", reported, want)
	}
}

func TestAssignCompactsReports(t *testing.T) {
	// After the assignment the history no longer refers to the report, so
	// changing it changes nothing the monitor shows.
	e := newTestEngine(t, ModeReserve)
	r := report("A", 101, "front", counts("u", map[string]float64{"traffic_up": 7}), counts("u", map[string]float64{"traffic_up": 1}))
	mustIngest(t, e, r)
	mustAssign(t, e, 101, nil)

	r.NodeID = "changed"
	r.Consumption["front"]["u"]["traffic_up"] = 1000
	r.Consumption["front"]["w"] = map[string]float64{"requests": 5}
	delete(r.Rejection["front"], "u")

	wants := map[string]any{
		SubjectReported:       []string{"A"},
		SubjectConsumptionSum: protocol.Counts{"front": {"u": {"traffic_up": 7}}},
		SubjectRejectionSum:   protocol.Counts{"front": {"u": {"traffic_up": 1}}},
		SubjectDistribution:   byNode{"front": {"u": {"traffic_up": {"A": 7}}}},
	}
	for subject, want := range wants {
		data, err := e.Monitor(MonitorQuery{Subject: subject})
		if err != nil {
			t.Fatalf("Monitor(%s): %v", subject, err)
		}
		if got := data[100]; !reflect.DeepEqual(got, want) {
			t.Errorf("%s after the report changed = %v, want %v", subject, got, want)
		}
	}
}

func TestReportCountsSizes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	r := randomReport(rng, "edge-1", 101)
	rc := newReportCounts(r)

	names := map[string]bool{}
	keys, consumption, rejection := 0, 0, 0
	for _, part := range []struct {
		counts protocol.Counts
		total  *int
	}{{r.Consumption, &consumption}, {r.Rejection, &rejection}} {
		for service, users := range part.counts {
			for _, resources := range users {
				if len(resources) == 0 {
					continue
				}
				names[service] = true
				keys++
				*part.total += len(resources)
				for resource := range resources {
					names[resource] = true
				}
			}
		}
	}

	if len(rc.symbols) != len(names) {
		t.Errorf("symbols = %d, want one per distinct service and resource name (%d)", len(rc.symbols), len(names))
	}
	if len(rc.keys) != keys || cap(rc.keys) != keys {
		t.Errorf("keys: len %d, cap %d, want both %d", len(rc.keys), cap(rc.keys), keys)
	}
	if len(rc.consumption) != consumption || cap(rc.consumption) != consumption {
		t.Errorf("consumption: len %d, cap %d, want both %d", len(rc.consumption), cap(rc.consumption), consumption)
	}
	if len(rc.rejection) != rejection || cap(rc.rejection) != rejection {
		t.Errorf("rejection: len %d, cap %d, want both %d", len(rc.rejection), cap(rc.rejection), rejection)
	}
	if got := rc.nodeName(); got != "edge-1" {
		t.Errorf("node name = %q, want edge-1", got)
	}
}
