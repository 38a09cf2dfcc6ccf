package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

func TestNewRequiresNodeIDClusterState(t *testing.T) {
	node := newLeader(t)
	cases := []struct {
		name string
		cfg  Config
	}{
		{"no node ID", Config{Cluster: node.cluster, State: node.state}},
		{"no cluster", Config{NodeID: leaderID, State: node.state}},
		{"no state", Config{NodeID: leaderID, Cluster: node.cluster}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Error("New returned no error")
			}
		})
	}
}

func TestApplyErrorMapping(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		status     int
		code       string
		retryAfter bool
	}{
		{"timeout", fmt.Errorf("raftnode: apply: %w: %w", raftnode.ErrTimeout, context.DeadlineExceeded),
			http.StatusServiceUnavailable, CodeTimeout, true},
		{"no leader", fmt.Errorf("raftnode: apply: %w", raftnode.ErrNoLeader),
			http.StatusServiceUnavailable, CodeNoLeader, true},
		{"leadership lost", fmt.Errorf("raftnode: apply: %w", &raftnode.NotLeaderError{
			LeaderID: "central-3", LeaderAddr: "127.0.0.1:7003", Err: raft.ErrLeadershipLost}),
			http.StatusServiceUnavailable, CodeNoLeader, true},
		{"unknown server", fmt.Errorf("raftnode: remove: %w", raftnode.ErrUnknownServer),
			http.StatusNotFound, CodeNotFound, false},
		{"rejected by the FSM", fmt.Errorf("set_limits at index 3: %w: slot is 0", quota.ErrInvalid),
			http.StatusBadRequest, CodeInvalid, false},
		{"generic", errors.New("disk on fire"),
			http.StatusInternalServerError, CodeInternal, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			node := newLeader(t)
			node.cluster.set(func(c *fakeCluster) { c.applyErr = tc.err })

			rec := node.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 1}}`)

			wantError(t, rec, tc.status, tc.code)
			retryAfter := rec.Header().Get("Retry-After")
			if tc.retryAfter && retryAfter != "1" {
				t.Errorf("Retry-After is %q, want \"1\" on a %d", retryAfter, tc.status)
			}
			if !tc.retryAfter && retryAfter != "" {
				t.Errorf("Retry-After is %q, want none on a %d", retryAfter, tc.status)
			}
		})
	}
}

func TestErrorNamesLeaderHTTPAddr(t *testing.T) {
	node := newLeader(t)
	node.seed(t, fsm.SetServerCommand{ID: leaderID, HTTPAddr: "127.0.0.1:8001", RaftAddr: leaderRaftAddr})
	node.cluster.set(func(c *fakeCluster) { c.applyErr = raftnode.ErrTimeout })

	rec := node.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 1}}`)

	body := wantError(t, rec, http.StatusServiceUnavailable, CodeTimeout)
	if body.Error.Leader != "127.0.0.1:8001" {
		t.Errorf("error leader is %q, want the leader's HTTP address 127.0.0.1:8001", body.Error.Leader)
	}
}

func TestUnknownRoute(t *testing.T) {
	node := newLeader(t)
	for _, path := range []string{"/v2/limits", "/v1/nope", "/v1/cluster/nope"} {
		t.Run(path, func(t *testing.T) {
			rec := node.do(t, http.MethodGet, path, "")

			wantError(t, rec, http.StatusNotFound, CodeNotFound)
		})
	}
}

// Echo v4 gives the rest of the path to a route's last parameter, so extra
// segments reach the handler, and name validation rejects the '/'.
func TestExtraPathSegmentsRejected(t *testing.T) {
	node := newLeader(t)
	cases := []struct {
		method, path, field string
	}{
		{http.MethodGet, "/v1/limits/video/alice/extra", "user"},
		{http.MethodDelete, "/v1/limits/video/alice/extra", "user"},
		{http.MethodDelete, "/v1/cluster/servers/central-2/extra", "id"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			rec := node.do(t, tc.method, tc.path, "")

			body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
			wantMessageContains(t, body, tc.field, `'/'`)
		})
	}
	wantNoCommands(t, node)
}

func TestWrongMethod(t *testing.T) {
	node := newLeader(t)
	cases := []struct {
		method, path string
	}{
		{http.MethodPost, "/v1/limits/video/alice"},
		{http.MethodPatch, "/v1/limits/video/alice"},
		{http.MethodDelete, "/v1/limits"},
		{http.MethodGet, "/v1/cluster/join"},
		{http.MethodPost, "/healthz"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			rec := node.do(t, tc.method, tc.path, "")

			wantError(t, rec, http.StatusMethodNotAllowed, CodeMethod)
			if allow := rec.Header().Get("Allow"); allow == "" {
				t.Error("405 response has no Allow header")
			}
		})
	}
	wantNoCommands(t, node)
}

func TestHandlerPanicIsInternalError(t *testing.T) {
	node := newLeader(t)
	node.cluster.set(func(c *fakeCluster) { c.panicInServers = true })

	rec := node.do(t, http.MethodGet, "/v1/cluster", "")

	wantError(t, rec, http.StatusInternalServerError, CodeInternal)
	samples := scrapeRequestCounts(t, node)
	if got := samples[requestKey{route: "/v1/cluster", method: "GET", code: "500"}]; got != 1 {
		t.Errorf("requests counted for the panicked GET /v1/cluster with code 500: %v, want 1; all: %v", got, samples)
	}
}

func TestHealthz(t *testing.T) {
	node := newTestNode(t, leaderID, true, func(cfg *Config) {
		cfg.Ready = func() (bool, string) { return false, "no leader" }
	})

	rec := node.do(t, http.MethodGet, "/healthz", "")

	wantStatus(t, rec, http.StatusOK)
	var got map[string]string
	decodeJSONBody(t, rec, &got)
	if want := map[string]string{"status": "ok", "node_id": leaderID}; !reflect.DeepEqual(got, want) {
		t.Errorf("healthz body is %v, want %v", got, want)
	}
}

