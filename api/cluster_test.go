package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

const joinBody = `{"node_id": "central-2", "raft_addr": "127.0.0.1:7002", "http_addr": "127.0.0.1:8002"}`

func TestJoinValidation(t *testing.T) {
	cases := []struct {
		name string
		body string
		want []string
	}{
		{"empty body", "", []string{"request body is empty"}},
		{"unknown field", `{"node_id": "central-2", "raft_addr": "127.0.0.1:7002", "http_addr": "127.0.0.1:8002", "voter": true}`, []string{`unknown field "voter"`}},
		{"missing node_id", `{"raft_addr": "127.0.0.1:7002", "http_addr": "127.0.0.1:8002"}`, []string{"node_id is empty"}},
		{"node_id too long", `{"node_id": "` + strings.Repeat("n", quota.MaxNameLength+1) + `", "raft_addr": "127.0.0.1:7002", "http_addr": "127.0.0.1:8002"}`, []string{"node_id is 129 bytes long"}},
		{"node_id with slash", `{"node_id": "central/2", "raft_addr": "127.0.0.1:7002", "http_addr": "127.0.0.1:8002"}`, []string{"node_id", `'/'`}},
		{"missing raft_addr", `{"node_id": "central-2", "http_addr": "127.0.0.1:8002"}`, []string{`raft_addr ""`, "host:port"}},
		{"raft_addr without port", `{"node_id": "central-2", "raft_addr": "127.0.0.1", "http_addr": "127.0.0.1:8002"}`, []string{`raft_addr "127.0.0.1"`, "host:port"}},
		{"raft_addr without host", `{"node_id": "central-2", "raft_addr": ":7002", "http_addr": "127.0.0.1:8002"}`, []string{`raft_addr ":7002"`}},
		{"missing http_addr", `{"node_id": "central-2", "raft_addr": "127.0.0.1:7002"}`, []string{`http_addr ""`}},
		{"node_id not a string", `{"node_id": 2, "raft_addr": "127.0.0.1:7002", "http_addr": "127.0.0.1:8002"}`, []string{"node_id", "string"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			node := newLeader(t)

			rec := node.do(t, http.MethodPost, "/v1/cluster/join", tc.body)

			body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
			wantMessageContains(t, body, tc.want...)
			if calls := node.cluster.joinCalls(); len(calls) != 0 {
				t.Errorf("Join called %v for an invalid request, want no call", calls)
			}
			wantNoCommands(t, node)
		})
	}
}

func TestJoinOnLeader(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodPost, "/v1/cluster/join", joinBody)

	wantStatus(t, rec, http.StatusOK)
	var got map[string]string
	decodeJSONBody(t, rec, &got)
	if want := map[string]string{"joined": "central-2", "leader": leaderID}; !reflect.DeepEqual(got, want) {
		t.Errorf("response is %v, want %v", got, want)
	}
	wantCalls := []joinCall{{ID: "central-2", Addr: "127.0.0.1:7002"}}
	if calls := node.cluster.joinCalls(); !slices.Equal(calls, wantCalls) {
		t.Errorf("Join calls are %v, want %v", calls, wantCalls)
	}
	wantServer := fsm.SetServerCommand{ID: "central-2", HTTPAddr: "127.0.0.1:8002", RaftAddr: "127.0.0.1:7002"}
	if commands := node.cluster.recordedCommands(); !reflect.DeepEqual(commands, []fsm.Command{wantServer}) {
		t.Errorf("commands are %#v, want [%#v]", commands, wantServer)
	}
	server, ok := node.state.Server("central-2")
	if !ok {
		t.Fatal("state has no metadata for central-2 after the join")
	}
	if server.HTTPAddr != "127.0.0.1:8002" {
		t.Errorf("state's HTTP address for central-2 is %q, want 127.0.0.1:8002", server.HTTPAddr)
	}
}

func TestJoinClusterError(t *testing.T) {
	node := newLeader(t)
	node.cluster.set(func(c *fakeCluster) {
		c.joinErr = fmt.Errorf("raftnode: join: %w", &raftnode.NotLeaderError{Err: raft.ErrLeadershipLost})
	})

	rec := node.do(t, http.MethodPost, "/v1/cluster/join", joinBody)

	wantError(t, rec, http.StatusServiceUnavailable, CodeNoLeader)
	wantRetryAfter(t, rec)
	wantNoCommands(t, node)
}

