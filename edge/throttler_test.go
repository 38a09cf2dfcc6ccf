package edge

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/throttlecentral/throttle-central/protocol"
)

const (
	testService = "front"
	testNode    = "node-a"
)

func newTestThrottler(t *testing.T, options Options) *Throttler {
	t.Helper()
	throttler, err := NewThrottler(options)
	if err != nil {
		t.Fatalf("NewThrottler(%+v): %v", options, err)
	}
	return throttler
}

// checkDecision compares each field of got with want in its own check.
func checkDecision(t *testing.T, got, want Decision) {
	t.Helper()
	if got.Allowed != want.Allowed {
		t.Errorf("Allowed = %v, want %v (decision %+v)", got.Allowed, want.Allowed, got)
	}
	if got.Source != want.Source {
		t.Errorf("Source = %v, want %v", got.Source, want.Source)
	}
	if got.Resource != want.Resource {
		t.Errorf("Resource = %q, want %q", got.Resource, want.Resource)
	}
	if got.Quota != want.Quota {
		t.Errorf("Quota = %v, want %v", got.Quota, want.Quota)
	}
	if got.Consumption != want.Consumption {
		t.Errorf("Consumption = %v, want %v", got.Consumption, want.Consumption)
	}
}

func TestThrottleCentralQuota(t *testing.T) {
	const slot = 1000
	tests := []struct {
		name        string
		quotas      protocol.Quotas
		consumption map[string]float64 // of user "alice" in slot
		user        string
		want        Decision
	}{
		{
			name:        "under quota allows",
			quotas:      protocol.Quotas{"alice": {"traffic_up": 100}},
			consumption: map[string]float64{"traffic_up": 50},
			user:        "alice",
			want:        Decision{Allowed: true, Source: SourceCentral},
		},
		{
			name:   "nothing consumed allows",
			quotas: protocol.Quotas{"alice": {"traffic_up": 1}},
			user:   "alice",
			want:   Decision{Allowed: true, Source: SourceCentral},
		},
		{
			name:   "quota below 1 rejects",
			quotas: protocol.Quotas{"alice": {"traffic_up": 0.5}},
			user:   "alice",
			want:   Decision{Source: SourceCentral, Resource: "traffic_up", Quota: 0.5},
		},
		{
			name:   "quota 0 rejects",
			quotas: protocol.Quotas{"alice": {"traffic_up": 0}},
			user:   "alice",
			want:   Decision{Source: SourceCentral, Resource: "traffic_up", Quota: 0},
		},
		{
			name:        "consumption equal to quota allows",
			quotas:      protocol.Quotas{"alice": {"traffic_up": 100}},
			consumption: map[string]float64{"traffic_up": 100},
			user:        "alice",
			want:        Decision{Allowed: true, Source: SourceCentral},
		},
		{
			name:        "consumption above quota rejects",
			quotas:      protocol.Quotas{"alice": {"traffic_up": 100}},
			consumption: map[string]float64{"traffic_up": 100.5},
			user:        "alice",
			want:        Decision{Source: SourceCentral, Resource: "traffic_up", Quota: 100, Consumption: 100.5},
		},
		{
			name:        "user without entry allows",
			quotas:      protocol.Quotas{"bob": {"traffic_up": 0}},
			consumption: map[string]float64{"traffic_up": 1e12},
			user:        "alice",
			want:        Decision{Allowed: true, Source: SourceCentral},
		},
		{
			name:        "resource not in entry allows",
			quotas:      protocol.Quotas{"alice": {"traffic_up": 100}},
			consumption: map[string]float64{"traffic_down": 1e12},
			user:        "alice",
			want:        Decision{Allowed: true, Source: SourceCentral},
		},
		{
			name:   "entry without resources allows",
			quotas: protocol.Quotas{"alice": {}},
			user:   "alice",
			want:   Decision{Allowed: true, Source: SourceCentral},
		},
		{
			name:        "second resource exhausted rejects on it",
			quotas:      protocol.Quotas{"alice": {"database_read": 10, "traffic_up": 100}},
			consumption: map[string]float64{"database_read": 5, "traffic_up": 101},
			user:        "alice",
			want:        Decision{Source: SourceCentral, Resource: "traffic_up", Quota: 100, Consumption: 101},
		},
		{
			name:        "two exhausted resources reject on first by name",
			quotas:      protocol.Quotas{"alice": {"traffic_up": 100, "database_read": 10}},
			consumption: map[string]float64{"database_read": 11, "traffic_up": 101},
			user:        "alice",
			want:        Decision{Source: SourceCentral, Resource: "database_read", Quota: 10, Consumption: 11},
		},
		{
			name:   "nil quotas allow every user",
			quotas: nil,
			user:   "alice",
			want:   Decision{Allowed: true, Source: SourceCentral},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			// A closed fallback shows that the central's quotas decide,
			// because the fallback would reject every request.
			throttler := newTestThrottler(t, Options{DefaultFallback: FallbackClosed})
			throttler.SetQuotas(testService, slot, test.quotas)
			throttler.Consume(slot, testService, "alice", test.consumption)

			checkDecision(t, throttler.Throttle(slot, testService, test.user), test.want)
		})
	}
}

