package quota

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func newAccuracyEngine(t *testing.T, mode Mode, topUsers int) *Engine {
	t.Helper()
	e, err := New(Config{Mode: mode, TopUsers: topUsers})
	if err != nil {
		t.Fatalf("New(%q, top users %d): %v", mode, topUsers, err)
	}
	return e
}

// resourceAccuracy returns the entry of service/resource in a, failing the
// test when there is none.
func resourceAccuracy(t *testing.T, a Accuracy, service, resource string) ResourceAccuracy {
	t.Helper()
	for _, r := range a.Resources {
		if r.Service == service && r.Resource == resource {
			return r
		}
	}
	t.Fatalf("accuracy of slot %d has no entry for %s/%s: %+v", a.Slot, service, resource, a.Resources)
	return ResourceAccuracy{}
}

// ratioCounts returns RatioCounts with n set at the index of each given
// bucket bound; above every bound is written as +Inf.
func ratioCounts(n map[float64]uint64) []uint64 {
	out := make([]uint64, len(ratioBuckets)+1)
	for bound, count := range n {
		i := slices.Index(ratioBuckets[:], bound)
		if math.IsInf(bound, 1) {
			i = len(ratioBuckets)
		}
		out[i] = count
	}
	return out
}

func assertNear(t *testing.T, quantity string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9 {
		t.Errorf("%s = %v, want %v", quantity, got, want)
	}
}

// setUpTwoNodesTwoUsers sets limits for alice (traffic_up 1000, requests
// 10) and bob (traffic_up 500) in slot 90, and ingests the reports that
// nodes A and B send in slot 101 about slot 100. carol has no limit.
//
//	        alice traffic_up  alice requests  bob traffic_up       carol
//	node A  600, 2 rejected   4               300                  999
//	node B  500               -               0, 7 rejected        -
func setUpTwoNodesTwoUsers(t *testing.T, e *Engine) {
	t.Helper()
	mustSetLimits(t, e, "front", "alice", map[string]Limit{"traffic_up": {Rate: 1000}, "requests": {Rate: 10}}, 90)
	mustSetLimits(t, e, "front", "bob", map[string]Limit{"traffic_up": {Rate: 500}}, 90)
	mustIngest(t, e, report("A", 101, "front",
		map[string]map[string]float64{
			"alice": {"traffic_up": 600, "requests": 4},
			"bob":   {"traffic_up": 300},
			"carol": {"traffic_up": 999},
		},
		counts("alice", map[string]float64{"traffic_up": 2})))
	mustIngest(t, e, report("B", 101, "front",
		map[string]map[string]float64{
			"alice": {"traffic_up": 500},
			"bob":   {"traffic_up": 0},
		},
		counts("bob", map[string]float64{"traffic_up": 7})))
}

func TestAccuracyTwoNodesTwoUsers(t *testing.T) {
	for _, mode := range Modes {
		t.Run(string(mode), func(t *testing.T) {
			e := newAccuracyEngine(t, mode, DefaultTopUsers)
			setUpTwoNodesTwoUsers(t, e)
			a := mustAssign(t, e, 101, nil).Accuracy

			if a.Slot != 100 {
				t.Errorf("Slot = %d, want 100", a.Slot)
			}
			if a.ReportedNodes != 2 {
				t.Errorf("ReportedNodes = %d, want 2", a.ReportedNodes)
			}
			if a.NodesWithoutQuota != 0 {
				t.Errorf("NodesWithoutQuota = %d, want 0", a.NodesWithoutQuota)
			}
			if len(a.Resources) != 2 || a.Resources[0].Resource != "requests" || a.Resources[1].Resource != "traffic_up" {
				t.Fatalf("Resources = %+v, want front/requests then front/traffic_up", a.Resources)
			}

			up := resourceAccuracy(t, a, "front", "traffic_up")
			if up.ActiveUsers != 2 {
				t.Errorf("traffic_up ActiveUsers = %d, want 2", up.ActiveUsers)
			}
			assertNear(t, "traffic_up Admitted", up.Admitted, 1400)
			assertNear(t, "traffic_up Limit", up.Limit, 1500)
			assertNear(t, "traffic_up Rejected", up.Rejected, 9)
			// alice: 1100/1000 = 1.1; bob: 300/500 = 0.6.
			if want := ratioCounts(map[float64]uint64{1.1: 1, 0.8: 1}); !reflect.DeepEqual(up.RatioCounts, want) {
				t.Errorf("traffic_up RatioCounts = %v, want %v", up.RatioCounts, want)
			}
			assertNear(t, "traffic_up RatioSum", up.RatioSum, 1.7)

			requests := resourceAccuracy(t, a, "front", "requests")
			if requests.ActiveUsers != 1 {
				t.Errorf("requests ActiveUsers = %d, want 1", requests.ActiveUsers)
			}
			assertNear(t, "requests Admitted", requests.Admitted, 4)
			assertNear(t, "requests Limit", requests.Limit, 10)
			assertNear(t, "requests Rejected", requests.Rejected, 0)
			if want := ratioCounts(map[float64]uint64{0.5: 1}); !reflect.DeepEqual(requests.RatioCounts, want) {
				t.Errorf("requests RatioCounts = %v, want %v", requests.RatioCounts, want)
			}

			want := []UserAccuracy{
				{Service: "front", User: "alice", Resource: "traffic_up", Admitted: 1100, Limit: 1000, Ratio: 1.1},
				{Service: "front", User: "bob", Resource: "traffic_up", Admitted: 300, Limit: 500, Ratio: 0.6},
				{Service: "front", User: "alice", Resource: "requests", Admitted: 4, Limit: 10, Ratio: 0.4},
			}
			if !reflect.DeepEqual(a.TopUsers, want) {
				t.Errorf("TopUsers = %+v, want %+v", a.TopUsers, want)
			}
		})
	}
}

