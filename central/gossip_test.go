package central

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/membership"
	"github.com/throttlecentral/throttle-central/protocol"
)

// fastGossip shortens the gossip timing so a failure is detected in well
// under a second.
func fastGossip() membership.Config {
	return membership.Config{
		ProbeInterval:       50 * time.Millisecond,
		ProbeTimeout:        25 * time.Millisecond,
		SuspicionMult:       2,
		GossipInterval:      20 * time.Millisecond,
		PushPullInterval:    200 * time.Millisecond,
		DeadNodeReclaimTime: 100 * time.Millisecond,
		ReconnectInterval:   200 * time.Millisecond,
	}
}

// withGossip turns gossip on at a kernel-chosen port, joining join.
func withGossip(join ...string) func(*Config) {
	return func(cfg *Config) {
		cfg.GossipAddr = "127.0.0.1:0"
		cfg.GossipJoin = join
		cfg.Gossip = fastGossip()
	}
}

// getMembers returns GET /v1/members of n.
func getMembers(t testing.TB, n *testNode) api.MemberList {
	t.Helper()
	status, body := request(t, http.MethodGet, n.c.HTTPAddr(), "/v1/members", nil)
	if status != http.StatusOK {
		t.Fatalf("GET /v1/members on %s: status %d, body %s", n.id(), status, body)
	}
	var list api.MemberList
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("decoding /v1/members of %s: %v (body %s)", n.id(), err, body)
	}
	return list
}

func memberNamed(list api.MemberList, id string) (api.Member, bool) {
	for _, m := range list.Members {
		if m.NodeID == id {
			return m, true
		}
	}
	return api.Member{}, false
}

func TestGossipMembersListAllCentrals(t *testing.T) {
	first := startNodeWith(t, "c1", true, nil, withGossip())
	nodes := []*testNode{first}
	for i := 2; i <= 3; i++ {
		nodes = append(nodes, startNodeWith(t, fmt.Sprintf("c%d", i), false, []string{first.c.HTTPAddr()}, withGossip(first.c.GossipAddr())))
	}
	waitForCluster(t, nodes)

	for _, observer := range nodes {
		waitFor(t, observer.id()+" to see three alive centrals", func() string {
			list := getMembers(t, observer)
			if len(list.Members) != 3 {
				return fmt.Sprintf("%d members: %+v", len(list.Members), list.Members)
			}
			for _, n := range nodes {
				if m, _ := memberNamed(list, n.id()); m.State != "alive" {
					return fmt.Sprintf("%s is %q", n.id(), m.State)
				}
			}
			return ""
		})
		list := getMembers(t, observer)
		if !list.Gossip || list.NodeID != observer.id() {
			t.Errorf("%s: gossip %v, node_id %q; want true and its own ID", observer.id(), list.Gossip, list.NodeID)
		}
		for _, n := range nodes {
			m, _ := memberNamed(list, n.id())
			if m.Role != "central" {
				t.Errorf("%s sees %s with role %q, want central", observer.id(), n.id(), m.Role)
			}
			if m.HTTPAddr != n.c.HTTPAddr() {
				t.Errorf("%s sees %s with HTTP address %q, want %q", observer.id(), n.id(), m.HTTPAddr, n.c.HTTPAddr())
			}
			if m.RaftAddr != n.c.RaftAddr() {
				t.Errorf("%s sees %s with Raft address %q, want %q", observer.id(), n.id(), m.RaftAddr, n.c.RaftAddr())
			}
			if m.GossipAddr != n.c.GossipAddr() {
				t.Errorf("%s sees %s with gossip address %q, want %q", observer.id(), n.id(), m.GossipAddr, n.c.GossipAddr())
			}
		}
	}

	status, body := request(t, http.MethodGet, first.c.HTTPAddr(), "/metrics", nil)
	if want := `throttle_gossip_members{role="central",state="alive"} 3`; status != http.StatusOK || !strings.Contains(string(body), want) {
		t.Errorf("/metrics on c1: status %d, want a line %q", status, want)
	}

	for _, server := range clusterGossip(t, first) {
		if server.Gossip != "alive" {
			t.Errorf("GET /v1/cluster on c1 shows server %s with gossip %q, want alive", server.ID, server.Gossip)
		}
	}

	// A graceful stop leaves the pool (after Raft hands leadership over), so the
	// others list the central as left, not dead.
	nodes[2].stop(t)
	waitFor(t, "c1 to see c3 left", func() string {
		m, ok := memberNamed(getMembers(t, first), "c3")
		if !ok || m.State != "left" {
			return fmt.Sprintf("c3 listed %v as %q", ok, m.State)
		}
		return ""
	})
	for _, server := range clusterGossip(t, first) {
		if server.ID == "c3" && server.Gossip != "left" {
			t.Errorf("GET /v1/cluster on c1 shows c3 with gossip %q, want left", server.Gossip)
		}
	}
}