func TestThrottleFallbackWithoutQuota(t *testing.T) {
	const slot = 1000
	shares := protocol.Shares{"alice": {"traffic_up": 100, "database_read": 0.25}, "carol": {"traffic_up": 100}}
	tests := []struct {
		name        string
		policy      FallbackPolicy
		user        string
		consumption map[string]float64
		want        Decision
	}{
		{
			name:        "open allows",
			policy:      FallbackOpen,
			user:        "alice",
			consumption: map[string]float64{"traffic_up": 1e12},
			want:        Decision{Allowed: true, Source: SourceFallback},
		},
		{
			name:   "closed rejects",
			policy: FallbackClosed,
			user:   "alice",
			want:   Decision{Source: SourceFallback},
		},
		{
			name:   "closed rejects user without share",
			policy: FallbackClosed,
			user:   "dave",
			want:   Decision{Source: SourceFallback},
		},
		{
			name:        "safe-share allows user without share",
			policy:      FallbackSafeShare,
			user:        "dave",
			consumption: map[string]float64{"traffic_up": 1e12},
			want:        Decision{Allowed: true, Source: SourceFallback},
		},
		{
			name:        "safe-share allows consumption equal to share",
			policy:      FallbackSafeShare,
			user:        "carol",
			consumption: map[string]float64{"traffic_up": 100},
			want:        Decision{Allowed: true, Source: SourceFallback},
		},
		{
			name:        "safe-share rejects consumption above share",
			policy:      FallbackSafeShare,
			user:        "carol",
			consumption: map[string]float64{"traffic_up": 101},
			want:        Decision{Source: SourceFallback, Resource: "traffic_up", Quota: 100, Consumption: 101},
		},
		{
			name:   "safe-share rejects share below 1",
			policy: FallbackSafeShare,
			user:   "alice",
			want:   Decision{Source: SourceFallback, Resource: "database_read", Quota: 0.25},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			throttler := newTestThrottler(t, Options{DefaultFallback: test.policy})
			throttler.SetShares(testService, shares)
			// Quotas for the slot before do not apply to this slot.
			throttler.SetQuotas(testService, slot-1, protocol.Quotas{"alice": {"traffic_up": 1e15}})
			throttler.Consume(slot, testService, test.user, test.consumption)

			checkDecision(t, throttler.Throttle(slot, testService, test.user), test.want)
		})
	}
}

