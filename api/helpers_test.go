package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// Node IDs and addresses of the test cluster. No test sends traffic to the
// Raft addresses: the fake cluster only stores them.
const (
	leaderID       = "central-1"
	followerID     = "central-2"
	leaderRaftAddr = "127.0.0.1:7001"
)

// testNow is the fixed clock of every test node. The leader stamps it into
// commands as testTS (unix milliseconds) and testSlot (unix seconds).
var testNow = time.UnixMilli(1_700_000_000_123).UTC()

const (
	testTS   int64 = 1_700_000_000_123
	testSlot int64 = 1_700_000_000
)

// joinCall is one call of fakeCluster.Join.
type joinCall struct {
	ID   string
	Addr string
}

// fakeCluster is a Cluster without Raft. Apply decodes each command with
// fsm.Decode, records it and applies it to the FSM at the next index, so
// the FSM then reads as it would after a commit. A method with a configured
// error returns it and changes nothing, except that Barrier still counts
// the call.
type fakeCluster struct {
	fsm *fsm.FSM

	mu         sync.Mutex
	leader     bool
	leaderID   string
	leaderAddr string
	// lastIndex is the Raft index of the last entry applied to fsm, by
	// Apply or by seed.
	lastIndex uint64
	commands  []fsm.Command
	barriers  int
	joins     []joinCall
	removes   []string
	servers   []raftnode.Server
	stats     raftnode.Stats
	// skipFSM makes Apply record commands without applying them, like a
	// node whose FSM lags the commit.
	skipFSM bool
	// panicInServers makes Servers panic, to exercise the panic recovery.
	panicInServers bool

	applyErr   error
	barrierErr error
	joinErr    error
	removeErr  error
	serversErr error
	statsErr   error
}

var _ Cluster = (*fakeCluster)(nil)

func (c *fakeCluster) Apply(_ context.Context, data []byte) (any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applyErr != nil {
		return nil, c.applyErr
	}
	cmd, err := fsm.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("fake cluster: decoding the command: %w", err)
	}
	c.commands = append(c.commands, cmd)
	if c.skipFSM {
		return nil, nil
	}
	c.lastIndex++
	// Like raftnode.Node.Apply, an error returned by the FSM is returned
	// as the error.
	if response := c.fsm.Apply(&raft.Log{Index: c.lastIndex, Type: raft.LogCommand, Data: data}); response != nil {
		if err, ok := response.(error); ok {
			return nil, err
		}
		return response, nil
	}
	return nil, nil
}

func (c *fakeCluster) Barrier(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.barriers++
	return c.barrierErr
}

func (c *fakeCluster) IsLeader() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

func (c *fakeCluster) Leader() (id, addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leaderID, c.leaderAddr
}

// Join records the call and adds the server as a voter, or updates its
// address.
func (c *fakeCluster) Join(id, addr string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.joinErr != nil {
		return c.joinErr
	}
	c.joins = append(c.joins, joinCall{ID: id, Addr: addr})
	c.servers = slices.DeleteFunc(c.servers, func(s raftnode.Server) bool { return s.ID == id })
	c.servers = append(c.servers, raftnode.Server{ID: id, Address: addr, Suffrage: "Voter"})
	return nil
}

// Remove records the call and removes the server, or returns an error
// wrapping raftnode.ErrUnknownServer when it is not in the configuration.
func (c *fakeCluster) Remove(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removeErr != nil {
		return c.removeErr
	}
	c.removes = append(c.removes, id)
	n := len(c.servers)
	c.servers = slices.DeleteFunc(c.servers, func(s raftnode.Server) bool { return s.ID == id })
	if len(c.servers) == n {
		return fmt.Errorf("raftnode: remove %q: %w", id, raftnode.ErrUnknownServer)
	}
	return nil
}

func (c *fakeCluster) Servers() ([]raftnode.Server, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.panicInServers {
		panic("fake cluster: Servers panicked")
	}
	if c.serversErr != nil {
		return nil, c.serversErr
	}
	return slices.Clone(c.servers), nil
}

func (c *fakeCluster) Stats() (raftnode.Stats, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.statsErr != nil {
		return raftnode.Stats{}, c.statsErr
	}
	return c.stats, nil
}

// set runs change under the fake's lock, for tests that reconfigure it
// while a server may be reading it.
func (c *fakeCluster) set(change func(c *fakeCluster)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	change(c)
}

// recordedCommands returns a copy of the commands Apply received.
func (c *fakeCluster) recordedCommands() []fsm.Command {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.commands)
}

func (c *fakeCluster) barrierCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.barriers
}

func (c *fakeCluster) joinCalls() []joinCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.joins)
}

func (c *fakeCluster) removeCalls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.removes)
}

// testNode is one API instance over a fake cluster and a real FSM.
type testNode struct {
	api     *Server
	cluster *fakeCluster
	state   *fsm.FSM
}