func TestReadyz(t *testing.T) {
	t.Run("ready", func(t *testing.T) {
		node := newTestNode(t, leaderID, true, func(cfg *Config) {
			cfg.Ready = func() (bool, string) { return true, "" }
		})

		rec := node.do(t, http.MethodGet, "/readyz", "")

		wantStatus(t, rec, http.StatusOK)
		var got map[string]any
		decodeJSONBody(t, rec, &got)
		if got["ready"] != true {
			t.Errorf("readyz body is %v, want ready true", got)
		}
	})

	t.Run("not ready", func(t *testing.T) {
		const reason = "the FSM has applied index 3 of 9"
		node := newTestNode(t, leaderID, true, func(cfg *Config) {
			cfg.Ready = func() (bool, string) { return false, reason }
		})

		rec := node.do(t, http.MethodGet, "/readyz", "")

		wantStatus(t, rec, http.StatusServiceUnavailable)
		var got map[string]any
		decodeJSONBody(t, rec, &got)
		if got["ready"] != false {
			t.Errorf("readyz ready is %v, want false; body: %s", got["ready"], rec.Body.String())
		}
		if got["reason"] != reason {
			t.Errorf("readyz reason is %v, want %q", got["reason"], reason)
		}
	})

	t.Run("default", func(t *testing.T) {
		node := newLeader(t)

		rec := node.do(t, http.MethodGet, "/readyz", "")

		wantStatus(t, rec, http.StatusOK)
	})
}

// requestKey is the label set of one throttle_http_requests_total sample.
type requestKey struct {
	route, method, code string
}

var requestSample = regexp.MustCompile(`^throttle_http_requests_total\{code="([^"]*)",method="([^"]*)",route="([^"]*)"\} (\S+)$`)

// scrapeRequestCounts fetches /metrics and returns the value of every
// throttle_http_requests_total sample by its labels. The scrape itself is
// counted only after it is served, so it is not in the result.
func scrapeRequestCounts(t *testing.T, node *testNode) map[requestKey]float64 {
	t.Helper()
	rec := node.do(t, http.MethodGet, "/metrics", "")
	wantStatus(t, rec, http.StatusOK)
	samples := make(map[requestKey]float64)
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if !strings.HasPrefix(line, "throttle_http_requests_total{") {
			continue
		}
		match := requestSample.FindStringSubmatch(line)
		if match == nil {
			t.Fatalf("sample %q does not have exactly the labels code, method and route", line)
		}
		var value float64
		if _, err := fmt.Sscan(match[4], &value); err != nil {
			t.Fatalf("sample %q: value: %v", line, err)
		}
		samples[requestKey{route: match[3], method: match[2], code: match[1]}] = value
	}
	return samples
}

func TestMetricsRouteLabelsArePatterns(t *testing.T) {
	node := newLeader(t)
	node.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 1}}`)
	node.do(t, http.MethodPut, "/v1/limits/audio/bob", `{"limit": {"traffic_up": 1}}`)
	node.do(t, http.MethodPut, "/v1/limits/audio/bob", `{"limit": {"traffic_up": -1}}`)
	node.do(t, http.MethodGet, "/v1/limits/video", "")
	node.do(t, http.MethodGet, "/v1/nope/carol", "")
	node.do(t, http.MethodPatch, "/v1/limits/video/alice", "")
	node.do(t, http.MethodGet, "/healthz", "")

	samples := scrapeRequestCounts(t, node)

	want := map[requestKey]float64{
		{route: "/v1/limits/:service/:user", method: "PUT", code: "200"}:   2,
		{route: "/v1/limits/:service/:user", method: "PUT", code: "400"}:   1,
		{route: "/v1/limits/:service", method: "GET", code: "200"}:         1,
		{route: "/healthz", method: "GET", code: "200"}:                    1,
		{route: "/v1/limits/:service/:user", method: "PATCH", code: "405"}: 1,
		{route: "unmatched", method: "GET", code: "404"}:                   1,
	}
	for key, value := range want {
		if got := samples[key]; got != value {
			t.Errorf("throttle_http_requests_total%+v is %v, want %v", key, got, value)
		}
	}
	for key := range samples {
		for _, raw := range []string{"alice", "bob", "carol", "video", "audio", "nope"} {
			if strings.Contains(key.route, raw) {
				t.Errorf("route label %q contains the raw path segment %q", key.route, raw)
			}
		}
	}
}

func TestMetricsCountsRequestEntityTooLarge(t *testing.T) {
	node := newTestNode(t, leaderID, true, func(cfg *Config) { cfg.BodyLimit = 16 })
	node.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 10}}`)

	samples := scrapeRequestCounts(t, node)

	key := requestKey{route: "/v1/limits/:service/:user", method: "PUT", code: "413"}
	if got := samples[key]; got != 1 {
		t.Errorf("throttle_http_requests_total%+v is %v, want 1; samples: %v", key, got, samples)
	}
}

func TestMetricsRaftGauges(t *testing.T) {
	node := newLeader(t)
	node.cluster.set(func(c *fakeCluster) { c.stats = raftnode.Stats{State: raft.Leader, Term: 7} })

	rec := node.do(t, http.MethodGet, "/metrics", "")

	wantStatus(t, rec, http.StatusOK)
	for _, line := range []string{"throttle_raft_leader 1", "throttle_raft_term 7"} {
		if !strings.Contains(rec.Body.String(), "\n"+line+"\n") {
			t.Errorf("/metrics has no line %q", line)
		}
	}
}