func TestThrottleNoEntryWithShare(t *testing.T) {
	const slot = 1000
	tests := []struct {
		name   string
		policy FallbackPolicy
		want   Decision
	}{
		{
			name:   "safe-share enforces share",
			policy: FallbackSafeShare,
			want:   Decision{Source: SourceFallback, Resource: "traffic_up", Quota: 100, Consumption: 150},
		},
		{
			name:   "open allows",
			policy: FallbackOpen,
			want:   Decision{Allowed: true, Source: SourceCentral},
		},
		{
			name:   "closed allows",
			policy: FallbackClosed,
			want:   Decision{Allowed: true, Source: SourceCentral},
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			throttler := newTestThrottler(t, Options{DefaultFallback: test.policy})
			throttler.SetQuotas(testService, slot, protocol.Quotas{"bob": {"traffic_up": 10}})
			throttler.SetShares(testService, protocol.Shares{"alice": {"traffic_up": 100}})
			throttler.Consume(slot, testService, "alice", map[string]float64{"traffic_up": 150})

			checkDecision(t, throttler.Throttle(slot, testService, "alice"), test.want)
		})
	}
}

func TestThrottleServiceFallbackOverride(t *testing.T) {
	throttler := newTestThrottler(t, Options{
		DefaultFallback: FallbackOpen,
		ServiceFallback: map[string]FallbackPolicy{"back": FallbackClosed},
	})

	if got := throttler.FallbackPolicy("front"); got != FallbackOpen {
		t.Errorf("FallbackPolicy(front) = %v, want %v", got, FallbackOpen)
	}
	if got := throttler.FallbackPolicy("back"); got != FallbackClosed {
		t.Errorf("FallbackPolicy(back) = %v, want %v", got, FallbackClosed)
	}
	if d := throttler.Throttle(1000, "front", "alice"); !d.Allowed {
		t.Errorf("Throttle(front) = %+v, want allowed by the open default", d)
	}
	if d := throttler.Throttle(1000, "back", "alice"); d.Allowed {
		t.Errorf("Throttle(back) = %+v, want rejected by the closed override", d)
	}
}

func TestThrottleServicesIndependent(t *testing.T) {
	throttler := newTestThrottler(t, Options{DefaultFallback: FallbackOpen})
	throttler.SetQuotas("front", 1000, protocol.Quotas{"alice": {"traffic_up": 0}})
	throttler.SetShares("front", protocol.Shares{"alice": {"traffic_up": 0}})

	d := throttler.Throttle(1000, "back", "alice")
	checkDecision(t, d, Decision{Allowed: true, Source: SourceFallback})
}

func TestThrottleCountsRejectionOnResource(t *testing.T) {
	const slot = 1000
	throttler := newTestThrottler(t, Options{})
	throttler.SetQuotas(testService, slot, protocol.Quotas{"alice": {"database_read": 10, "traffic_up": 100}})
	throttler.Consume(slot, testService, "alice", map[string]float64{"database_read": 3, "traffic_up": 200})

	for range 3 {
		if d := throttler.Throttle(slot, testService, "alice"); d.Allowed {
			t.Fatalf("Throttle = %+v, want rejected on traffic_up", d)
		}
	}
	report := throttler.TakeReport(testNode, slot+1)

	rejection := report.Rejection[testService]["alice"]
	if got := rejection["traffic_up"]; got != 3 {
		t.Errorf("rejection of traffic_up = %v, want 3 (rejection %v)", got, rejection)
	}
	if got, ok := rejection["database_read"]; ok {
		t.Errorf("rejection of database_read = %v, want no entry", got)
	}
	if got := report.Consumption[testService]["alice"]["traffic_up"]; got != 200 {
		t.Errorf("consumption of traffic_up = %v, want 200", got)
	}
}

func TestThrottleClosedRejectionNotCounted(t *testing.T) {
	throttler := newTestThrottler(t, Options{DefaultFallback: FallbackClosed})
	throttler.Throttle(1000, testService, "alice")

	report := throttler.TakeReport(testNode, 1001)
	if len(report.Rejection) != 0 {
		t.Errorf("Rejection = %v, want empty", report.Rejection)
	}
}

