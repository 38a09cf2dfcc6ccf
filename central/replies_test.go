package central

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
)

func TestReplyCacheMatchesEngine(t *testing.T) {
	e, err := quota.New(quota.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"alice", "bob"} {
		if err := e.SetLimits("front", user, map[string]quota.Limit{"traffic_up": {Rate: 900}}, 1); err != nil {
			t.Fatal(err)
		}
	}
	const slot = 100
	for _, node := range []string{"edge-1", "edge-2"} {
		r := &protocol.Report{NodeID: node, Slot: slot,
			Consumption: protocol.Counts{"front": {"alice": {"traffic_up": 500}, "bob": {"traffic_up": 10}}},
			Rejection:   protocol.Counts{"video": {"carol": {"requests": 1}}}}
		if _, err := e.Ingest(r); err != nil {
			t.Fatal(err)
		}
	}
	result, err := e.Assign(slot, nil)
	if err != nil {
		t.Fatal(err)
	}
	var cache replyCache
	cache.fill(e, result.Slot)

	services := []string{"front", "video"}
	for _, node := range []string{"edge-1", "edge-2"} {
		encoded := cache.lookup(e, result.Slot, node, services)
		if encoded == nil {
			t.Fatalf("%s: no encoded quotas for slot %d", node, result.Slot)
		}
		r := &protocol.Report{NodeID: node, Slot: result.Slot - 1}
		want := api.EncodeReply(r, api.ReportReply{NodeSlot: result.Slot, Quotas: e.Quotas(node, result.Slot, services)}, "c1")
		got := api.EncodeReply(r, api.ReportReply{NodeSlot: result.Slot, Encoded: encoded}, "c1")
		// The cache writes users in the engine's order, the plain encoder
		// sorted, so the replies are compared as JSON.
		var gotJSON, wantJSON any
		if err := json.Unmarshal(got, &gotJSON); err != nil {
			t.Fatalf("%s: reply from the cache %s: %v", node, got, err)
		}
		if err := json.Unmarshal(want, &wantJSON); err != nil {
			t.Fatalf("%s: plain reply %s: %v", node, want, err)
		}
		if !reflect.DeepEqual(gotJSON, wantJSON) {
			t.Errorf("%s: reply from the cache differs:\n got %s\nwant %s", node, got, want)
		}
		if !bytes.Contains(got, []byte(`"alice"`)) {
			t.Errorf("%s: reply %s has no quota for alice", node, got)
		}
	}

	if got := cache.lookup(e, result.Slot, "edge-9", services); got != nil {
		t.Errorf("an unknown node got %v from the cache, want nil", got)
	}
	if got := cache.lookup(e, result.Slot+1, "edge-1", services); got != nil {
		t.Errorf("an unassigned slot got %v from the cache, want nil", got)
	}
	other, err := quota.New(quota.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := cache.lookup(other, result.Slot, "edge-1", services); got != nil {
		t.Errorf("another engine got %v from the cache, want nil", got)
	}
	cache.fill(e, result.Slot+encodedSlots)
	if got := cache.lookup(e, result.Slot, "edge-1", services); got != nil {
		t.Errorf("slot %d is still cached after slot %d was filled", result.Slot, result.Slot+encodedSlots)
	}
	cache.clear()
	if got := cache.lookup(e, result.Slot+encodedSlots, "edge-1", services); got != nil {
		t.Errorf("the cache still answers after clear")
	}
}
