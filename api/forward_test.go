package api

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// leaderExchange is one request the leader's HTTP server received and the
// response it sent.
type leaderExchange struct {
	Method      string
	RequestURI  string
	ForwardedBy string
	Status      int
	Header      http.Header
	Body        []byte
}

// exchangeLog records every exchange of the leader's HTTP server, so a test
// can compare what the follower relayed with what the leader sent.
type exchangeLog struct {
	mu        sync.Mutex
	exchanges []leaderExchange
}

func (l *exchangeLog) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)

		l.mu.Lock()
		l.exchanges = append(l.exchanges, leaderExchange{
			Method:      r.Method,
			RequestURI:  r.RequestURI,
			ForwardedBy: r.Header.Get(forwardedHeader),
			Status:      rec.Code,
			Header:      rec.Header().Clone(),
			Body:        bytes.Clone(rec.Body.Bytes()),
		})
		l.mu.Unlock()

		for key, values := range rec.Header() {
			w.Header()[key] = values
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

func (l *exchangeLog) all() []leaderExchange {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]leaderExchange(nil), l.exchanges...)
}

// forwardingPair is a leader API served over HTTP on 127.0.0.1 and a
// follower API whose state records the leader's HTTP address.
type forwardingPair struct {
	leader     *testNode
	follower   *testNode
	leaderAddr string
	exchanges  *exchangeLog
}

func newForwardingPair(t *testing.T) *forwardingPair {
	t.Helper()
	return newForwardingPairWith(t, nil)
}

// newForwardingPairWith is newForwardingPair with a hook that changes the
// leader's Config before New, for example to set a Reporter.
func newForwardingPairWith(t *testing.T, configureLeader func(*Config)) *forwardingPair {
	t.Helper()
	leader := newTestNode(t, leaderID, true, configureLeader)
	exchanges := &exchangeLog{}
	httpServer := httptest.NewServer(exchanges.wrap(leader.api.Handler()))
	t.Cleanup(httpServer.Close)
	leaderAddr := httpServer.Listener.Addr().String()

	follower := newTestNode(t, followerID, false, nil)
	follower.cluster.set(func(c *fakeCluster) { c.leaderID, c.leaderAddr = leaderID, leaderRaftAddr })
	follower.seed(t, fsm.SetServerCommand{ID: leaderID, HTTPAddr: leaderAddr, RaftAddr: leaderRaftAddr})
	return &forwardingPair{leader: leader, follower: follower, leaderAddr: leaderAddr, exchanges: exchanges}
}

// onlyExchange returns the one exchange the leader had, failing the test
// when there was not exactly one.
func (p *forwardingPair) onlyExchange(t *testing.T) leaderExchange {
	t.Helper()
	exchanges := p.exchanges.all()
	if len(exchanges) != 1 {
		t.Fatalf("leader received %d requests, want 1: %+v", len(exchanges), exchanges)
	}
	return exchanges[0]
}

// wantRelayed fails the test unless rec carries the leader's status,
// Content-Type and body byte for byte.
func wantRelayed(t *testing.T, rec *httptest.ResponseRecorder, leader leaderExchange) {
	t.Helper()
	if rec.Code != leader.Status {
		t.Errorf("follower status is %d, leader's is %d", rec.Code, leader.Status)
	}
	if !bytes.Equal(rec.Body.Bytes(), leader.Body) {
		t.Errorf("follower body is %q, leader's is %q", rec.Body.String(), leader.Body)
	}
	if got, want := rec.Header().Get("Content-Type"), leader.Header.Get("Content-Type"); got != want {
		t.Errorf("follower Content-Type is %q, leader's is %q", got, want)
	}
}

