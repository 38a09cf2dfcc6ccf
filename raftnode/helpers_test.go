package raftnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Test timings. Followers start an election after 200-400 ms without a
// heartbeat, so a test cluster elects a leader in under a second. A leader
// steps down after 100 ms without contact from a quorum. With a 50 ms
// lease, a leader under the race detector on a busy 2-core machine
// sometimes stepped down while its new follower was catching up.
const (
	testHeartbeatTimeout   = 200 * time.Millisecond
	testElectionTimeout    = 200 * time.Millisecond
	testLeaderLeaseTimeout = 100 * time.Millisecond
	testCommitTimeout      = 5 * time.Millisecond

	// waitTimeout bounds every wait for a cluster condition.
	waitTimeout = 10 * time.Second
	// pollInterval is how often waitFor checks its condition.
	pollInterval = 5 * time.Millisecond
)

// listFSM is the test FSM: an append-only list of strings. Apply returns
// the list's new length, or an error for a command that starts with
// "fail:", which leaves the list unchanged.
type listFSM struct {
	mu       sync.Mutex
	entries  []string
	restores int
}

var _ raft.FSM = (*listFSM)(nil)

func (f *listFSM) Apply(entry *raft.Log) any {
	command := string(entry.Data)
	if strings.HasPrefix(command, "fail:") {
		return errors.New(command)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = append(f.entries, command)
	return len(f.entries)
}

func (f *listFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return listSnapshot(slices.Clone(f.entries)), nil
}

func (f *listFSM) Restore(snapshot io.ReadCloser) error {
	defer snapshot.Close()
	var entries []string
	if err := json.NewDecoder(snapshot).Decode(&entries); err != nil {
		return fmt.Errorf("decode list snapshot: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = entries
	f.restores++
	return nil
}

// Entries returns a copy of the list.
func (f *listFSM) Entries() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries)
}

// Restores returns how many snapshots were restored into the FSM.
func (f *listFSM) Restores() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restores
}

type listSnapshot []string

func (s listSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("encode list snapshot: %w", err)
	}
	return sink.Close()
}

func (s listSnapshot) Release() {}

// testLogWriter writes log lines to the test's output until the test
// ends. Raft goroutines that log after that are ignored, because writing to
// a finished test's output panics.
type testLogWriter struct {
	mu    sync.Mutex
	out   io.Writer
	ended bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		return len(p), nil
	}
	return w.out.Write(p)
}