func TestTakeReportContents(t *testing.T) {
	const slot = 1001
	throttler := newTestThrottler(t, Options{})
	// "idle" has quotas cached but no counts; "front" has counts only.
	throttler.SetQuotas("idle", slot+1, protocol.Quotas{"zoe": {"traffic_up": 5}})
	throttler.SetQuotas("front", slot-1, protocol.Quotas{"bob": {"traffic_up": 0}})
	throttler.Consume(slot-1, "front", "alice", map[string]float64{"traffic_up": 1.2345678901234e+14, "database_read": 3})
	throttler.Consume(slot-1, "front", "alice", map[string]float64{"database_read": 2})
	throttler.Throttle(slot-1, "front", "bob")
	throttler.Consume(slot-1, "back", "carol", map[string]float64{"traffic_down": 7})
	throttler.Consume(slot, "front", "alice", map[string]float64{"traffic_up": 11})

	report := throttler.TakeReport(testNode, slot)

	if report.NodeID != testNode {
		t.Errorf("NodeID = %q, want %q", report.NodeID, testNode)
	}
	if report.Slot != slot {
		t.Errorf("Slot = %d, want %d", report.Slot, slot)
	}
	if report.Version != 0 {
		t.Errorf("Version = %d, want 0", report.Version)
	}
	alice := report.Consumption["front"]["alice"]
	if got := alice["traffic_up"]; got != 1.2345678901234e+14 {
		t.Errorf("alice traffic_up = %v, want 1.2345678901234e+14", got)
	}
	if got := alice["database_read"]; got != 5 {
		t.Errorf("alice database_read = %v, want 5", got)
	}
	if got := report.Rejection["front"]["bob"]["traffic_up"]; got != 1 {
		t.Errorf("bob rejection of traffic_up = %v, want 1", got)
	}
	if _, ok := report.Consumption["front"]["bob"]; ok {
		t.Errorf("Consumption[front][bob] present, want absent because bob consumed nothing")
	}
	if got := report.Consumption["back"]["carol"]["traffic_down"]; got != 7 {
		t.Errorf("carol traffic_down = %v, want 7", got)
	}

	for _, service := range []string{"front", "back", "idle"} {
		if users, ok := report.Consumption[service]; !ok || users == nil {
			t.Errorf("Consumption[%s] = %v (present %v), want a map", service, users, ok)
		}
		if users, ok := report.Rejection[service]; !ok || users == nil {
			t.Errorf("Rejection[%s] = %v (present %v), want a map", service, users, ok)
		}
	}
	if n := len(report.Consumption["idle"]); n != 0 {
		t.Errorf("len(Consumption[idle]) = %d, want 0", n)
	}
	if n := len(report.Rejection["back"]); n != 0 {
		t.Errorf("len(Rejection[back]) = %d, want 0", n)
	}
	if n := len(report.Consumption); n != 3 {
		t.Errorf("len(Consumption) = %d, want 3 services (%v)", n, report.Consumption)
	}
	if n := len(report.Rejection); n != 3 {
		t.Errorf("len(Rejection) = %d, want 3 services (%v)", n, report.Rejection)
	}
}

func TestTakeReportKeepsSendingSlot(t *testing.T) {
	const slot = 1001
	throttler := newTestThrottler(t, Options{})
	throttler.Consume(slot-1, testService, "alice", map[string]float64{"traffic_up": 1})
	throttler.Consume(slot, testService, "alice", map[string]float64{"traffic_up": 10})

	throttler.TakeReport(testNode, slot)
	again := throttler.TakeReport(testNode, slot)
	next := throttler.TakeReport(testNode, slot+1)

	if n := len(again.Consumption); n != 0 {
		t.Errorf("second TakeReport(%d) Consumption = %v, want empty", slot, again.Consumption)
	}
	if got := next.Consumption[testService]["alice"]["traffic_up"]; got != 10 {
		t.Errorf("TakeReport(%d) alice traffic_up = %v, want 10 counted in slot %d", slot+1, got, slot)
	}
}

func TestTakeReportDropsOlderSlots(t *testing.T) {
	throttler := newTestThrottler(t, Options{})
	throttler.Consume(995, testService, "alice", map[string]float64{"traffic_up": 1})

	skipped := throttler.TakeReport(testNode, 1000)
	late := throttler.TakeReport(testNode, 996)

	if n := len(skipped.Consumption); n != 0 {
		t.Errorf("TakeReport(1000) Consumption = %v, want empty because slot 995 is not slot 999", skipped.Consumption)
	}
	if n := len(late.Consumption); n != 0 {
		t.Errorf("TakeReport(996) Consumption = %v, want empty because slot 995 was dropped", late.Consumption)
	}
}

