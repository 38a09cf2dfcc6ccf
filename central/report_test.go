package central

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/protocol"
)

// postReport sends a report to a central and decodes the version 0 reply.
func postReport(t testing.TB, addr string, r protocol.Report) (int, map[string]map[string]protocol.Quotas) {
	t.Helper()
	status, body := request(t, http.MethodPost, addr, "/v1/report", r)
	if status != http.StatusOK {
		return status, nil
	}
	var reply map[string]map[string]protocol.Quotas
	if err := json.Unmarshal(body, &reply); err != nil {
		t.Fatalf("reply %s is not the Lua shape: %v", body, err)
	}
	return status, reply
}

// waitForSlotStart waits until the next second begins plus offset.
func waitForSlotStart(offset time.Duration) int64 {
	now := time.Now()
	next := now.Truncate(time.Second).Add(time.Second)
	time.Sleep(next.Add(offset).Sub(now))
	return next.Unix()
}

func TestReportsGetQuotasAcrossFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 15 s of real slots")
	}
	nodes := startCluster(t, 3)
	leader := nodeByID(t, nodes, waitForCluster(t, nodes))
	const rate = 3000.0
	if status, body := putLimit(t, leader.c.HTTPAddr(), "front", "alice", rate); status != http.StatusOK {
		t.Fatalf("PUT: %d %s", status, body)
	}

	edges := []string{"edge-1", "edge-2", "edge-3"}
	// Each edge reports to a different central, followers included, and
	// asks for more than its share, so the bucket is split every slot.
	send := func(slot int64, targets []*testNode) map[string]float64 {
		held := map[string]float64{}
		for i, edge := range edges {
			target := targets[i%len(targets)]
			r := protocol.Report{NodeID: edge, Slot: slot,
				Consumption: protocol.Counts{"front": {"alice": {"traffic_up": 1000}}},
				Rejection:   protocol.Counts{"front": {"alice": {"traffic_up": 3}}}}
			status, reply := postReport(t, target.c.HTTPAddr(), r)
			if status != http.StatusOK {
				continue
			}
			if len(reply) != 1 || len(reply["front"]) > 1 {
				t.Errorf("slot %d: reply %v has keys other than front/<slot>", slot, reply)
			}
			if q, ok := reply["front"][strconv.FormatInt(slot+1, 10)]["alice"]["traffic_up"]; ok {
				held[edge] = q
			}
		}
		return held
	}

	firstQuotaSlot := int64(0)
	for range 8 {
		slot := waitForSlotStart(50 * time.Millisecond)
		held := send(slot, nodes)
		total := 0.0
		for _, q := range held {
			total += q
		}
		if total > rate*10+1e-6 {
			t.Errorf("slot %d: quotas add up to %v, more than the bucket's capacity %v", slot+1, total, rate*10)
		}
		if len(held) == len(edges) && firstQuotaSlot == 0 {
			firstQuotaSlot = slot + 1
		}
	}
	if firstQuotaSlot == 0 {
		t.Fatalf("no slot in which every edge held a quota")
	}

	leader.kill(t)
	survivors := []*testNode{}
	for _, n := range nodes {
		if n.c != nil {
			survivors = append(survivors, n)
		}
	}
	killedAt := time.Now().Unix()
	resumed := int64(0)
	for range 10 {
		slot := waitForSlotStart(50 * time.Millisecond)
		held := send(slot, survivors)
		if len(held) == len(edges) {
			total := 0.0
			for _, q := range held {
				total += q
			}
			if total > rate*1.05*1.5 {
				t.Errorf("slot %d after failover: quotas add up to %v, a jump above the rate %v", slot+1, total, rate)
			}
			resumed = slot + 1
			break
		}
	}
	if resumed == 0 {
		t.Fatalf("quotas did not resume within 10 slots of the leader kill")
	}
	t.Logf("leader killed in slot %d, quotas from the new leader for slot %d", killedAt, resumed)
}

func TestLuaReportFixturesAccepted(t *testing.T) {
	nodes := startCluster(t, 1)
	addr := nodes[0].c.HTTPAddr()
	waitForQuotaEngine(t, http.DefaultClient, "http://"+addr)
	lines := readLuaReports(t)
	for i, line := range lines {
		count := i + 1
		status, body := request(t, http.MethodPost, addr, "/v1/report", json.RawMessage(line))
		if status != http.StatusOK {
			t.Errorf("fixture line %d: status %d, body %s", count, status, body)
			continue
		}
		var reply map[string]map[string]map[string]map[string]float64
		if err := json.Unmarshal(body, &reply); err != nil {
			t.Errorf("fixture line %d: reply %s: %v", count, body, err)
			continue
		}
		for service, slots := range reply {
			if service != "front" {
				t.Errorf("fixture line %d: reply names service %q the report did not", count, service)
			}
			for slot, users := range slots {
				if _, err := strconv.ParseInt(slot, 10, 64); err != nil {
					t.Errorf("fixture line %d: key %q inside the service is not a slot number", count, slot)
				}
				for _, resources := range users {
					for _, q := range resources {
						if math.IsNaN(q) || q < 0 {
							t.Errorf("fixture line %d: quota %v", count, q)
						}
					}
				}
			}
		}
	}
	if len(lines) != 28 {
		t.Errorf("replayed %d fixture reports, want 28", len(lines))
	}
}

