package membership

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestPoolJoinCarriesMetadata(t *testing.T) {
	cfg1 := testConfig(t, "c1", RoleCentral)
	cfg1.HTTPAddr, cfg1.RaftAddr = "127.0.0.1:18081", "127.0.0.1:17001"
	c1 := startPool(t, cfg1)
	cfg2 := testConfig(t, "c2", RoleCentral, c1.Addr())
	cfg2.HTTPAddr, cfg2.RaftAddr = "127.0.0.1:18082", "127.0.0.1:17002"
	c2 := startPool(t, cfg2)
	e1 := startPool(t, testConfig(t, "edge-1", RoleEdge, c2.Addr()))

	waitForMembers(t, c1, c2, e1)
	for _, observer := range []*Pool{c1, c2, e1} {
		for _, want := range []struct {
			pool      *Pool
			role      Role
			http, raf string
		}{
			{c1, RoleCentral, "127.0.0.1:18081", "127.0.0.1:17001"},
			{c2, RoleCentral, "127.0.0.1:18082", "127.0.0.1:17002"},
			{e1, RoleEdge, "", ""},
		} {
			m, _ := member(observer, want.pool.cfg.Name)
			if m.Role != want.role {
				t.Errorf("%s sees %s with role %q, want %q", observer.cfg.Name, m.Name, m.Role, want.role)
			}
			if m.Addr != want.pool.Addr() {
				t.Errorf("%s sees %s at gossip address %s, want %s", observer.cfg.Name, m.Name, m.Addr, want.pool.Addr())
			}
			if m.HTTPAddr != want.http {
				t.Errorf("%s sees %s with HTTP address %q, want %q", observer.cfg.Name, m.Name, m.HTTPAddr, want.http)
			}
			if m.RaftAddr != want.raf {
				t.Errorf("%s sees %s with Raft address %q, want %q", observer.cfg.Name, m.Name, m.RaftAddr, want.raf)
			}
		}
	}
}

func TestPoolAddrHasKernelPort(t *testing.T) {
	p := startPool(t, testConfig(t, "c1", RoleCentral))
	if !strings.HasPrefix(p.Addr(), "127.0.0.1:") || strings.HasSuffix(p.Addr(), ":0") {
		t.Errorf("Addr() = %q, want 127.0.0.1 with the port the kernel picked", p.Addr())
	}
}

