package central

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/raftnode"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 20 * time.Second

func testLogger(t testing.TB) *slog.Logger {
	t.Helper()
	if os.Getenv("THROTTLE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fastRaft shortens Raft's timing so elections take tens of milliseconds.
func fastRaft() raftnode.Config {
	return raftnode.Config{
		HeartbeatTimeout:   200 * time.Millisecond,
		ElectionTimeout:    200 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		ApplyTimeout:       5 * time.Second,
	}
}

// testNode is one central of a test cluster with the configuration it was
// started with, so it can be restarted on the same data and addresses.
type testNode struct {
	cfg Config
	c   *Central
}

func (n *testNode) id() string { return n.cfg.NodeID }

// startNode starts a central on 127.0.0.1 with kernel-chosen ports.
func startNode(t testing.TB, id string, bootstrap bool, join []string) *testNode {
	t.Helper()
	return startNodeWith(t, id, bootstrap, join, nil)
}

// startNodeWith is startNode with a hook that adjusts the configuration.
func startNodeWith(t testing.TB, id string, bootstrap bool, join []string, adjust func(*Config)) *testNode {
	t.Helper()
	cfg := Config{
		NodeID:    id,
		HTTPAddr:  "127.0.0.1:0",
		RaftAddr:  "127.0.0.1:0",
		DataDir:   filepath.Join(t.TempDir(), id),
		Bootstrap: bootstrap,
		Join:      join,
		JoinRetry: 50 * time.Millisecond,
		Raft:      fastRaft(),
		Logger:    testLogger(t).With("test_node", id),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	n := &testNode{cfg: cfg}
	n.start(t)
	// Restarts keep the addresses the kernel picked the first time.
	n.cfg.HTTPAddr, n.cfg.RaftAddr = n.c.HTTPAddr(), n.c.RaftAddr()
	t.Cleanup(func() { n.stop(t) })
	return n
}

func (n *testNode) start(t testing.TB) {
	t.Helper()
	c, err := Start(n.cfg)
	if err != nil {
		t.Fatalf("start %s: %v", n.id(), err)
	}
	n.c = c
}

// stop shuts the central down gracefully.
func (n *testNode) stop(t testing.TB) {
	t.Helper()
	if n.c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.c.Close(ctx); err != nil {
		t.Logf("close %s: %v", n.id(), err)
	}
	n.c = nil
}

// kill stops the central without handing leadership over, as a crash does
// for the rest of the cluster.
func (n *testNode) kill(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.c.Close(ctx); err != nil {
		t.Logf("kill %s: %v", n.id(), err)
	}
	n.c = nil
}

// startCluster starts size centrals: the first bootstraps, the others join
// through its API. It waits until every node sees the same leader and all
// servers.
func startCluster(t testing.TB, size int) []*testNode {
	t.Helper()
	first := startNode(t, "c1", true, nil)
	nodes := []*testNode{first}
	for i := 2; i <= size; i++ {
		nodes = append(nodes, startNode(t, fmt.Sprintf("c%d", i), false, []string{first.c.HTTPAddr()}))
	}
	waitForCluster(t, nodes)
	return nodes
}

// waitFor polls cond until it returns "" or the deadline passes, then fails
// with the last reason.
func waitFor(t testing.TB, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	reason := ""
	for time.Now().Before(deadline) {
		if reason = cond(); reason == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s: %s", waitTimeout, what, reason)
}

// waitForCluster waits until every running node knows the same leader and
// all of them as servers, and every node is ready.
func waitForCluster(t testing.TB, nodes []*testNode) string {
	t.Helper()
	var leader string
	waitFor(t, "a cluster with one leader", func() string {
		leader = ""
		for _, n := range nodes {
			if n.c == nil {
				continue
			}
			id, _ := n.c.Node().Leader()
			if id == "" {
				return n.id() + " knows no leader"
			}
			if leader != "" && id != leader {
				return fmt.Sprintf("%s follows %s, others %s", n.id(), id, leader)
			}
			leader = id
			servers, err := n.c.Node().Servers()
			if err != nil || len(servers) != running(nodes) {
				return fmt.Sprintf("%s sees %d servers (%v), want %d", n.id(), len(servers), err, running(nodes))
			}
			if ready, reason := n.c.ready.check(); !ready {
				return n.id() + " not ready: " + reason
			}
		}
		return ""
	})
	return leader
}

func running(nodes []*testNode) int {
	count := 0
	for _, n := range nodes {
		if n.c != nil {
			count++
		}
	}
	return count
}

func nodeByID(t testing.TB, nodes []*testNode, id string) *testNode {
	t.Helper()
	for _, n := range nodes {
		if n.id() == id {
			return n
		}
	}
	t.Fatalf("no node %q", id)
	return nil
}

// request sends a JSON request to a node's API and returns the status and
// the body.
func request(t testing.TB, method, addr, path string, body any) (int, []byte) {
	t.Helper()
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "http://"+addr+path, reader)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, addr, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func putLimit(t testing.TB, addr, service, user string, rate float64) (int, []byte) {
	t.Helper()
	return request(t, http.MethodPut, addr, "/v1/limits/"+service+"/"+user,
		map[string]any{"limit": map[string]float64{"traffic_up": rate}})
}

// waitForLimit waits until node n holds rate for service/user.
func waitForLimit(t testing.TB, n *testNode, service, user string, rate float64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s/%s on %s", service, user, n.id()), func() string {
		got, ok := n.c.State().Limits(service, user)
		if !ok {
			return "missing"
		}
		if got.Limits["traffic_up"].Rate != rate {
			return fmt.Sprintf("rate %v, want %v", got.Limits["traffic_up"].Rate, rate)
		}
		return ""
	})
}

func term(t testing.TB, n *testNode) uint64 {
	t.Helper()
	stats, err := n.c.Node().Stats()
	if err != nil {
		t.Fatalf("stats of %s: %v", n.id(), err)
	}
	return stats.Term
}