func TestJoinRejectedByRaftTLSIs400(t *testing.T) {
	node := newLeader(t)
	node.cluster.set(func(c *fakeCluster) {
		c.joinErr = fmt.Errorf(`raftnode: join "c4" at 127.0.0.1:7004: %w: raftnode: TLS connection to 127.0.0.1:7004 failed: x509: certificate signed by unknown authority`, raftnode.ErrPeerRejected)
	})

	rec := node.do(t, http.MethodPost, "/v1/cluster/join", joinBody)

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, "certificate signed by unknown authority", "--tls-ca")
	wantNoCommands(t, node)
}

func TestJoinTombstonedWithStateConflict(t *testing.T) {
	node := newLeader(t)
	node.seed(t, fsm.SetServerCommand{ID: "central-2", HTTPAddr: "127.0.0.1:8002", RaftAddr: "127.0.0.1:7002"})
	node.seed(t, fsm.RemoveServerCommand{ID: "central-2", TS: testTS})

	rec := node.do(t, http.MethodPost, "/v1/cluster/join",
		`{"node_id": "central-2", "raft_addr": "127.0.0.1:7002", "http_addr": "127.0.0.1:8002", "has_state": true}`)

	body := wantError(t, rec, http.StatusConflict, CodeConflict)
	wantMessageContains(t, body, `"central-2"`, "delete its data directory", "2023-11-14T22:13:20Z")
	if calls := node.cluster.joinCalls(); len(calls) != 0 {
		t.Errorf("Join called %v for a tombstoned server with state, want no call", calls)
	}
	wantNoCommands(t, node)
	if _, ok := node.state.Tombstone("central-2"); !ok {
		t.Error("tombstone of central-2 is gone after the rejected join")
	}
}

func TestJoinTombstonedWithoutState(t *testing.T) {
	node := newLeader(t)
	node.seed(t, fsm.RemoveServerCommand{ID: "central-2", TS: testTS})

	rec := node.do(t, http.MethodPost, "/v1/cluster/join", joinBody)

	wantStatus(t, rec, http.StatusOK)
	if calls := node.cluster.joinCalls(); len(calls) != 1 {
		t.Errorf("Join calls are %v, want one", calls)
	}
	if _, ok := node.state.Tombstone("central-2"); ok {
		t.Error("tombstone of central-2 is still set after it joined again")
	}
	if _, ok := node.state.Server("central-2"); !ok {
		t.Error("state has no metadata for central-2 after it joined again")
	}
}

func TestRemoveServer(t *testing.T) {
	node := newLeader(t)
	node.cluster.set(func(c *fakeCluster) {
		c.servers = []raftnode.Server{
			{ID: leaderID, Address: leaderRaftAddr, Suffrage: "Voter"},
			{ID: "central-2", Address: "127.0.0.1:7002", Suffrage: "Voter"},
		}
	})
	notices := make(chan *http.Request, 1)
	noticeBodies := make(chan string, 1)
	removed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		notices <- r
		noticeBodies <- string(body)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(removed.Close)
	node.seed(t, fsm.SetServerCommand{ID: "central-2", HTTPAddr: removed.Listener.Addr().String(), RaftAddr: "127.0.0.1:7002"})

	rec := node.do(t, http.MethodDelete, "/v1/cluster/servers/central-2", "")

	wantStatus(t, rec, http.StatusNoContent)
	select {
	case req := <-notices:
		if req.Method != http.MethodPost || req.URL.Path != "/v1/cluster/removed" {
			t.Errorf("the removed central got %s %s, want POST /v1/cluster/removed", req.Method, req.URL.Path)
		}
		var notice RemovalNotice
		if err := json.Unmarshal([]byte(<-noticeBodies), &notice); err != nil {
			t.Fatalf("the notice is not JSON: %v", err)
		}
		if notice.NodeID != "central-2" || notice.Leader != leaderID || !notice.At.Equal(testNow) {
			t.Errorf("notice is %+v, want node central-2, leader %s, at %s", notice, leaderID, testNow)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the removed central got no notice within 10 s")
	}
	if calls := node.cluster.removeCalls(); !slices.Equal(calls, []string{"central-2"}) {
		t.Errorf("Remove calls are %v, want [central-2]", calls)
	}
	want := fsm.RemoveServerCommand{ID: "central-2", TS: testTS}
	if commands := node.cluster.recordedCommands(); !reflect.DeepEqual(commands, []fsm.Command{want}) {
		t.Errorf("commands are %#v, want [%#v]", commands, want)
	}
	if ts, ok := node.state.Tombstone("central-2"); !ok || ts != testTS {
		t.Errorf("tombstone of central-2 is (%d, %v), want (%d, true)", ts, ok, testTS)
	}
	if _, ok := node.state.Server("central-2"); ok {
		t.Error("state still has metadata for central-2 after its removal")
	}
}

func TestRemoveUnknownServer(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodDelete, "/v1/cluster/servers/central-9", "")

	body := wantError(t, rec, http.StatusNotFound, CodeNotFound)
	wantMessageContains(t, body, `"central-9"`)
	wantNoCommands(t, node)
}