func TestLeaveMakesEdgeLeftAtOnce(t *testing.T) {
	c1 := startPool(t, testConfig(t, "c1", RoleCentral))
	e1 := startPool(t, testConfig(t, "edge-1", RoleEdge, c1.Addr()))
	waitForMembers(t, c1, e1)
	if !c1.Live("edge-1") {
		t.Fatal("Live(edge-1) is false while edge-1 is alive")
	}

	start := time.Now()
	if err := e1.Leave(2 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	waitForState(t, c1, "edge-1", StateLeft, e1.Addr())
	if c1.Live("edge-1") {
		t.Error("Live(edge-1) is true after edge-1 left")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("edge-1 counted as left %v after Leave; the announcement should take well under a second", took)
	}
	if own, _ := member(e1, "edge-1"); own.State != StateLeft {
		t.Errorf("edge-1 sees itself as %q after Leave, want left", own.State)
	}
}

func TestShutdownWithoutLeaveIsDead(t *testing.T) {
	c1 := startPool(t, testConfig(t, "c1", RoleCentral))
	e1 := startPool(t, testConfig(t, "edge-1", RoleEdge, c1.Addr()))
	waitForMembers(t, c1, e1)

	if err := e1.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	m := waitForState(t, c1, "edge-1", StateDead, e1.Addr())
	if c1.Live("edge-1") {
		t.Error("Live(edge-1) is true after edge-1 died")
	}
	if m.Role != RoleEdge {
		t.Errorf("dead member keeps role %q, want edge", m.Role)
	}
}

func TestRejoinAtNewPortCountedOnce(t *testing.T) {
	c1 := startPool(t, testConfig(t, "c1", RoleCentral))
	old := startPool(t, testConfig(t, "edge-1", RoleEdge, c1.Addr()))
	waitForMembers(t, c1, old)
	if err := old.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitForState(t, c1, "edge-1", StateDead, old.Addr())

	replacement := startAtNewPort(t, testConfig(t, "edge-1", RoleEdge, c1.Addr()), old.Addr())
	waitForState(t, c1, "edge-1", StateAlive, replacement.Addr())
	if !c1.Live("edge-1") {
		t.Error("Live(edge-1) is false after edge-1 came back")
	}
	if got := countNamed(c1.Members(), "edge-1"); got != 1 {
		t.Errorf("c1 lists edge-1 %d times, want once", got)
	}
	if got := c1.list.NumMembers(); got != 2 {
		t.Errorf("memberlist on c1 counts %d live members, want 2", got)
	}
}

func TestRejoinAfterLeaveAtNewPort(t *testing.T) {
	c1 := startPool(t, testConfig(t, "c1", RoleCentral))
	old := startPool(t, testConfig(t, "edge-1", RoleEdge, c1.Addr()))
	waitForMembers(t, c1, old)
	if err := old.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitForState(t, c1, "edge-1", StateLeft, old.Addr())

	replacement := startAtNewPort(t, testConfig(t, "edge-1", RoleEdge, c1.Addr()), old.Addr())
	waitForState(t, c1, "edge-1", StateAlive, replacement.Addr())
	if !c1.Live("edge-1") {
		t.Error("Live(edge-1) is false after edge-1 came back")
	}
	if got := countNamed(c1.Members(), "edge-1"); got != 1 {
		t.Errorf("c1 lists edge-1 %d times, want once", got)
	}
}

func TestRestartWithoutJoinIsReconnected(t *testing.T) {
	c1 := startPool(t, testConfig(t, "c1", RoleCentral))
	c2 := startPool(t, testConfig(t, "c2", RoleCentral, c1.Addr()))
	waitForMembers(t, c1, c2)
	if err := c1.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitForState(t, c2, "c1", StateDead, c1.Addr())

	// c1 comes back at its old address with no Join list; only c2's
	// reconnect rounds can bring the two together again.
	cfg := testConfig(t, "c1", RoleCentral)
	cfg.BindAddr = c1.Addr()
	restarted := startPool(t, cfg)
	waitForMembers(t, restarted, c2)
}

func TestRestartAfterLeaveIsReconnected(t *testing.T) {
	c1 := startPool(t, testConfig(t, "c1", RoleCentral))
	c2 := startPool(t, testConfig(t, "c2", RoleCentral, c1.Addr()))
	waitForMembers(t, c1, c2)
	if err := c1.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitForState(t, c2, "c1", StateLeft, c1.Addr())

	cfg := testConfig(t, "c1", RoleCentral)
	cfg.BindAddr = c1.Addr()
	restarted := startPool(t, cfg)
	waitForMembers(t, restarted, c2)
}

func TestLiveOfUnknownAndCentralMembers(t *testing.T) {
	c1 := startPool(t, testConfig(t, "c1", RoleCentral))
	c2 := startPool(t, testConfig(t, "c2", RoleCentral, c1.Addr()))
	waitForMembers(t, c1, c2)
	if !c1.Live("lua-node-7") {
		t.Error("Live of a node gossip never saw is false, want true")
	}
	if err := c2.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitForState(t, c1, "c2", StateDead, c2.Addr())
	if !c1.Live("c2") {
		t.Error("Live of a dead central is false; only edge members are consulted")
	}
}

func TestEncryptionKeyGatesJoin(t *testing.T) {
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	otherKey := base64.StdEncoding.EncodeToString([]byte("fedcba9876543210"))

	cfg1 := testConfig(t, "c1", RoleCentral)
	cfg1.Key = key
	c1 := startPool(t, cfg1)
	cfg2 := testConfig(t, "c2", RoleCentral, c1.Addr())
	cfg2.Key = key
	c2 := startPool(t, cfg2)
	waitForMembers(t, c1, c2)

	for _, tc := range []struct {
		name string
		key  string
	}{
		{"wrong-key", otherKey},
		{"no-key", ""},
	} {
		cfg := testConfig(t, tc.name, RoleEdge)
		cfg.Key = tc.key
		outsider := startPool(t, cfg)
		contacted, err := outsider.list.Join([]string{c1.Addr()})
		if contacted != 0 || err == nil {
			t.Errorf("%s: Join contacted %d members with error %v, want 0 and an error", tc.name, contacted, err)
		}
		if _, ok := member(c1, tc.name); ok {
			t.Errorf("%s is in c1's view", tc.name)
		}
		if got := len(outsider.Members()); got != 1 {
			t.Errorf("%s sees %d members, want only itself", tc.name, got)
		}
	}
}

func TestMetricsCountMembersByRoleAndState(t *testing.T) {
	registry := prometheus.NewRegistry()
	cfg := testConfig(t, "c1", RoleCentral)
	cfg.Registerer = registry
	c1 := startPool(t, cfg)
	e1 := startPool(t, testConfig(t, "edge-1", RoleEdge, c1.Addr()))
	e2 := startPool(t, testConfig(t, "edge-2", RoleEdge, c1.Addr()))
	waitForMembers(t, c1, e1, e2)
	if err := e2.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitForState(t, c1, "edge-2", StateLeft, "")

	families, err := registry.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := make(map[string]float64)
	healthSeen := false
	for _, family := range families {
		switch family.GetName() {
		case "throttle_gossip_members":
			for _, metric := range family.GetMetric() {
				labels := make(map[string]string)
				for _, pair := range metric.GetLabel() {
					labels[pair.GetName()] = pair.GetValue()
				}
				got[labels["role"]+"/"+labels["state"]] = metric.GetGauge().GetValue()
			}
		case "throttle_gossip_health_score":
			healthSeen = true
		}
	}
	want := map[string]float64{
		"central/alive": 1, "central/dead": 0, "central/left": 0,
		"edge/alive": 1, "edge/dead": 0, "edge/left": 1,
	}
	for series, value := range want {
		if got[series] != value {
			t.Errorf("throttle_gossip_members{%s} = %v, want %v", series, got[series], value)
		}
	}
	if !healthSeen {
		t.Error("throttle_gossip_health_score is missing")
	}
}

func TestDeadMembersForgottenAfterRetention(t *testing.T) {
	cfg := testConfig(t, "c1", RoleCentral)
	cfg.DeadRetention = 300 * time.Millisecond
	c1 := startPool(t, cfg)
	e1 := startPool(t, testConfig(t, "edge-1", RoleEdge, c1.Addr()))
	waitForMembers(t, c1, e1)
	if err := e1.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitForState(t, c1, "edge-1", StateDead, "")
	waitFor(t, "c1 to forget edge-1", func() string {
		if m, ok := member(c1, "edge-1"); ok {
			return "still listed as " + string(m.State)
		}
		return ""
	})
	if !c1.Live("edge-1") {
		t.Error("Live of a forgotten edge node is false, want true as for a node never seen")
	}
}

func TestCloseWithDoneContextSkipsLeave(t *testing.T) {
	c1 := startPool(t, testConfig(t, "c1", RoleCentral))
	e1 := startPool(t, testConfig(t, "edge-1", RoleEdge, c1.Addr()))
	waitForMembers(t, c1, e1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e1.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitForState(t, c1, "edge-1", StateDead, "")
	if err := e1.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := e1.Leave(time.Second); err != nil {
		t.Errorf("Leave after Shutdown: %v", err)
	}
}

// startAtNewPort starts cfg on a kernel-chosen port other than the one in
// oldAddr. The kernel rarely hands out the same port twice in a row, so
// a few tries suffice.
func startAtNewPort(t *testing.T, cfg Config, oldAddr string) *Pool {
	t.Helper()
	for range 5 {
		p := startPool(t, cfg)
		if p.Addr() != oldAddr {
			return p
		}
		_ = p.Shutdown()
	}
	t.Fatalf("the kernel gave %s five times", oldAddr)
	return nil
}

func countNamed(members []Member, name string) int {
	count := 0
	for _, m := range members {
		if m.Name == name {
			count++
		}
	}
	return count
}