func TestTakeReportDropsStaleQuotas(t *testing.T) {
	throttler := newTestThrottler(t, Options{})
	throttler.SetQuotas(testService, 100, protocol.Quotas{"alice": {"traffic_up": 5}})

	recent := throttler.TakeReport(testNode, 109)
	stale := throttler.TakeReport(testNode, 110)

	if _, ok := recent.Consumption[testService]; !ok {
		t.Errorf("TakeReport(109) Consumption = %v, want %s present while slot 100 is cached", recent.Consumption, testService)
	}
	if _, ok := stale.Consumption[testService]; ok {
		t.Errorf("TakeReport(110) Consumption = %v, want %s absent after slot 100 is dropped", stale.Consumption, testService)
	}
	if d := throttler.Throttle(100, testService, "alice"); d.Source != SourceFallback {
		t.Errorf("Throttle(100) Source = %v, want fallback after the quotas were dropped", d.Source)
	}
}

// cachedSlots returns the slots in [from, to] for which the throttler has
// quotas of testService. It relies on an open fallback, so a cached slot is
// decided by the central and any other slot by the fallback.
func cachedSlots(throttler *Throttler, from, to int64) []int64 {
	var slots []int64
	for slot := from; slot <= to; slot++ {
		if throttler.Throttle(slot, testService, "nobody").Source == SourceCentral {
			slots = append(slots, slot)
		}
	}
	return slots
}

func TestSetQuotasKeepsLastSlots(t *testing.T) {
	throttler := newTestThrottler(t, Options{DefaultFallback: FallbackOpen})
	for slot := int64(1); slot <= 15; slot++ {
		throttler.SetQuotas(testService, slot, protocol.Quotas{})
	}

	got := fmt.Sprint(cachedSlots(throttler, 0, 16))
	if want := "[6 7 8 9 10 11 12 13 14 15]"; got != want {
		t.Errorf("cached slots = %s, want %s", got, want)
	}

	throttler.SetQuotas(testService, 5, protocol.Quotas{})
	got = fmt.Sprint(cachedSlots(throttler, 0, 16))
	if want := "[6 7 8 9 10 11 12 13 14 15]"; got != want {
		t.Errorf("cached slots after storing slot 5 = %s, want %s (slot 5 is too old)", got, want)
	}

	throttler.SetQuotas(testService, 20, protocol.Quotas{})
	got = fmt.Sprint(cachedSlots(throttler, 0, 21))
	if want := "[11 12 13 14 15 20]"; got != want {
		t.Errorf("cached slots after storing slot 20 = %s, want %s", got, want)
	}
}

func TestSetQuotasKeepSlotsOption(t *testing.T) {
	throttler := newTestThrottler(t, Options{DefaultFallback: FallbackOpen, KeepSlots: 3})
	for slot := int64(1); slot <= 6; slot++ {
		throttler.SetQuotas(testService, slot, protocol.Quotas{})
	}

	got := fmt.Sprint(cachedSlots(throttler, 0, 7))
	if want := "[4 5 6]"; got != want {
		t.Errorf("cached slots = %s, want %s", got, want)
	}
}

func TestSetQuotasOutOfOrder(t *testing.T) {
	throttler := newTestThrottler(t, Options{DefaultFallback: FallbackOpen})
	for _, slot := range []int64{12, 10, 11} {
		throttler.SetQuotas(testService, slot, protocol.Quotas{})
	}

	got := fmt.Sprint(cachedSlots(throttler, 9, 13))
	if want := "[10 11 12]"; got != want {
		t.Errorf("cached slots = %s, want %s", got, want)
	}
}