func TestAccuracyTopUsersLimitedToK(t *testing.T) {
	e := newAccuracyEngine(t, ModeReserve, 2)
	setUpTwoNodesTwoUsers(t, e)
	a := mustAssign(t, e, 101, nil).Accuracy
	got := make([]string, len(a.TopUsers))
	for i, u := range a.TopUsers {
		got[i] = u.User + "/" + u.Resource
	}
	if want := []string{"alice/traffic_up", "bob/traffic_up"}; !slices.Equal(got, want) {
		t.Errorf("TopUsers with k=2 = %v, want %v", got, want)
	}
}

func TestAccuracyTopUsersOffWithZero(t *testing.T) {
	e := newAccuracyEngine(t, ModeReserve, 0)
	setUpTwoNodesTwoUsers(t, e)
	a := mustAssign(t, e, 101, nil).Accuracy
	if len(a.TopUsers) != 0 {
		t.Errorf("TopUsers with k=0 = %+v, want none", a.TopUsers)
	}
	if up := resourceAccuracy(t, a, "front", "traffic_up"); up.Admitted != 1400 {
		t.Errorf("traffic_up Admitted with k=0 = %v, want 1400: the totals do not depend on k", up.Admitted)
	}
}

func TestAccuracyTopUsersTiesOrderedByName(t *testing.T) {
	e := newAccuracyEngine(t, ModeReserve, 2)
	for _, user := range []string{"dave", "bob", "carol"} {
		mustSetLimits(t, e, "front", user, map[string]Limit{"traffic_up": {Rate: 100}}, 90)
	}
	mustIngest(t, e, report("A", 101, "front", map[string]map[string]float64{
		"dave":  {"traffic_up": 90},
		"bob":   {"traffic_up": 90},
		"carol": {"traffic_up": 90},
	}, nil))
	a := mustAssign(t, e, 101, nil).Accuracy
	var got []string
	for _, u := range a.TopUsers {
		got = append(got, u.User)
	}
	if want := []string{"bob", "carol"}; !slices.Equal(got, want) {
		t.Errorf("TopUsers of three users with ratio 0.9 = %v, want %v", got, want)
	}
}