func TestRemoveServerInvalidID(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodDelete, "/v1/cluster/servers/central%2F9", "")

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, "id", `'/'`)
	if calls := node.cluster.removeCalls(); len(calls) != 0 {
		t.Errorf("Remove calls are %v, want none", calls)
	}
}

func TestClusterStatus(t *testing.T) {
	node := newLeader(t)
	node.cluster.set(func(c *fakeCluster) {
		c.stats = raftnode.Stats{State: raft.Leader, Term: 7, CommitIndex: 42, AppliedIndex: 41}
		c.servers = []raftnode.Server{
			{ID: leaderID, Address: leaderRaftAddr, Suffrage: "Voter"},
			{ID: "central-2", Address: "127.0.0.1:7002", Suffrage: "Voter"},
			{ID: "central-3", Address: "127.0.0.1:7003", Suffrage: "Nonvoter"},
		}
	})
	node.seed(t, fsm.SetServerCommand{ID: leaderID, HTTPAddr: "127.0.0.1:8001", RaftAddr: leaderRaftAddr})
	node.seed(t, fsm.SetServerCommand{ID: "central-2", HTTPAddr: "127.0.0.1:8002", RaftAddr: "127.0.0.1:7002"})

	rec := node.do(t, http.MethodGet, "/v1/cluster", "")

	wantStatus(t, rec, http.StatusOK)
	var got ClusterStatus
	decodeJSONBody(t, rec, &got)
	want := ClusterStatus{
		NodeID:       leaderID,
		State:        "Leader",
		Leader:       leaderID,
		LeaderHTTP:   "127.0.0.1:8001",
		Term:         7,
		CommitIndex:  42,
		AppliedIndex: 41,
		Servers: []ServerStatus{
			{ID: leaderID, RaftAddr: leaderRaftAddr, HTTPAddr: "127.0.0.1:8001", Suffrage: "Voter", Leader: true},
			{ID: "central-2", RaftAddr: "127.0.0.1:7002", HTTPAddr: "127.0.0.1:8002", Suffrage: "Voter"},
			// central-3 has no set_server entry yet, so no HTTP address.
			{ID: "central-3", RaftAddr: "127.0.0.1:7003", Suffrage: "Nonvoter"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cluster status is\n%+v\nwant\n%+v", got, want)
	}
}

func TestClusterStatusOnFollower(t *testing.T) {
	node := newTestNode(t, followerID, false, nil)
	node.cluster.set(func(c *fakeCluster) {
		c.leaderID, c.leaderAddr = leaderID, leaderRaftAddr
		c.stats = raftnode.Stats{State: raft.Follower, Term: 7}
	})

	rec := node.do(t, http.MethodGet, "/v1/cluster", "")

	wantStatus(t, rec, http.StatusOK)
	var got ClusterStatus
	decodeJSONBody(t, rec, &got)
	if got.NodeID != followerID {
		t.Errorf("node_id is %q, want %q", got.NodeID, followerID)
	}
	if got.State != "Follower" {
		t.Errorf("state is %q, want Follower", got.State)
	}
	if got.Leader != leaderID {
		t.Errorf("leader is %q, want %q", got.Leader, leaderID)
	}
	if got.LeaderHTTP != "" {
		t.Errorf("leader_http_addr is %q, want empty without a set_server entry", got.LeaderHTTP)
	}
	if got.Servers == nil || len(got.Servers) != 0 {
		t.Errorf("servers is %#v, want an empty list", got.Servers)
	}
}

func TestClusterStatusStatsError(t *testing.T) {
	node := newLeader(t)
	node.cluster.set(func(c *fakeCluster) { c.statsErr = raftnode.ErrClosed })

	rec := node.do(t, http.MethodGet, "/v1/cluster", "")

	wantError(t, rec, http.StatusServiceUnavailable, CodeUnavailable)
}