func TestSetQuotasReplacesSlot(t *testing.T) {
	throttler := newTestThrottler(t, Options{})
	throttler.SetQuotas(testService, 1000, protocol.Quotas{"alice": {"traffic_up": 0}, "bob": {"traffic_up": 0}})
	throttler.SetQuotas(testService, 1000, protocol.Quotas{"alice": {"traffic_up": 10}})

	if d := throttler.Throttle(1000, testService, "alice"); !d.Allowed {
		t.Errorf("Throttle(alice) = %+v, want allowed by the replacing quota 10", d)
	}
	if d := throttler.Throttle(1000, testService, "bob"); !d.Allowed {
		t.Errorf("Throttle(bob) = %+v, want allowed because the replacing quotas have no entry for bob", d)
	}
}

func TestSetQuotasCopiesInput(t *testing.T) {
	throttler := newTestThrottler(t, Options{})
	quotas := protocol.Quotas{"alice": {"traffic_up": 0}}
	throttler.SetQuotas(testService, 1000, quotas)
	quotas["alice"]["traffic_up"] = 100

	d := throttler.Throttle(1000, testService, "alice")
	checkDecision(t, d, Decision{Source: SourceCentral, Resource: "traffic_up", Quota: 0})
}

func TestSetSharesReplaces(t *testing.T) {
	throttler := newTestThrottler(t, Options{})
	throttler.SetShares(testService, protocol.Shares{"alice": {"traffic_up": 0}, "bob": {"traffic_up": 0}})
	throttler.SetShares(testService, protocol.Shares{"alice": {"traffic_up": 0}})

	if d := throttler.Throttle(1000, testService, "alice"); d.Allowed {
		t.Errorf("Throttle(alice) = %+v, want rejected by the share 0", d)
	}
	if d := throttler.Throttle(1000, testService, "bob"); !d.Allowed {
		t.Errorf("Throttle(bob) = %+v, want allowed because bob's share was replaced", d)
	}

	throttler.SetShares(testService, nil)
	if d := throttler.Throttle(1000, testService, "alice"); !d.Allowed {
		t.Errorf("Throttle(alice) after nil shares = %+v, want allowed", d)
	}
}

func TestConsumeSkipsInvalidAmounts(t *testing.T) {
	throttler := newTestThrottler(t, Options{})
	throttler.Consume(1000, testService, "alice", map[string]float64{
		"traffic_up": 5, "negative": -1, "nan": math.NaN(), "inf": math.Inf(1), "zero": 0,
	})
	throttler.Consume(1000, testService, "bob", map[string]float64{"negative": -1})

	report := throttler.TakeReport(testNode, 1001)
	alice := report.Consumption[testService]["alice"]
	if got := alice["traffic_up"]; got != 5 {
		t.Errorf("alice traffic_up = %v, want 5", got)
	}
	if got, ok := alice["zero"]; !ok || got != 0 {
		t.Errorf("alice zero = %v (present %v), want 0 present", got, ok)
	}
	for _, resource := range []string{"negative", "nan", "inf"} {
		if got, ok := alice[resource]; ok {
			t.Errorf("alice %s = %v, want no entry", resource, got)
		}
	}
	if got, ok := report.Consumption[testService]["bob"]; ok {
		t.Errorf("bob = %v, want no entry because every amount was invalid", got)
	}
}

func TestNewThrottlerInvalidOptions(t *testing.T) {
	tests := []struct {
		name          string
		options       Options
		wantInMessage string
		wantPolicyErr bool
	}{
		{
			name:          "default policy out of range",
			options:       Options{DefaultFallback: FallbackPolicy(7)},
			wantInMessage: "FallbackPolicy(7)",
			wantPolicyErr: true,
		},
		{
			name:          "service policy out of range",
			options:       Options{ServiceFallback: map[string]FallbackPolicy{"front": -1}},
			wantInMessage: `"front"`,
			wantPolicyErr: true,
		},
		{
			name:          "empty service name",
			options:       Options{ServiceFallback: map[string]FallbackPolicy{"": FallbackOpen}},
			wantInMessage: "empty service name",
		},
		{
			name:          "negative KeepSlots",
			options:       Options{KeepSlots: -1},
			wantInMessage: "KeepSlots -1",
		},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			throttler, err := NewThrottler(test.options)
			if err == nil {
				t.Fatalf("NewThrottler(%+v) = %v, nil; want an error", test.options, throttler)
			}
			if !strings.Contains(err.Error(), test.wantInMessage) {
				t.Errorf("error %q does not contain %q", err, test.wantInMessage)
			}
			if got := errors.Is(err, ErrInvalidFallbackPolicy); got != test.wantPolicyErr {
				t.Errorf("errors.Is(%q, ErrInvalidFallbackPolicy) = %v, want %v", err, got, test.wantPolicyErr)
			}
		})
	}
}