func TestAccuracyCountsOnlyReportsOfLatestSlot(t *testing.T) {
	e := newAccuracyEngine(t, ModeReserve, DefaultTopUsers)
	mustSetLimits(t, e, "front", "alice", map[string]Limit{"traffic_up": {Rate: 1000}}, 90)
	mustIngest(t, e, report("A", 101, "front", counts("alice", map[string]float64{"traffic_up": 600}), nil))

	// B's report of slot 100 has not arrived when slot 101 is assigned.
	a := mustAssign(t, e, 101, nil).Accuracy
	if a.ReportedNodes != 1 {
		t.Errorf("slot 100: ReportedNodes = %d, want 1", a.ReportedNodes)
	}
	assertNear(t, "slot 100 Admitted without B's report", resourceAccuracy(t, a, "front", "traffic_up").Admitted, 600)

	// It arrives late and is billed, but the next assignment sums slot
	// 101, of which only A has reported.
	mustIngest(t, e, report("B", 101, "front", counts("alice", map[string]float64{"traffic_up": 500}), nil))
	mustIngest(t, e, report("A", 102, "front", counts("alice", map[string]float64{"traffic_up": 200}), nil))
	a = mustAssign(t, e, 102, nil).Accuracy
	if a.Slot != 101 || a.ReportedNodes != 1 {
		t.Errorf("assignment of 102: Slot %d, ReportedNodes %d, want 101 and 1", a.Slot, a.ReportedNodes)
	}
	up := resourceAccuracy(t, a, "front", "traffic_up")
	assertNear(t, "slot 101 Admitted", up.Admitted, 200)
	if want := ratioCounts(map[float64]uint64{0.5: 1}); !reflect.DeepEqual(up.RatioCounts, want) {
		t.Errorf("slot 101 RatioCounts = %v, want %v", up.RatioCounts, want)
	}

	// No node reports slot 102, so the counts of 101 are not counted again.
	a = mustAssign(t, e, 103, nil).Accuracy
	up = resourceAccuracy(t, a, "front", "traffic_up")
	if a.ReportedNodes != 0 || up.ActiveUsers != 0 || up.Admitted != 0 || up.Limit != 0 {
		t.Errorf("slot 102 without reports: ReportedNodes %d, %+v, want all zero", a.ReportedNodes, up)
	}
	if len(a.TopUsers) != 0 {
		t.Errorf("slot 102 without reports: TopUsers %+v, want none", a.TopUsers)
	}
}

func TestAccuracyNodesWithoutQuota(t *testing.T) {
	e := newAccuracyEngine(t, ModeReserve, DefaultTopUsers)
	mustSetLimits(t, e, "front", "alice", map[string]Limit{"traffic_up": {Rate: 1000}}, 90)
	alice := counts("alice", map[string]float64{"traffic_up": 100})
	// A and B report slot 100; gossip reports B dead. D last reported slot
	// 97, within the window of 5 slots before 100; C last reported slot 94,
	// before it.
	mustIngest(t, e, report("A", 101, "front", alice, nil))
	mustIngest(t, e, report("B", 101, "front", alice, nil))
	mustIngest(t, e, report("C", 95, "front", alice, nil))
	mustIngest(t, e, report("D", 98, "front", alice, nil))

	result := mustAssign(t, e, 101, liveSet{"A": true, "C": true, "D": true})
	if result.Nodes != 1 {
		t.Errorf("Nodes = %d, want 1 (A)", result.Nodes)
	}
	a := result.Accuracy
	if a.NodesWithoutQuota != 2 {
		t.Errorf("NodesWithoutQuota = %d, want 2 (B, dead in gossip, and D, 3 slots without a report)", a.NodesWithoutQuota)
	}
	if a.ReportedNodes != 2 {
		t.Errorf("ReportedNodes = %d, want 2 (A and B)", a.ReportedNodes)
	}
	// B got no quota but admitted what it reported.
	assertNear(t, "Admitted", resourceAccuracy(t, a, "front", "traffic_up").Admitted, 200)
}

func TestAccuracyZeroRateLeftOutOfRatios(t *testing.T) {
	e := newAccuracyEngine(t, ModeReserve, DefaultTopUsers)
	mustSetLimits(t, e, "front", "blocked", map[string]Limit{"traffic_up": {Rate: 0}}, 90)
	mustSetLimits(t, e, "front", "idle", map[string]Limit{"traffic_up": {Rate: 300}}, 90)
	mustIngest(t, e, report("A", 101, "front", counts("blocked", map[string]float64{"traffic_up": 50}), nil))
	a := mustAssign(t, e, 101, nil).Accuracy

	up := resourceAccuracy(t, a, "front", "traffic_up")
	if up.ActiveUsers != 1 {
		t.Errorf("ActiveUsers = %d, want 1: idle reported nothing", up.ActiveUsers)
	}
	assertNear(t, "Admitted", up.Admitted, 50)
	assertNear(t, "Limit", up.Limit, 0)
	if want := ratioCounts(nil); !reflect.DeepEqual(up.RatioCounts, want) || up.RatioSum != 0 {
		t.Errorf("RatioCounts %v, RatioSum %v, want none for a rate of 0", up.RatioCounts, up.RatioSum)
	}
	if len(a.TopUsers) != 0 {
		t.Errorf("TopUsers = %+v, want none", a.TopUsers)
	}
}