// newTestLogger returns a logger that writes info and above to the test
// output, which go test shows for failed tests and with -v.
func newTestLogger(t *testing.T) *slog.Logger {
	t.Helper()
	writer := &testLogWriter{out: t.Output()}
	// Registered before any node, so it runs after every node's Close.
	t.Cleanup(func() {
		writer.mu.Lock()
		writer.ended = true
		writer.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(writer, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// testNode is a Node with the test FSM and the settings to restart it.
type testNode struct {
	*Node
	fsm *listFSM
	cfg Config
}

// testConfig returns a Config with the test timings, a loopback address
// with a port the kernel picks, and a fresh data directory.
func testConfig(t *testing.T, logger *slog.Logger, id string) Config {
	t.Helper()
	return Config{
		NodeID:             id,
		RaftAddr:           "127.0.0.1:0",
		DataDir:            t.TempDir(),
		Logger:             logger,
		HeartbeatTimeout:   testHeartbeatTimeout,
		ElectionTimeout:    testElectionTimeout,
		LeaderLeaseTimeout: testLeaderLeaseTimeout,
		CommitTimeout:      testCommitTimeout,
	}
}

// openTestNode opens a node with cfg and a new test FSM, and closes it at
// the end of the test.
func openTestNode(t *testing.T, cfg Config) *testNode {
	t.Helper()
	fsm := &listFSM{}
	cfg.FSM = fsm
	node, err := Open(cfg)
	if err != nil {
		t.Fatalf("open node %q: %v", cfg.NodeID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := node.Close(ctx); err != nil {
			t.Errorf("close node %q: %v", cfg.NodeID, err)
		}
	})
	return &testNode{Node: node, fsm: fsm, cfg: cfg}
}

// reopen closes n and opens it again on the same data directory with a
// new, empty FSM. addr is the Raft address to listen on.
func (n *testNode) reopen(t *testing.T, addr string) *testNode {
	t.Helper()
	closeNode(t, n)
	cfg := n.cfg
	cfg.RaftAddr = addr
	return openTestNode(t, cfg)
}

func closeNode(t *testing.T, n *testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		t.Fatalf("close node %q: %v", n.ID(), err)
	}
}

// waitFor polls cond until it returns true, and fails the test after
// waitTimeout. what describes the condition for the failure message.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for !cond() {
		select {
		case <-ticker.C:
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
	}
}

// waitForLeader waits until one of nodes is the leader and every node
// names it, and returns it.
func waitForLeader(t *testing.T, nodes ...*testNode) *testNode {
	t.Helper()
	var leader *testNode
	waitFor(t, "a leader that every node knows", func() bool {
		leader = nil
		for _, n := range nodes {
			if n.IsLeader() {
				leader = n
			}
		}
		if leader == nil {
			return false
		}
		for _, n := range nodes {
			if id, _ := n.Leader(); id != leader.ID() {
				return false
			}
		}
		return true
	})
	return leader
}

// waitForEntries waits until every node's FSM contains exactly want.
func waitForEntries(t *testing.T, want []string, nodes ...*testNode) {
	t.Helper()
	for _, n := range nodes {
		waitFor(t, fmt.Sprintf("node %q to apply %d entries", n.ID(), len(want)), func() bool {
			return slices.Equal(n.fsm.Entries(), want)
		})
	}
}

// startCluster bootstraps the first of size nodes and joins the others
// through the leader of the nodes started so far. It returns the nodes with
// the leader first. configure, if not nil, adjusts each node's Config
// before it opens.
func startCluster(t *testing.T, size int, configure func(*Config)) []*testNode {
	t.Helper()
	logger := newTestLogger(t)
	nodes := make([]*testNode, size)
	for i := range nodes {
		cfg := testConfig(t, logger, fmt.Sprintf("node%d", i))
		cfg.Bootstrap = i == 0
		if configure != nil {
			configure(&cfg)
		}
		nodes[i] = openTestNode(t, cfg)
		if i > 0 {
			joinCluster(t, nodes[i], nodes[:i]...)
		}
	}
	leader := waitForLeader(t, nodes...)
	index := slices.Index(nodes, leader)
	nodes[0], nodes[index] = nodes[index], nodes[0]
	return nodes
}

// joinCluster calls Join on the leader among members, and retries until a
// join succeeds, as a joining server does. Join is idempotent, so
// a retry after a join that took effect but reported an error is safe.
func joinCluster(t *testing.T, joining *testNode, members ...*testNode) {
	t.Helper()
	waitFor(t, fmt.Sprintf("node %q to join", joining.ID()), func() bool {
		for _, member := range members {
			if !member.IsLeader() {
				continue
			}
			if err := member.Join(joining.ID(), joining.Addr()); err != nil {
				t.Logf("join of node %q through %q failed, retrying: %v", joining.ID(), member.ID(), err)
				return false
			}
			return true
		}
		return false
	})
}

// mustApply applies command on n and fails the test on error.
func mustApply(t *testing.T, n *testNode, command string) any {
	t.Helper()
	response, err := n.Apply(context.Background(), []byte(command))
	if err != nil {
		t.Fatalf("apply %q on %q: %v", command, n.ID(), err)
	}
	return response
}

// serverMap returns the node's configuration as server ID -> address.
func serverMap(t *testing.T, n *testNode) map[string]string {
	t.Helper()
	servers, err := n.Servers()
	if err != nil {
		t.Fatalf("servers of %q: %v", n.ID(), err)
	}
	addrs := make(map[string]string, len(servers))
	for _, server := range servers {
		addrs[server.ID] = server.Address
	}
	return addrs
}

// configurationEntriesAfter counts the configuration entries in n's log
// after index. hashicorp/raft v1.7.2 does not expose the configuration's
// log index (GetConfiguration's Index is always 0), so the test reads the
// log store.
func configurationEntriesAfter(t *testing.T, n *testNode, index uint64) int {
	t.Helper()
	last, err := n.store.LastIndex()
	if err != nil {
		t.Fatalf("last log index of %q: %v", n.ID(), err)
	}
	count := 0
	for i := index + 1; i <= last; i++ {
		var entry raft.Log
		if err := n.store.GetLog(i, &entry); err != nil {
			t.Fatalf("log entry %d of %q: %v", i, n.ID(), err)
		}
		if entry.Type == raft.LogConfiguration {
			count++
		}
	}
	return count
}

func mustStats(t *testing.T, n *testNode) Stats {
	t.Helper()
	stats, err := n.Stats()
	if err != nil {
		t.Fatalf("stats of %q: %v", n.ID(), err)
	}
	return stats
}