func TestForwardPutToLeader(t *testing.T) {
	pair := newForwardingPair(t)

	rec := pair.follower.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 10240}}`)

	wantStatus(t, rec, http.StatusOK)
	exchange := pair.onlyExchange(t)
	wantRelayed(t, rec, exchange)
	if exchange.Method != http.MethodPut || exchange.RequestURI != "/v1/limits/video/alice" {
		t.Errorf("leader received %s %s, want PUT /v1/limits/video/alice", exchange.Method, exchange.RequestURI)
	}
	if exchange.ForwardedBy != followerID {
		t.Errorf("%s header at the leader is %q, want %q", forwardedHeader, exchange.ForwardedBy, followerID)
	}
	if got := len(pair.leader.cluster.recordedCommands()); got != 1 {
		t.Errorf("leader's cluster received %d commands, want 1", got)
	}
	wantNoCommands(t, pair.follower)
	if _, ok := pair.leader.state.Limits("video", "alice"); !ok {
		t.Error("leader's state has no limits for video/alice after the forwarded PUT")
	}
}

func TestForwardDeleteToLeader(t *testing.T) {
	pair := newForwardingPair(t)
	pair.leader.seedLimits(t, "video", "alice", map[string]quota.Limit{"requests": {Rate: 1}})

	rec := pair.follower.do(t, http.MethodDelete, "/v1/limits/video/alice", "")

	wantStatus(t, rec, http.StatusNoContent)
	exchange := pair.onlyExchange(t)
	wantRelayed(t, rec, exchange)
	if exchange.Method != http.MethodDelete {
		t.Errorf("leader received method %s, want DELETE", exchange.Method)
	}
	if exchange.ForwardedBy != followerID {
		t.Errorf("%s header at the leader is %q, want %q", forwardedHeader, exchange.ForwardedBy, followerID)
	}
	if _, ok := pair.leader.state.Limits("video", "alice"); ok {
		t.Error("leader's state still has limits for video/alice after the forwarded DELETE")
	}
}

func TestForwardRelaysLeaderNotFound(t *testing.T) {
	pair := newForwardingPair(t)

	rec := pair.follower.do(t, http.MethodDelete, "/v1/limits/video/nobody", "")

	body := wantError(t, rec, http.StatusNotFound, CodeNotFound)
	wantMessageContains(t, body, `"nobody"`)
	wantRelayed(t, rec, pair.onlyExchange(t))
}

func TestForwardRelaysLeaderTimeout(t *testing.T) {
	pair := newForwardingPair(t)
	pair.leader.cluster.set(func(c *fakeCluster) {
		c.applyErr = fmt.Errorf("raftnode: apply: %w", raftnode.ErrTimeout)
	})

	rec := pair.follower.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 1}}`)

	wantError(t, rec, http.StatusServiceUnavailable, CodeTimeout)
	wantRetryAfter(t, rec)
	wantRelayed(t, rec, pair.onlyExchange(t))
}

func TestForwardConsistentRead(t *testing.T) {
	pair := newForwardingPair(t)
	// Only the leader has the limits, as if the follower lagged.
	pair.leader.seedLimits(t, "video", "alice", map[string]quota.Limit{"requests": {Rate: 1}})

	rec := pair.follower.do(t, http.MethodGet, "/v1/limits/video/alice?consistent=true", "")

	wantStatus(t, rec, http.StatusOK)
	exchange := pair.onlyExchange(t)
	wantRelayed(t, rec, exchange)
	if exchange.RequestURI != "/v1/limits/video/alice?consistent=true" {
		t.Errorf("leader received %s, want the query kept", exchange.RequestURI)
	}
	if got := pair.leader.cluster.barrierCount(); got != 1 {
		t.Errorf("leader ran Barrier %d times, want 1", got)
	}
	if got := pair.follower.cluster.barrierCount(); got != 0 {
		t.Errorf("follower ran Barrier %d times, want 0", got)
	}
}

func TestFollowerLocalReadNotForwarded(t *testing.T) {
	pair := newForwardingPair(t)
	pair.follower.seedLimits(t, "video", "alice", map[string]quota.Limit{"requests": {Rate: 1}})

	rec := pair.follower.do(t, http.MethodGet, "/v1/limits/video/alice", "")

	wantStatus(t, rec, http.StatusOK)
	if exchanges := pair.exchanges.all(); len(exchanges) != 0 {
		t.Errorf("leader received %d requests for a local read, want 0", len(exchanges))
	}
}

func TestFollowerValidatesBeforeForwarding(t *testing.T) {
	pair := newForwardingPair(t)

	rec := pair.follower.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": -1}}`)

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, "limit.traffic_up")
	if exchanges := pair.exchanges.all(); len(exchanges) != 0 {
		t.Errorf("leader received %d requests for an invalid PUT, want 0", len(exchanges))
	}
}