func TestAccuracyRejectionOnlyUserIsActive(t *testing.T) {
	e := newAccuracyEngine(t, ModeReserve, DefaultTopUsers)
	mustSetLimits(t, e, "front", "alice", map[string]Limit{"traffic_up": {Rate: 1000}}, 90)
	mustIngest(t, e, report("A", 101, "front", nil, counts("alice", map[string]float64{"traffic_up": 4})))
	up := resourceAccuracy(t, mustAssign(t, e, 101, nil).Accuracy, "front", "traffic_up")
	if up.ActiveUsers != 1 || up.Admitted != 0 || up.Limit != 1000 || up.Rejected != 4 {
		t.Errorf("rejection-only user: %+v, want 1 active user, admitted 0, limit 1000, rejected 4", up)
	}
	if want := ratioCounts(nil); !reflect.DeepEqual(up.RatioCounts, want) {
		t.Errorf("RatioCounts = %v, want none: the user consumed nothing", up.RatioCounts)
	}
}

func TestRatioBucketBounds(t *testing.T) {
	for _, tc := range []struct {
		ratio float64
		want  int
	}{{0, 0}, {0.5, 0}, {0.51, 1}, {1, 4}, {1.0000001, 5}, {2, 9}, {2.5, 10}} {
		if got := ratioBucket(tc.ratio); got != tc.want {
			t.Errorf("ratioBucket(%v) = %d, want %d", tc.ratio, got, tc.want)
		}
	}
	bounds := RatioBuckets()
	bounds[0] = 99
	if ratioBuckets[0] != 0.5 {
		t.Errorf("changing the slice RatioBuckets returned changed the engine's bounds")
	}
}

// TestAccuracyMergesShards checks the totals and top users of many users,
// spread over every shard and so over every worker, against sums and a sort
// computed here.
func TestAccuracyMergesShards(t *testing.T) {
	const userCount = 500
	e := newAccuracyEngine(t, ModeReserve, 7)
	consumption := make(map[string]map[string]float64, userCount)
	var want []UserAccuracy
	var admitted, limit, ratioSum float64
	wantCounts := make([]uint64, len(ratioBuckets)+1)
	for i := range userCount {
		user := fmt.Sprintf("user-%03d", i)
		rate := float64(100 + i%7)
		used := float64((i * 37) % 250)
		mustSetLimits(t, e, "front", user, map[string]Limit{"traffic_up": {Rate: rate}}, 90)
		consumption[user] = map[string]float64{"traffic_up": used}
		if used == 0 {
			continue
		}
		admitted += used
		limit += rate
		ratioSum += used / rate
		wantCounts[ratioBucket(used/rate)]++
		want = append(want, UserAccuracy{Service: "front", User: user, Resource: "traffic_up", Admitted: used, Limit: rate, Ratio: used / rate})
	}
	mustIngest(t, e, report("A", 101, "front", consumption, nil))
	a := mustAssign(t, e, 101, nil).Accuracy

	up := resourceAccuracy(t, a, "front", "traffic_up")
	if up.ActiveUsers != len(want) {
		t.Errorf("ActiveUsers = %d, want %d", up.ActiveUsers, len(want))
	}
	assertNear(t, "Admitted", up.Admitted, admitted)
	assertNear(t, "Limit", up.Limit, limit)
	assertNear(t, "RatioSum", up.RatioSum, ratioSum)
	if !reflect.DeepEqual(up.RatioCounts, wantCounts) {
		t.Errorf("RatioCounts = %v, want %v", up.RatioCounts, wantCounts)
	}

	slices.SortFunc(want, func(a, b UserAccuracy) int {
		if a.Ratio != b.Ratio {
			if a.Ratio > b.Ratio {
				return -1
			}
			return 1
		}
		return strings.Compare(a.User, b.User)
	})
	if !reflect.DeepEqual(a.TopUsers, want[:7]) {
		t.Errorf("TopUsers = %+v, want %+v", a.TopUsers, want[:7])
	}
}

func TestNewRejectsTopUsersOutOfRange(t *testing.T) {
	for _, k := range []int{-1, MaxTopUsers + 1} {
		_, err := New(Config{TopUsers: k})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), fmt.Sprint(k)) {
			t.Errorf("New with %d top users: %v, want ErrInvalid naming %d", k, err, k)
		}
	}
	if _, err := New(Config{TopUsers: MaxTopUsers}); err != nil {
		t.Errorf("New with %d top users: %v", MaxTopUsers, err)
	}
}
