package quota

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/throttlecentral/throttle-central/protocol"
)

func TestParseMode(t *testing.T) {
	for _, m := range Modes {
		got, err := ParseMode(string(m))
		if err != nil || got != m {
			t.Errorf("ParseMode(%q) = %q, %v", m, got, err)
		}
	}
	_, err := ParseMode("fair")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"fair"`) {
		t.Errorf("ParseMode(fair) error %v, want ErrInvalid naming the value", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{Mode: "x"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("New with mode x: %v, want ErrInvalid", err)
	}
	if _, err := New(Config{HistorySlots: -1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("New with -1 history slots: %v, want ErrInvalid", err)
	}
}

func TestDuplicateReportCountedOnce(t *testing.T) {
	for _, mode := range Modes {
		t.Run(string(mode), func(t *testing.T) {
			e := newTestEngine(t, mode)
			mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
			mustAssign(t, e, 100, nil)
			r := report("A", 102, "front", counts("u", map[string]float64{"traffic_up": 100}), nil)
			if res := mustIngest(t, e, r); res.Duplicate {
				t.Fatalf("first report taken as duplicate")
			}
			before, _ := e.BucketLevel("front", "u", "traffic_up")
			again := report("A", 102, "front", counts("u", map[string]float64{"traffic_up": 100}), nil)
			if res := mustIngest(t, e, again); !res.Duplicate {
				t.Errorf("repeated report not marked duplicate")
			}
			assertLevel(t, e, "front", "u", "traffic_up", before)
			data, _ := e.Monitor(MonitorQuery{Subject: SubjectConsumptionSum})
			if got := data[101].(protocol.Counts)["front"]["u"]["traffic_up"]; got != 100 {
				t.Errorf("consumption_sum of slot 101 = %v, want 100", got)
			}
		})
	}
}

func TestReportsOutOfOrderAreNotDuplicates(t *testing.T) {
	e := newTestEngine(t, ModeClassic)
	steps := []struct {
		sent      int64
		duplicate bool
	}{{105, false}, {103, false}, {104, false}, {103, true}, {105 - duplicateSlots, true}}
	for _, step := range steps {
		res := mustIngest(t, e, report("A", step.sent, "front", nil, nil))
		if res.Duplicate != step.duplicate {
			t.Errorf("report sent in slot %d: duplicate %v, want %v", step.sent, res.Duplicate, step.duplicate)
		}
	}
}

func TestInvalidReportChangesNothing(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	cases := []struct {
		name   string
		report protocol.Report
		field  string
	}{
		{"missing node", protocol.Report{Slot: 10}, "node_id"},
		{"zero slot", protocol.Report{NodeID: "A"}, "slot_number"},
		{"negative count", protocol.Report{NodeID: "A", Slot: 10,
			Consumption: protocol.Counts{"front": counts("u", map[string]float64{"traffic_up": -1})}}, "consumption.front.u.traffic_up"},
		{"NaN count", protocol.Report{NodeID: "A", Slot: 10,
			Consumption: protocol.Counts{"front": counts("u", map[string]float64{"traffic_up": nan})}}, "consumption.front.u.traffic_up"},
		{"infinite rejection", protocol.Report{NodeID: "A", Slot: 10,
			Rejection: protocol.Counts{"front": counts("u", map[string]float64{"traffic_up": inf})}}, "rejection.front.u.traffic_up"},
		{"count above 2^53", protocol.Report{NodeID: "A", Slot: 10,
			Consumption: protocol.Counts{"front": counts("u", map[string]float64{"traffic_up": 1 << 54})}}, "consumption.front.u.traffic_up"},
		{"slash in user", protocol.Report{NodeID: "A", Slot: 10,
			Consumption: protocol.Counts{"front": counts("a/b", map[string]float64{"traffic_up": 1})}}, "consumption.front"},
		{"long resource", protocol.Report{NodeID: "A", Slot: 10,
			Consumption: protocol.Counts{"front": counts("u", map[string]float64{strings.Repeat("r", 129): 1})}}, "consumption.front.u"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEngine(t, ModeReserve)
			mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 1)
			// One valid count next to the bad one must not be applied.
			r := tc.report
			if r.Consumption == nil {
				r.Consumption = protocol.Counts{}
			}
			r.Consumption.Add("front", "ok", "traffic_up", 5)
			_, err := e.Ingest(&r)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Ingest error %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name %s", err, tc.field)
			}
			if n := e.lookupNode(r.NodeID); n != nil && r.NodeID != "" {
				t.Errorf("invalid report registered node %q", r.NodeID)
			}
			data, _ := e.Monitor(MonitorQuery{Subject: SubjectReported})
			if len(data) != 0 {
				t.Errorf("invalid report shows in the monitor: %v", data)
			}
		})
	}
}

func TestSetLimitsValidation(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	cases := []struct {
		name    string
		service string
		limits  map[string]Limit
		field   string
	}{
		{"negative limit", "front", map[string]Limit{"traffic_up": {Rate: -1}}, "limit"},
		{"NaN burst", "front", map[string]Limit{"traffic_up": {Rate: 1, Burst: math.NaN()}}, "burst"},
		{"burst below limit", "front", map[string]Limit{"traffic_up": {Rate: 10, Burst: 5}}, "burst"},
		{"empty resource", "front", map[string]Limit{"": {Rate: 1}}, "resource"},
		{"empty service", "", map[string]Limit{"traffic_up": {Rate: 1}}, "service"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := e.SetLimits(tc.service, "u", tc.limits, 1)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("SetLimits error %v, want ErrInvalid naming %s", err, tc.field)
			}
			if got := e.Limits(tc.service, "u"); got != nil {
				t.Errorf("rejected limits were stored: %v", got)
			}
		})
	}
}

func TestLimitCapacity(t *testing.T) {
	if got := (Limit{Rate: 100}).Capacity(); got != 1000 {
		t.Errorf("default capacity %v, want 1000", got)
	}
	if got := (Limit{Rate: 100, Burst: 250}).Capacity(); got != 250 {
		t.Errorf("explicit capacity %v, want 250", got)
	}
}

func TestSetLimitsReplacesResources(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1}, "database_read": {Rate: 2}}, 1)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"database_read": {Rate: 3}}, 2)
	want := map[string]Limit{"database_read": {Rate: 3}}
	if got := e.Limits("front", "u"); !reflect.DeepEqual(got, want) {
		t.Errorf("Limits = %v, want %v", got, want)
	}
	if _, ok := e.BucketLevel("front", "u", "traffic_up"); ok {
		t.Errorf("the removed resource still has a bucket")
	}
}

func TestServicesAreIndependent(t *testing.T) {
	for _, mode := range Modes {
		t.Run(string(mode), func(t *testing.T) {
			e := newTestEngine(t, mode)
			mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
			mustSetLimits(t, e, "back", "u", map[string]Limit{"traffic_up": {Rate: 50}}, 100)
			r := &protocol.Report{NodeID: "A", Slot: 101,
				Consumption: protocol.Counts{
					"front": counts("u", map[string]float64{"traffic_up": 10}),
					"back":  counts("u", map[string]float64{"traffic_up": 10}),
				}}
			mustIngest(t, e, r)
			mustAssign(t, e, 101, nil)
			front, _ := quotaOf(e, "A", 103, "front", "u", "traffic_up")
			back, _ := quotaOf(e, "A", 103, "back", "u", "traffic_up")
			if front <= back || back > 100+eps {
				t.Errorf("front quota %v, back quota %v: back must stay within its own bucket of 50/s", front, back)
			}
			only := e.Quotas("A", 103, []string{"back"})
			if _, ok := only["front"]; ok || len(only) != 1 {
				t.Errorf("Quotas for [back] = %v, want only back", only)
			}
		})
	}
}

func TestQuotasNameOnlyRequestedServices(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	got := e.Quotas("nobody", 10, []string{"front"})
	want := map[string]protocol.Quotas{"front": {}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Quotas for an unknown node = %v, want %v", got, want)
	}
}

func TestAssignRejectsOldSlot(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustAssign(t, e, 10, nil)
	if _, err := e.Assign(10, nil); !errors.Is(err, ErrAlreadyAssigned) {
		t.Errorf("second Assign(10): %v, want ErrAlreadyAssigned", err)
	}
}

func TestHistoryKeepsLastSlots(t *testing.T) {
	e, err := New(Config{HistorySlots: 3})
	if err != nil {
		t.Fatal(err)
	}
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	for sent := int64(101); sent <= 106; sent++ {
		mustIngest(t, e, report("A", sent, "front", counts("u", map[string]float64{"traffic_up": float64(sent)}), nil))
		mustAssign(t, e, sent, nil)
	}
	data, err := e.Monitor(MonitorQuery{Subject: SubjectConsumptionSum})
	if err != nil {
		t.Fatal(err)
	}
	// The assignment of slot 106 is the newest: the three slots before it
	// are kept, with the counts of 103 to 105.
	for slot := int64(100); slot <= 105; slot++ {
		_, ok := data[slot]
		if want := slot >= 103; ok != want {
			t.Errorf("consumption_sum has slot %d: %v, want %v", slot, ok, want)
		}
	}
	quotas, _ := e.Monitor(MonitorQuery{Subject: SubjectQuota})
	for slot := range quotas {
		if slot < 103 {
			t.Errorf("quota frame of slot %d kept beyond 3 slots", slot)
		}
	}
}

func TestMonitorSubjects(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	mustSetLimits(t, e, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	mustIngest(t, e, report("A", 101, "front", counts("u", map[string]float64{"traffic_up": 30}), counts("u", map[string]float64{"traffic_up": 2})))
	b := report("B", 101, "front", counts("u", map[string]float64{"traffic_up": 10}), nil)
	b.Consumption["other"] = counts("v", map[string]float64{"x": 1})
	mustIngest(t, e, b)
	mustAssign(t, e, 101, nil)

	check := func(q MonitorQuery, slot int64, want any) {
		t.Helper()
		data, err := e.Monitor(q)
		if err != nil {
			t.Fatalf("Monitor(%+v): %v", q, err)
		}
		if got := data[slot]; !reflect.DeepEqual(got, want) {
			t.Errorf("Monitor(%+v)[%d] = %#v, want %#v", q, slot, got, want)
		}
	}
	check(MonitorQuery{Subject: SubjectReported}, 100, []string{"A", "B"})
	check(MonitorQuery{Subject: SubjectConnections}, 101, []string{"A", "B"})
	check(MonitorQuery{Subject: SubjectConsumptionSum, Service: "front"}, 100,
		protocol.Counts{"front": counts("u", map[string]float64{"traffic_up": 40})})
	check(MonitorQuery{Subject: SubjectRejectionSum}, 100,
		protocol.Counts{"front": counts("u", map[string]float64{"traffic_up": 2})})
	check(MonitorQuery{Subject: SubjectDistribution, User: "u"}, 100,
		byNode{"front": {"u": {"traffic_up": {"A": 30, "B": 10}}}})

	data, _ := e.Monitor(MonitorQuery{Subject: SubjectQuota, Start: 103, End: 103})
	quotas := data[103].(byNode)["front"]["u"]["traffic_up"]
	if len(quotas) != 2 || math.Abs(quotas["A"]+quotas["B"]-1000) > 1e-6 {
		t.Errorf("quota of slot 103 = %v, want A and B adding up to 1000", quotas)
	}
	if len(data) != 1 {
		t.Errorf("range 103..103 returned slots %v", data)
	}
}

func TestMonitorRejectsBadQuery(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	if _, err := e.Monitor(MonitorQuery{Subject: "users"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"users"`) {
		t.Errorf("unknown subject: %v, want ErrInvalid naming it", err)
	}
	if _, err := e.Monitor(MonitorQuery{Subject: SubjectQuota, Start: 5, End: 4}); !errors.Is(err, ErrInvalid) {
		t.Errorf("reversed range: %v, want ErrInvalid", err)
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	e := startReserve(t)
	mustSetLimits(t, e, "front", "idle", map[string]Limit{"traffic_up": {Rate: 10}}, 100)
	for slot := int64(101); slot <= 120; slot++ {
		r := report("A", slot, "front", counts("u", map[string]float64{"traffic_up": 600}), nil)
		if slot == 101 {
			r.Consumption["front"]["idle"] = map[string]float64{"traffic_up": 0}
		}
		mustIngest(t, e, r)
		mustAssign(t, e, slot, nil)
	}
	// The idle user was reported once and has refilled since.
	assertLevel(t, e, "front", "idle", "traffic_up", 100)
	cp := e.Checkpoint()
	encoded, err := json.Marshal(cp)
	if err != nil {
		t.Fatal(err)
	}
	var decoded Checkpoint
	if err := json.Unmarshal(encoded, &decoded); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(decoded, cp) {
		t.Fatalf("checkpoint changed in JSON: %+v, want %+v", decoded, cp)
	}
	if cp.Slot != 120 || cp.LiveNodes != 1 {
		t.Errorf("checkpoint slot %d, live nodes %d; want 120 and 1", cp.Slot, cp.LiveNodes)
	}

	level, _ := e.BucketLevel("front", "u", "traffic_up")
	next := newTestEngine(t, ModeReserve)
	mustSetLimits(t, next, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	mustSetLimits(t, next, "front", "idle", map[string]Limit{"traffic_up": {Rate: 10}}, 100)
	mustSetLimits(t, next, "front", "new", map[string]Limit{"traffic_up": {Rate: 7}}, 121)
	if err := next.Restore(decoded, 123); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	// The restored level gets one slot of refill at once.
	assertLevel(t, next, "front", "u", "traffic_up", level+1000)
	// Full buckets are left out of the checkpoint and come back full; a
	// limit newer than the checkpoint starts with one second of tokens.
	assertLevel(t, next, "front", "idle", "traffic_up", 100)
	assertLevel(t, next, "front", "new", "traffic_up", 7)
	if got := next.LiveNodes(); got != 1 {
		t.Errorf("restored live nodes %d, want 1", got)
	}

	// Reports of slots before 125 were covered by the old leader: not billed.
	mustIngest(t, next, report("A", 124, "front", counts("u", map[string]float64{"traffic_up": 600}), nil))
	assertLevel(t, next, "front", "u", "traffic_up", level+1000)

	// An assignment with no node in the user's split yet adds no refill.
	mustAssign(t, next, 123, liveSet{})
	assertLevel(t, next, "front", "u", "traffic_up", level+1000)

	// The first assignment with a node grants the restored level plus one
	// slot of refill.
	mustIngest(t, next, report("A", 125, "front", counts("u", map[string]float64{"traffic_up": 600}), nil))
	mustAssign(t, next, 124, nil)
	q, _ := quotaOf(next, "A", 126, "front", "u", "traffic_up")
	if math.Abs(q-(level+1000)) > 1e-6 {
		t.Errorf("first quota after restore %v, want level %v + one slot of 1000", q, level)
	}
}

func TestRestoredLiveCountSizesShares(t *testing.T) {
	e := startReserve(t)
	for slot := int64(101); slot <= 105; slot++ {
		for _, node := range []string{"A", "B", "C"} {
			mustIngest(t, e, report(node, slot, "front", counts("u", map[string]float64{"traffic_up": 600}), nil))
		}
		mustAssign(t, e, slot, nil)
	}
	cp := e.Checkpoint()
	if cp.LiveNodes != 3 {
		t.Fatalf("checkpoint live nodes %d, want 3", cp.LiveNodes)
	}

	next := newTestEngine(t, ModeReserve)
	mustSetLimits(t, next, "front", "u", map[string]Limit{"traffic_up": {Rate: 1000}}, 100)
	if err := next.Restore(cp, 107); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	// A new leader's first assignment runs before any report reached it,
	// then the nodes report one by one.
	mustAssign(t, next, 107, nil)
	mustIngest(t, next, report("A", 108, "front", counts("u", map[string]float64{"traffic_up": 600}), nil))

	if got := next.LiveNodes(); got != 3 {
		t.Errorf("live nodes after an assignment that found none: %d, want the restored 3", got)
	}
	if got := next.Shares("front", []string{"u"})["u"]["traffic_up"]; math.Abs(got-1000.0/3) > 1e-9 {
		t.Errorf("safe share %v, want the rate divided among the 3 nodes last known live", got)
	}
}

func TestRestoreRejectsOldSlot(t *testing.T) {
	e := newTestEngine(t, ModeReserve)
	if err := e.Restore(Checkpoint{Slot: 10}, 10); !errors.Is(err, ErrInvalid) {
		t.Errorf("Restore at the checkpoint slot: %v, want ErrInvalid", err)
	}
}

func TestValidNameAgreesWithValidateName(t *testing.T) {
	names := []string{"", "a", "front", "a/b", " a", "a ", "\x00", "a\x7f", "\xff", "ü", "a b",
		strings.Repeat("x", MaxNameLength), strings.Repeat("x", MaxNameLength+1), "\u00a0a"}
	for _, name := range names {
		want := ValidateName("f", name) == nil
		if got := validName(name); got != want {
			t.Errorf("validName(%q) = %v, ValidateName accepts it: %v", name, got, want)
		}
	}
}