// clusterGossip returns the servers of GET /v1/cluster on n.
func clusterGossip(t *testing.T, n *testNode) []api.ServerStatus {
	t.Helper()
	status, body := request(t, http.MethodGet, n.c.HTTPAddr(), "/v1/cluster", nil)
	if status != http.StatusOK {
		t.Fatalf("GET /v1/cluster on %s: status %d, body %s", n.id(), status, body)
	}
	var view api.ClusterStatus
	if err := json.Unmarshal(body, &view); err != nil {
		t.Fatalf("decoding /v1/cluster of %s: %v (body %s)", n.id(), err, body)
	}
	return view.Servers
}

func TestGossipLeftEdgeGetsNoQuota(t *testing.T) {
	n := startNodeWith(t, "c1", true, nil, withGossip())
	waitForCluster(t, []*testNode{n})
	if status, body := putLimit(t, n.c.HTTPAddr(), "front", "alice", 3000); status != http.StatusOK {
		t.Fatalf("PUT: %d %s", status, body)
	}
	edgeCfg := fastGossip()
	edgeCfg.Name, edgeCfg.Role = "edge-1", membership.RoleEdge
	edgeCfg.BindAddr, edgeCfg.Join = "127.0.0.1:0", []string{n.c.GossipAddr()}
	edgeCfg.Logger = testLogger(t)
	edge, err := membership.Start(edgeCfg)
	if err != nil {
		t.Fatalf("starting the edge member: %v", err)
	}
	t.Cleanup(func() { _ = edge.Shutdown() })

	// edge-1 gossips and edge-2 (a Lua client) only reports; both report
	// every slot and ask for more than their share.
	quotas := func(slot int64) map[string]bool {
		held := map[string]bool{}
		for _, node := range []string{"edge-1", "edge-2"} {
			r := protocol.Report{NodeID: node, Slot: slot,
				Consumption: protocol.Counts{"front": {"alice": {"traffic_up": 2000}}}}
			status, reply := postReport(t, n.c.HTTPAddr(), r)
			if status != http.StatusOK {
				continue
			}
			if _, ok := reply["front"][strconv.FormatInt(slot+1, 10)]["alice"]; ok {
				held[node] = true
			}
		}
		return held
	}
	both := false
	for range 8 {
		held := quotas(waitForSlotStart(50 * time.Millisecond))
		if both = held["edge-1"] && held["edge-2"]; both {
			break
		}
	}
	if !both {
		t.Fatal("edge-1 and edge-2 never both held a quota within 8 slots")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := edge.Close(ctx); err != nil {
		t.Fatalf("closing the edge member: %v", err)
	}
	// The slot loop assigns two slots ahead, so a quota assigned before the
	// leave may still arrive. After that edge-1 gets nothing while it keeps
	// reporting, and edge-2 keeps its quota.
	dropped := false
	for range 8 {
		held := quotas(waitForSlotStart(50 * time.Millisecond))
		if !held["edge-1"] && held["edge-2"] {
			dropped = true
			break
		}
	}
	if !dropped {
		t.Fatal("edge-1 still held a quota 8 slots after it left gossip")
	}
}

func TestGossipOffHasNoLiveness(t *testing.T) {
	n := startNode(t, "c1", true, nil)
	waitForCluster(t, []*testNode{n})
	if live := n.c.liveness(); live != nil {
		t.Errorf("liveness() = %v with gossip off, want nil", live)
	}
	if addr := n.c.GossipAddr(); addr != "" {
		t.Errorf("GossipAddr() = %q with gossip off, want empty", addr)
	}
	list := getMembers(t, n)
	if list.Gossip || len(list.Members) != 0 {
		t.Errorf("/v1/members with gossip off: gossip %v, %d members; want false and none", list.Gossip, len(list.Members))
	}
}

func TestGossipLivenessFollowsEdgeMember(t *testing.T) {
	n := startNodeWith(t, "c1", true, nil, withGossip())
	waitForCluster(t, []*testNode{n})
	live := n.c.liveness()
	if live == nil {
		t.Fatal("liveness() is nil with gossip on")
	}
	if !live.Live("lua-node") {
		t.Error("a node gossip never saw is not live; it must count while it reports")
	}

	edgeCfg := fastGossip()
	edgeCfg.Name, edgeCfg.Role = "edge-1", membership.RoleEdge
	edgeCfg.BindAddr, edgeCfg.Join = "127.0.0.1:0", []string{n.c.GossipAddr()}
	edgeCfg.Logger = testLogger(t)
	edge, err := membership.Start(edgeCfg)
	if err != nil {
		t.Fatalf("starting the edge member: %v", err)
	}
	t.Cleanup(func() { _ = edge.Shutdown() })
	waitFor(t, "c1 to list edge-1 alive", func() string {
		m, ok := memberNamed(getMembers(t, n), "edge-1")
		if !ok || m.State != "alive" || m.Role != "edge" {
			return fmt.Sprintf("listed %v, state %q, role %q", ok, m.State, m.Role)
		}
		return ""
	})
	if !live.Live("edge-1") {
		t.Error("Live(edge-1) is false while edge-1 is alive")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := edge.Close(ctx); err != nil {
		t.Fatalf("closing the edge member: %v", err)
	}
	waitFor(t, "edge-1 to stop being live", func() string {
		if live.Live("edge-1") {
			return "still live"
		}
		return ""
	})
}