// newTestNode builds an API for nodeID with the fixed clock testNow. A
// leader's fake cluster names nodeID as the leader, and a follower's names
// no leader until the test sets one. configure, if not nil, changes the
// Config before New.
func newTestNode(t *testing.T, nodeID string, leader bool, configure func(*Config)) *testNode {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	state := fsm.New(fsm.Options{
		Logger: logger,
		OnCorrupt: func(index uint64, err error) {
			t.Errorf("FSM received a corrupt entry at index %d: %v", index, err)
		},
	})
	cluster := &fakeCluster{fsm: state, leader: leader}
	if leader {
		cluster.leaderID, cluster.leaderAddr = nodeID, leaderRaftAddr
	}
	cfg := Config{
		NodeID:  nodeID,
		Cluster: cluster,
		State:   state,
		Logger:  logger,
		Now:     func() time.Time { return testNow },
	}
	if configure != nil {
		configure(&cfg)
	}
	server, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", nodeID, err)
	}
	return &testNode{api: server, cluster: cluster, state: state}
}

func newLeader(t *testing.T) *testNode {
	t.Helper()
	return newTestNode(t, leaderID, true, nil)
}

// seed applies cmd to the node's FSM directly, as a commit that did not
// pass through this node's API, so the fake cluster does not record it.
func (n *testNode) seed(t *testing.T, cmd fsm.Command) {
	t.Helper()
	data, err := fsm.Encode(cmd)
	if err != nil {
		t.Fatalf("fsm.Encode(%#v): %v", cmd, err)
	}
	n.cluster.mu.Lock()
	defer n.cluster.mu.Unlock()
	n.cluster.lastIndex++
	if response := n.state.Apply(&raft.Log{Index: n.cluster.lastIndex, Type: raft.LogCommand, Data: data}); response != nil {
		t.Fatalf("seeding %s: FSM.Apply returned %v, want nil", cmd.Type(), response)
	}
}

// seedLimits stores limits for service/user at testTS.
func (n *testNode) seedLimits(t *testing.T, service, user string, limits map[string]quota.Limit) {
	t.Helper()
	n.seed(t, fsm.SetLimitsCommand{Service: service, User: user, Limits: limits, TS: testTS, Slot: testSlot})
}

// do sends one request to the node's handler. An empty body sends none.
func (n *testNode) do(t *testing.T, method, target, body string) *httptest.ResponseRecorder {
	t.Helper()
	var reader io.Reader = http.NoBody
	if body != "" {
		reader = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, reader)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return n.serve(req)
}

func (n *testNode) serve(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	n.api.Handler().ServeHTTP(rec, req)
	return rec
}

// errorResponse is the one JSON shape of every error response.
type errorResponse struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Leader  string `json:"leader"`
	} `json:"error"`
}

// wantStatus fails the test now unless rec has the status want.
func wantStatus(t *testing.T, rec *httptest.ResponseRecorder, want int) {
	t.Helper()
	if rec.Code != want {
		t.Fatalf("status is %d, want %d; body: %s", rec.Code, want, rec.Body.String())
	}
}

// wantError checks the status and the error code of rec and returns the
// decoded error. Decoding rejects unknown fields, so a body that is not the
// error shape fails the test.
func wantError(t *testing.T, rec *httptest.ResponseRecorder, status int, code string) errorResponse {
	t.Helper()
	wantStatus(t, rec, status)
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type is %q, want application/json", ct)
	}
	var body errorResponse
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("error body %s is not {\"error\": {\"code\", \"message\", \"leader\"}}: %v", rec.Body.String(), err)
	}
	if body.Error.Code != code {
		t.Errorf("error code is %q, want %q; body: %s", body.Error.Code, code, rec.Body.String())
	}
	if body.Error.Message == "" {
		t.Errorf("error message is empty; body: %s", rec.Body.String())
	}
	return body
}

// wantMessageContains fails the test unless the error message contains
// every part.
func wantMessageContains(t *testing.T, body errorResponse, parts ...string) {
	t.Helper()
	for _, part := range parts {
		if !strings.Contains(body.Error.Message, part) {
			t.Errorf("error message %q does not contain %q", body.Error.Message, part)
		}
	}
}

// wantRetryAfter fails the test unless rec carries Retry-After: 1.
func wantRetryAfter(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	if got := rec.Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After is %q, want \"1\"", got)
	}
}

// wantNoCommands fails the test if the node sent any command to its
// cluster.
func wantNoCommands(t *testing.T, n *testNode) {
	t.Helper()
	if commands := n.cluster.recordedCommands(); len(commands) != 0 {
		t.Errorf("cluster received %d commands, want none: %#v", len(commands), commands)
	}
}

// decodeJSONBody decodes rec's body into v, failing the test on error.
func decodeJSONBody(t *testing.T, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("decoding body %s: %v", rec.Body.String(), err)
	}
}