func TestReportFromBrokenClockRejected(t *testing.T) {
	nodes := startCluster(t, 1)
	addr := nodes[0].c.HTTPAddr()
	waitForQuotaEngine(t, http.DefaultClient, "http://"+addr)

	for _, slot := range []int64{12, time.Now().Unix() + 2*86400} {
		r := protocol.Report{NodeID: "edge-1", Slot: slot, Consumption: protocol.Counts{"front": {}}, Rejection: protocol.Counts{"front": {}}}
		status, body := request(t, http.MethodPost, addr, "/v1/report", r)
		if status != http.StatusBadRequest {
			t.Errorf("slot_number %d: status %d, want 400; body %s", slot, status, body)
		}
		if !strings.Contains(string(body), "slot_number "+strconv.FormatInt(slot, 10)) {
			t.Errorf("slot_number %d: error %s does not name the value", slot, body)
		}
	}
	// A clock off by whole seconds within a day is mapped, not rejected.
	r := protocol.Report{NodeID: "edge-2", Slot: time.Now().Unix() - 3600, Consumption: protocol.Counts{"front": {}}, Rejection: protocol.Counts{"front": {}}}
	if status, body := request(t, http.MethodPost, addr, "/v1/report", r); status != http.StatusOK {
		t.Errorf("a clock an hour behind: status %d, want 200; body %s", status, body)
	}
}

func TestVersion2ReportGetsShares(t *testing.T) {
	nodes := startCluster(t, 1)
	leader := nodeByID(t, nodes, waitForCluster(t, nodes))
	if status, body := putLimit(t, leader.c.HTTPAddr(), "front", "alice", 3000); status != http.StatusOK {
		t.Fatalf("PUT: %d %s", status, body)
	}
	r := protocol.Report{Version: 2, NodeID: "edge-1", Slot: time.Now().Unix(),
		Consumption: protocol.Counts{"front": {"alice": {"traffic_up": 10}, "bob": {"traffic_up": 10}}}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body := request(t, http.MethodPost, leader.c.HTTPAddr(), "/v1/report", r)
		if status == http.StatusOK {
			var reply struct {
				Shares map[string]protocol.Shares `json:"shares"`
			}
			if err := json.Unmarshal(body, &reply); err != nil {
				t.Fatalf("reply %s: %v", body, err)
			}
			// One node has reported, so alice's share is her whole rate;
			// bob has no limit and no share.
			if got := reply.Shares["front"]["alice"]["traffic_up"]; got != 3000 {
				t.Errorf("shares.front.alice.traffic_up is %v, want 3000; reply %s", got, body)
			}
			if _, ok := reply.Shares["front"]["bob"]; ok {
				t.Errorf("bob has no limit but got a share; reply %s", body)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("report still answered %d after 10 s: %s", status, body)
		}
		time.Sleep(50 * time.Millisecond)
		r.Slot = time.Now().Unix()
	}
}

func TestReplayKeepsItsSecond(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 4 s of real slots")
	}
	n := startNode(t, "c1", true, nil)
	waitForCluster(t, []*testNode{n})
	if status, body := putLimit(t, n.c.HTTPAddr(), "front", "alice", 1000); status != http.StatusOK {
		t.Fatalf("PUT: %d %s", status, body)
	}
	type reply struct {
		CentralSlot int64 `json:"central_slot"`
		Duplicate   bool  `json:"duplicate"`
	}
	send := func(slot int64, amount float64) reply {
		t.Helper()
		r := protocol.Report{Version: 2, NodeID: "edge-1", Slot: slot,
			Consumption: protocol.Counts{"front": {"alice": {"traffic_up": amount}}}, Rejection: protocol.Counts{}}
		status, body := request(t, http.MethodPost, n.c.HTTPAddr(), "/v1/report", r)
		if status != http.StatusOK {
			t.Fatalf("report of slot %d: %d %s", slot, status, body)
		}
		var got reply
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("reply %s: %v", body, err)
		}
		return got
	}

	first := waitForSlotStart(100 * time.Millisecond)
	send(first, 100)
	for slot := first + 1; slot <= first+2; slot++ {
		waitForSlotStart(100 * time.Millisecond)
		send(slot, 100)
	}
	current := waitForSlotStart(100 * time.Millisecond)

	// A replay of the node's report of three seconds ago arrives before
	// the node's own report of this second. It is a duplicate of its own
	// second, and the node's report still counts for this one.
	replay := send(first, 100)
	own := send(current, 200)

	if !replay.Duplicate || replay.CentralSlot != first+1 {
		t.Errorf("replay of slot %d: duplicate %v, central_slot %d; want true, %d (its own second)", first, replay.Duplicate, replay.CentralSlot, first+1)
	}
	if own.Duplicate || own.CentralSlot != current+1 {
		t.Errorf("the node's report of slot %d: duplicate %v, central_slot %d; want false, %d", current, own.Duplicate, own.CentralSlot, current+1)
	}
}