func TestForwardedRequestAtFollowerNotForwardedAgain(t *testing.T) {
	pair := newForwardingPair(t)
	req := httptest.NewRequest(http.MethodPut, "/v1/limits/video/alice", strings.NewReader(`{"limit": {"traffic_up": 1}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(forwardedHeader, "central-3")

	rec := pair.follower.serve(req)

	body := wantError(t, rec, http.StatusServiceUnavailable, CodeNoLeader)
	wantRetryAfter(t, rec)
	wantMessageContains(t, body, "central-3", followerID)
	if exchanges := pair.exchanges.all(); len(exchanges) != 0 {
		t.Errorf("leader received %d requests, want 0 (no second hop)", len(exchanges))
	}
	wantNoCommands(t, pair.follower)
}

func TestForwardWithoutLeader(t *testing.T) {
	pair := newForwardingPair(t)
	pair.follower.cluster.set(func(c *fakeCluster) { c.leaderID, c.leaderAddr = "", "" })

	rec := pair.follower.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 1}}`)

	body := wantError(t, rec, http.StatusServiceUnavailable, CodeNoLeader)
	wantRetryAfter(t, rec)
	if body.Error.Leader != "" {
		t.Errorf("error leader is %q, want empty with no leader known", body.Error.Leader)
	}
	if exchanges := pair.exchanges.all(); len(exchanges) != 0 {
		t.Errorf("leader received %d requests, want 0", len(exchanges))
	}
}

func TestForwardLeaderWithoutHTTPAddr(t *testing.T) {
	follower := newTestNode(t, followerID, false, nil)
	// The leader is known to Raft, but its set_server entry has not reached
	// this follower.
	follower.cluster.set(func(c *fakeCluster) { c.leaderID, c.leaderAddr = leaderID, leaderRaftAddr })

	rec := follower.do(t, http.MethodDelete, "/v1/limits/video/alice", "")

	wantError(t, rec, http.StatusServiceUnavailable, CodeNoLeader)
	wantRetryAfter(t, rec)
}

func TestForwardLeaderUnreachable(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening on 127.0.0.1:0: %v", err)
	}
	deadAddr := listener.Addr().String()
	if err := listener.Close(); err != nil {
		t.Fatalf("closing the listener: %v", err)
	}
	follower := newTestNode(t, followerID, false, nil)
	follower.cluster.set(func(c *fakeCluster) { c.leaderID, c.leaderAddr = leaderID, leaderRaftAddr })
	follower.seed(t, fsm.SetServerCommand{ID: leaderID, HTTPAddr: deadAddr, RaftAddr: leaderRaftAddr})

	rec := follower.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 1}}`)

	body := wantError(t, rec, http.StatusServiceUnavailable, CodeLeaderUnreach)
	wantRetryAfter(t, rec)
	wantMessageContains(t, body, deadAddr)
	if body.Error.Leader != deadAddr {
		t.Errorf("error leader is %q, want %q", body.Error.Leader, deadAddr)
	}
}

func TestForwardJoinToLeader(t *testing.T) {
	pair := newForwardingPair(t)

	rec := pair.follower.do(t, http.MethodPost, "/v1/cluster/join",
		`{"node_id": "central-3", "raft_addr": "127.0.0.1:7003", "http_addr": "127.0.0.1:8003"}`)

	wantStatus(t, rec, http.StatusOK)
	wantRelayed(t, rec, pair.onlyExchange(t))
	want := []joinCall{{ID: "central-3", Addr: "127.0.0.1:7003"}}
	if got := pair.leader.cluster.joinCalls(); !slices.Equal(got, want) {
		t.Errorf("leader's Join calls are %v, want %v", got, want)
	}
	if got := pair.follower.cluster.joinCalls(); len(got) != 0 {
		t.Errorf("follower's Join calls are %v, want none", got)
	}
}

func TestForwardRemoveServerToLeader(t *testing.T) {
	pair := newForwardingPair(t)
	pair.leader.cluster.set(func(c *fakeCluster) {
		c.servers = []raftnode.Server{{ID: "central-3", Address: "127.0.0.1:7003", Suffrage: "Voter"}}
	})

	rec := pair.follower.do(t, http.MethodDelete, "/v1/cluster/servers/central-3", "")

	wantStatus(t, rec, http.StatusNoContent)
	wantRelayed(t, rec, pair.onlyExchange(t))
	if got := pair.leader.cluster.removeCalls(); len(got) != 1 || got[0] != "central-3" {
		t.Errorf("leader's Remove calls are %v, want [central-3]", got)
	}
}