func TestNewThrottlerCopiesServiceFallback(t *testing.T) {
	overrides := map[string]FallbackPolicy{"front": FallbackClosed}
	throttler := newTestThrottler(t, Options{ServiceFallback: overrides})
	overrides["front"] = FallbackOpen

	if got := throttler.FallbackPolicy("front"); got != FallbackClosed {
		t.Errorf("FallbackPolicy(front) = %v, want %v", got, FallbackClosed)
	}
}

// TestThrottlerConcurrent runs Consume and Throttle for one slot on many
// goroutines while TakeReport takes the report of the slot before and
// SetQuotas stores the next quotas, as an edge node does each second. The
// reports must add up to exactly what the workers counted.
func TestThrottlerConcurrent(t *testing.T) {
	const (
		workers   = 8
		users     = 16
		slots     = 20
		requests  = 200 // per worker and slot, so 100 per user and slot
		firstSlot = 1000
	)
	throttler := newTestThrottler(t, Options{DefaultFallback: FallbackOpen})

	var (
		reports   []protocol.Report
		rejected  [workers]int
		served    [workers]int
		waitSlots sync.WaitGroup
	)
	quotasFor := func() protocol.Quotas {
		quotas := protocol.Quotas{}
		for u := range users {
			quotas[fmt.Sprintf("user%d", u)] = map[string]float64{"traffic_up": 150}
		}
		return quotas
	}
	throttler.SetQuotas(testService, firstSlot, quotasFor())

	for slot := int64(firstSlot); slot < firstSlot+slots; slot++ {
		waitSlots.Add(workers + 1)
		go func() {
			defer waitSlots.Done()
			reports = append(reports, throttler.TakeReport(testNode, slot))
			throttler.SetQuotas(testService, slot+1, quotasFor())
		}()
		for w := range workers {
			go func() {
				defer waitSlots.Done()
				for i := range requests {
					user := fmt.Sprintf("user%d", (w+i)%users)
					if !throttler.Throttle(slot, testService, user).Allowed {
						rejected[w]++
						continue
					}
					served[w]++
					throttler.Consume(slot, testService, user, map[string]float64{"traffic_up": 3})
				}
			}()
		}
		waitSlots.Wait()
	}
	reports = append(reports, throttler.TakeReport(testNode, firstSlot+slots))

	var wantServed, wantRejected int
	for w := range workers {
		wantServed += served[w]
		wantRejected += rejected[w]
	}
	var gotConsumption, gotRejection float64
	for _, report := range reports {
		for _, resources := range report.Consumption[testService] {
			gotConsumption += resources["traffic_up"]
		}
		for _, resources := range report.Rejection[testService] {
			gotRejection += resources["traffic_up"]
		}
	}
	if want := float64(3 * wantServed); gotConsumption != want {
		t.Errorf("reported consumption = %v, want %v (3 per served request, %d served)", gotConsumption, want, wantServed)
	}
	if want := float64(wantRejected); gotRejection != want {
		t.Errorf("reported rejection = %v, want %v", gotRejection, want)
	}
	if wantRejected == 0 {
		t.Errorf("no request was rejected, want some: the test no longer exercises rejection counting")
	}
}

func TestCounterShardSize(t *testing.T) {
	if size := unsafe.Sizeof(counterShard{}); size != 64 {
		t.Errorf("unsafe.Sizeof(counterShard{}) = %d, want 64 so that shards do not share a cache line", size)
	}
}
