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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// Test tokens, one of each scope, and one that no token file holds.
const (
	adminToken   = "admin-token-0123456789abcdef"
	nodeToken    = "node-token-0123456789abcdef"
	readToken    = "read-token-0123456789abcdef"
	unknownToken = "unknown-token-0123456789abcdef"
)

// testTokenFile is a token file with comments and blank lines.
const testTokenFile = `# throttle-central tokens
admin ` + adminToken + `

node ` + nodeToken + `
  read   ` + readToken + `  
`

func mustParseTokens(t *testing.T, text string) *Tokens {
	t.Helper()
	tokens, err := ParseTokens(strings.NewReader(text), "tokens")
	if err != nil {
		t.Fatalf("ParseTokens: %v", err)
	}
	return tokens
}

// withTokens sets the test token file on a Config.
func withTokens(t *testing.T) func(*Config) {
	return func(cfg *Config) { cfg.Tokens = mustParseTokens(t, testTokenFile) }
}

// doWithToken sends a request with "Authorization: Bearer token", or with
// no Authorization header when token is empty.
func (n *testNode) doWithToken(t *testing.T, method, target, body, token string) *httptest.ResponseRecorder {
	t.Helper()
	return n.doWithAuthorization(t, method, target, body, bearer(token))
}

func (n *testNode) doWithAuthorization(t *testing.T, method, target, body, authorization string) *httptest.ResponseRecorder {
	t.Helper()
	var reader io.Reader = http.NoBody
	if body != "" {
		reader = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, reader)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return n.serve(req)
}

func bearer(token string) string {
	if token == "" {
		return ""
	}
	return "Bearer " + token
}

func authFailures(t *testing.T, n *testNode, reason string) float64 {
	t.Helper()
	return metricValue(t, n, "throttle_auth_failures_total", map[string]string{"reason": reason})
}

func TestParseTokensReadsScopes(t *testing.T) {
	tokens := mustParseTokens(t, testTokenFile)

	for token, want := range map[string]Scope{adminToken: ScopeAdmin, nodeToken: ScopeNode, readToken: ScopeRead} {
		if got, ok := tokens.lookup(token); !ok || got != want {
			t.Errorf("lookup(%q) = %q, %v; want %q, true", token, got, ok, want)
		}
	}
	for _, scope := range []Scope{ScopeAdmin, ScopeNode, ScopeRead} {
		if got := tokens.Count(scope); got != 1 {
			t.Errorf("Count(%s) = %d, want 1", scope, got)
		}
	}
	if got := tokens.PeerToken(); got != adminToken {
		t.Errorf("PeerToken() = %q, want the first admin token %q", got, adminToken)
	}
}

func TestParseTokensPeerTokenIsFirstAdmin(t *testing.T) {
	second := "second-admin-0123456789abcdef"
	tokens := mustParseTokens(t, "node "+nodeToken+"\nadmin "+adminToken+"\nadmin "+second+"\n")

	if got := tokens.PeerToken(); got != adminToken {
		t.Errorf("PeerToken() = %q, want %q", got, adminToken)
	}
	if got := tokens.Count(ScopeAdmin); got != 2 {
		t.Errorf("Count(admin) = %d, want 2", got)
	}
}

func TestTokensLookupRejectsNearMisses(t *testing.T) {
	tokens := mustParseTokens(t, testTokenFile)

	for _, token := range []string{
		"", adminToken[:len(adminToken)-1], adminToken + "x", strings.ToUpper(adminToken), " " + adminToken, unknownToken,
	} {
		if scope, ok := tokens.lookup(token); ok {
			t.Errorf("lookup(%q) = %q, true; want no match", token, scope)
		}
	}
}

func TestParseTokensErrors(t *testing.T) {
	secret := "secret-token-0123456789abcdef"
	tests := []struct {
		name string
		file string
		want string
	}{
		{"unknown scope", "# comment\nwrite " + secret + "\n", "line 2: unknown scope; use admin, node or read"},
		{"scope after token", secret + " admin\n", "line 1: the scope comes after the token"},
		{"token alone", "\n" + secret + "\n", "line 2: want SCOPE TOKEN separated by a space, got 1 fields"},
		{"three fields", "admin " + secret + " extra\n", "line 1: want SCOPE TOKEN separated by a space, got 3 fields"},
		{"short token", "admin short-secret\n", "line 1: the token is 12 bytes; the minimum is 16"},
		{"long token", "admin " + strings.Repeat("s", MaxTokenLength+1) + "\n", fmt.Sprintf("line 1: the token is %d bytes; the maximum is %d", MaxTokenLength+1, MaxTokenLength)},
		{"line too long", "admin " + strings.Repeat("s", maxTokenLine) + "\n", fmt.Sprintf("line 1: longer than %d bytes", maxTokenLine)},
		{"not ASCII", "admin secret-token-0123456789\u00e9\n", "line 1: the token has a byte outside visible ASCII at position 24"},
		{"duplicate", "admin " + secret + "\n# again\nnode " + secret + "\n", "line 3: the same token as line 1"},
		{"empty", "", "contains no token"},
		{"only comments", "# admin " + secret + "\n\n", "contains no token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseTokens(strings.NewReader(tt.file), "tokens.txt")
			if err == nil {
				t.Fatalf("ParseTokens succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "tokens.txt") {
				t.Errorf("error %q does not name the file", err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q contains the token", err)
			}
		})
	}
}

func TestLoadTokensMissingFile(t *testing.T) {
	_, err := LoadTokens(t.TempDir() + "/missing")

	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("LoadTokens of a missing file returned %v, want an error naming the file", err)
	}
}

// routeCase is one route of the API with a request that succeeds when the
// credentials are right, and the status that success has.
type routeCase struct {
	method, target, body string
	need                 Scope
	status               int
}

// protectedRoutes covers every route class that needs a token.
var protectedRoutes = []routeCase{
	{http.MethodGet, "/v1/limits", "", ScopeRead, http.StatusOK},
	{http.MethodGet, "/v1/limits/front", "", ScopeRead, http.StatusOK},
	{http.MethodGet, "/v1/limits/front/alice", "", ScopeRead, http.StatusOK},
	{http.MethodGet, "/v1/cluster", "", ScopeRead, http.StatusOK},
	{http.MethodGet, "/v1/members", "", ScopeRead, http.StatusOK},
	{http.MethodGet, "/v1/monitor/quota", "", ScopeRead, http.StatusOK},
	{http.MethodPut, "/v1/limits/front/alice", `{"limit":{"traffic_up":100}}`, ScopeAdmin, http.StatusOK},
	{http.MethodDelete, "/v1/limits/front/alice", "", ScopeAdmin, http.StatusNoContent},
	{http.MethodPost, "/v1/cluster/join", `{"node_id":"central-4","raft_addr":"127.0.0.1:7004","http_addr":"127.0.0.1:8084"}`, ScopeAdmin, http.StatusOK},
	{http.MethodDelete, "/v1/cluster/servers/central-4", "", ScopeAdmin, http.StatusNoContent},
	// The leader rejects a removal notice once the token passed.
	{http.MethodPost, "/v1/cluster/removed", `{"node_id":"central-1","leader":"central-9"}`, ScopeAdmin, http.StatusConflict},
	{http.MethodPost, "/v1/report", fmt.Sprintf(`{"node_id":"edge-1","slot_number":%d,"consumption":{"front":{"alice":{"traffic_up":1}}},"rejection":{}}`, testSlot), ScopeNode, http.StatusOK},
}

// newProtectedLeader builds a leader with the test tokens, a reporter, a
// monitor, alice's limits and a server central-4 to remove.
func newProtectedLeader(t *testing.T, configure func(*Config)) *testNode {
	t.Helper()
	node := newReportLeader(t, &fakeReporter{}, &fakeMonitor{data: map[int64]any{}}, func(cfg *Config) {
		withTokens(t)(cfg)
		cfg.Removal = &fakeRemoval{}
		if configure != nil {
			configure(cfg)
		}
	})
	node.seedLimits(t, "front", "alice", map[string]quota.Limit{"traffic_up": {Rate: 10}})
	node.cluster.set(func(c *fakeCluster) {
		c.servers = append(c.servers, raftnode.Server{ID: "central-4", Address: "127.0.0.1:7004", Suffrage: "Voter"})
	})
	return node
}

func TestAuthRoutesWithoutTokenAre401(t *testing.T) {
	for _, route := range protectedRoutes {
		t.Run(route.method+" "+route.target, func(t *testing.T) {
			node := newProtectedLeader(t, nil)

			rec := node.doWithToken(t, route.method, route.target, route.body, "")

			body := wantError(t, rec, http.StatusUnauthorized, CodeUnauthorized)
			wantMessageContains(t, body, "scope "+string(route.need), "Authorization: Bearer")
			if got := rec.Header().Get("WWW-Authenticate"); got != `Bearer realm="throttle-central"` {
				t.Errorf("WWW-Authenticate is %q, want the Bearer challenge", got)
			}
			wantNoCommands(t, node)
			if got := authFailures(t, node, authMissing); got != 1 {
				t.Errorf("throttle_auth_failures_total{reason=missing} is %v, want 1", got)
			}
		})
	}
}

func TestAuthRoutesWithUnknownTokenAre401(t *testing.T) {
	for _, route := range protectedRoutes {
		t.Run(route.method+" "+route.target, func(t *testing.T) {
			node := newProtectedLeader(t, nil)

			rec := node.doWithToken(t, route.method, route.target, route.body, unknownToken)

			body := wantError(t, rec, http.StatusUnauthorized, CodeUnauthorized)
			wantMessageContains(t, body, "not valid")
			if got := rec.Header().Get("WWW-Authenticate"); !strings.Contains(got, `error="invalid_token"`) {
				t.Errorf("WWW-Authenticate is %q, want error=\"invalid_token\"", got)
			}
			if strings.Contains(rec.Body.String(), unknownToken) {
				t.Errorf("the response repeats the token: %s", rec.Body.String())
			}
			wantNoCommands(t, node)
			if got := authFailures(t, node, authInvalid); got != 1 {
				t.Errorf("throttle_auth_failures_total{reason=invalid} is %v, want 1", got)
			}
		})
	}
}

func TestAuthRoutesWithWrongScopeAre403(t *testing.T) {
	// For each needed scope, every token that does not grant it.
	wrong := map[Scope][]string{
		ScopeRead:  {nodeToken},
		ScopeNode:  {readToken},
		ScopeAdmin: {readToken, nodeToken},
	}
	for _, route := range protectedRoutes {
		for _, token := range wrong[route.need] {
			t.Run(route.method+" "+route.target+" with "+token[:4], func(t *testing.T) {
				node := newProtectedLeader(t, nil)

				rec := node.doWithToken(t, route.method, route.target, route.body, token)

				body := wantError(t, rec, http.StatusForbidden, CodeForbidden)
				wantMessageContains(t, body, "this request needs a token with scope "+string(route.need))
				want := fmt.Sprintf(`Bearer realm="throttle-central", error="insufficient_scope", scope="%s"`, route.need)
				if got := rec.Header().Get("WWW-Authenticate"); got != want {
					t.Errorf("WWW-Authenticate is %q, want %q", got, want)
				}
				wantNoCommands(t, node)
				if got := authFailures(t, node, authScope); got != 1 {
					t.Errorf("throttle_auth_failures_total{reason=scope} is %v, want 1", got)
				}
			})
		}
	}
}

func TestAuthRoutesWithRightScopeSucceed(t *testing.T) {
	// The token of the route's own scope, and admin, which grants all.
	right := map[Scope][]string{
		ScopeRead:  {readToken, adminToken},
		ScopeNode:  {nodeToken, adminToken},
		ScopeAdmin: {adminToken},
	}
	for _, route := range protectedRoutes {
		for _, token := range right[route.need] {
			t.Run(route.method+" "+route.target+" with "+token[:4], func(t *testing.T) {
				node := newProtectedLeader(t, nil)

				rec := node.doWithToken(t, route.method, route.target, route.body, token)

				if rec.Code != route.status {
					t.Errorf("status is %d, want %d; body: %s", rec.Code, route.status, rec.Body.String())
				}
			})
		}
	}
}

func TestAuthMalformedHeaderIs401(t *testing.T) {
	for _, header := range []string{"Basic YWRtaW46c2VjcmV0", "Bearer", "Bearer ", adminToken, "Token " + adminToken} {
		t.Run(header, func(t *testing.T) {
			node := newProtectedLeader(t, nil)

			rec := node.doWithAuthorization(t, http.MethodGet, "/v1/limits", "", header)

			body := wantError(t, rec, http.StatusUnauthorized, CodeUnauthorized)
			wantMessageContains(t, body, `"Bearer <token>"`)
			if strings.Contains(rec.Body.String(), adminToken) {
				t.Errorf("the response repeats the header: %s", rec.Body.String())
			}
			if got := authFailures(t, node, authMalformed); got != 1 {
				t.Errorf("throttle_auth_failures_total{reason=malformed} is %v, want 1", got)
			}
		})
	}
}

func TestAuthSchemeIsCaseInsensitive(t *testing.T) {
	node := newProtectedLeader(t, nil)

	rec := node.doWithAuthorization(t, http.MethodGet, "/v1/limits", "", "bearer "+readToken)

	wantStatus(t, rec, http.StatusOK)
}

func TestAuthOpenRoutesNeedNoToken(t *testing.T) {
	node := newProtectedLeader(t, nil)

	for _, target := range []string{"/healthz", "/readyz", "/ui", "/ui/app.js", "/metrics"} {
		rec := node.doWithToken(t, http.MethodGet, target, "", "")
		if rec.Code != http.StatusOK {
			t.Errorf("GET %s without a token: status is %d, want 200", target, rec.Code)
		}
	}
}

func TestAuthUnknownRoutesKeep404And405(t *testing.T) {
	node := newProtectedLeader(t, nil)

	wantError(t, node.doWithToken(t, http.MethodGet, "/v1/nothing", "", ""), http.StatusNotFound, CodeNotFound)
	wantError(t, node.doWithToken(t, http.MethodPatch, "/v1/limits/front/alice", "", ""), http.StatusMethodNotAllowed, CodeMethod)
}

func TestAuthProtectedMetrics(t *testing.T) {
	tests := []struct {
		token string
		want  int
	}{
		{"", http.StatusUnauthorized},
		{unknownToken, http.StatusUnauthorized},
		{nodeToken, http.StatusForbidden},
		{readToken, http.StatusOK},
		{adminToken, http.StatusOK},
	}
	node := newProtectedLeader(t, func(cfg *Config) { cfg.MetricsTokenRequired = true })
	for _, tt := range tests {
		rec := node.doWithToken(t, http.MethodGet, "/metrics", "", tt.token)
		if rec.Code != tt.want {
			t.Errorf("GET /metrics with token %q: status is %d, want %d", tt.token, rec.Code, tt.want)
		}
	}
	if rec := node.doWithToken(t, http.MethodGet, "/healthz", "", ""); rec.Code != http.StatusOK {
		t.Errorf("GET /healthz with metrics protected: status is %d, want 200", rec.Code)
	}
}

func TestAuthOpenAPIIgnoresTokens(t *testing.T) {
	node := newReportLeader(t, &fakeReporter{}, nil, nil)

	rec := node.doWithToken(t, http.MethodPut, "/v1/limits/front/alice", `{"limit":{"traffic_up":100}}`, "")

	wantStatus(t, rec, http.StatusOK)
	if got := node.api.PeerToken(); got != "" {
		t.Errorf("PeerToken() of an open API is %q, want empty", got)
	}
}

func TestAuthProfilingNeedsAdmin(t *testing.T) {
	node := newProtectedLeader(t, func(cfg *Config) { cfg.Profiling = true })

	wantError(t, node.doWithToken(t, http.MethodGet, "/debug/pprof/", "", ""), http.StatusUnauthorized, CodeUnauthorized)
	wantError(t, node.doWithToken(t, http.MethodGet, "/debug/pprof/cmdline", "", readToken), http.StatusForbidden, CodeForbidden)
	wantStatus(t, node.doWithToken(t, http.MethodGet, "/debug/pprof/cmdline", "", adminToken), http.StatusOK)
}

func TestNewRejectsInvalidAuthConfig(t *testing.T) {
	tests := []struct {
		name      string
		configure func(*Config)
		want      string
	}{
		{"metrics protected without tokens", func(cfg *Config) { cfg.MetricsTokenRequired = true }, "MetricsTokenRequired needs Tokens"},
		{"tokens without admin", func(cfg *Config) { cfg.Tokens = mustParseTokens(t, "node "+nodeToken+"\n") }, "no admin token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{NodeID: leaderID, Cluster: &fakeCluster{}, State: fsm.New(fsm.Options{}), Logger: slog.New(slog.DiscardHandler)}
			tt.configure(&cfg)

			_, err := New(cfg)

			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New returned %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestCheckRouteAccessNamesUnlistedRoute(t *testing.T) {
	err := checkRouteAccess([]*echo.Route{{Method: http.MethodGet, Path: "/v1/limits"}, {Method: http.MethodPost, Path: "/v1/new"}})

	if err == nil || !strings.Contains(err.Error(), "POST /v1/new") {
		t.Errorf("checkRouteAccess returned %v, want an error naming POST /v1/new", err)
	}
}

func TestSetTokensRotates(t *testing.T) {
	node := newProtectedLeader(t, nil)
	newAdmin := "rotated-admin-0123456789abcdef"

	if err := node.api.SetTokens(mustParseTokens(t, "admin "+newAdmin+"\n")); err != nil {
		t.Fatalf("SetTokens: %v", err)
	}

	wantError(t, node.doWithToken(t, http.MethodGet, "/v1/limits", "", adminToken), http.StatusUnauthorized, CodeUnauthorized)
	wantStatus(t, node.doWithToken(t, http.MethodGet, "/v1/limits", "", newAdmin), http.StatusOK)
	if got := node.api.PeerToken(); got != newAdmin {
		t.Errorf("PeerToken() after the rotation is %q, want %q", got, newAdmin)
	}
}

func TestSetTokensRejectsInvalidSets(t *testing.T) {
	protected := newProtectedLeader(t, nil)
	open := newLeader(t)

	if err := protected.api.SetTokens(nil); err == nil {
		t.Errorf("SetTokens(nil) succeeded, want an error")
	}
	if err := protected.api.SetTokens(mustParseTokens(t, "read "+readToken+"\n")); err == nil || !strings.Contains(err.Error(), "no admin token") {
		t.Errorf("SetTokens without an admin token returned %v, want the no admin token error", err)
	}
	if err := open.api.SetTokens(mustParseTokens(t, testTokenFile)); err == nil || !strings.Contains(err.Error(), "started without tokens") {
		t.Errorf("SetTokens on an open API returned %v, want an error", err)
	}
	wantStatus(t, protected.doWithToken(t, http.MethodGet, "/v1/limits", "", adminToken), http.StatusOK)
}

// syncBuffer is a log destination that tests read while servers write.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestAuthFailureLogNamesRouteNotToken(t *testing.T) {
	logs := &syncBuffer{}
	node := newProtectedLeader(t, func(cfg *Config) { cfg.Logger = slog.New(slog.NewTextHandler(logs, nil)) })

	req := httptest.NewRequest(http.MethodPut, "/v1/limits/front/alice", strings.NewReader(`{"limit":{"traffic_up":1}}`))
	req.RemoteAddr = "192.0.2.7:4444"
	req.Header.Set("Authorization", "Bearer "+unknownToken)
	node.serve(req)
	for range 5 {
		node.doWithToken(t, http.MethodGet, "/v1/limits", "", unknownToken)
	}

	out := logs.String()
	for _, part := range []string{"remote=192.0.2.7:4444", "method=PUT", "route=/v1/limits/:service/:user", "reason=invalid", "scope_needed=admin"} {
		if !strings.Contains(out, part) {
			t.Errorf("log %q does not contain %q", out, part)
		}
	}
	if strings.Contains(out, unknownToken) {
		t.Errorf("log contains the token: %s", out)
	}
	if lines := strings.Count(out, "rejected a request"); lines != 1 {
		t.Errorf("log has %d lines about rejected requests within a second, want 1: %s", lines, out)
	}
	if got := authFailures(t, node, authInvalid); got != 6 {
		t.Errorf("throttle_auth_failures_total{reason=invalid} is %v, want 6", got)
	}
}

// authorizationLog records the Authorization header of every request the
// leader's HTTP server received.
type authorizationLog struct {
	mu      sync.Mutex
	headers []string
}

func (l *authorizationLog) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.headers = append(l.headers, r.Header.Get("Authorization"))
		l.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (l *authorizationLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.headers...)
}

// protectedPair is a leader served over HTTP and a follower that forwards
// to it, both with the test tokens.
type protectedPair struct {
	leader   *testNode
	follower *testNode
	received *authorizationLog
}

func newProtectedPair(t *testing.T, configureFollower func(*Config)) *protectedPair {
	t.Helper()
	leader := newProtectedLeader(t, nil)
	received := &authorizationLog{}
	server := httptest.NewServer(received.wrap(leader.api.Handler()))
	t.Cleanup(server.Close)

	follower := newTestNode(t, followerID, false, func(cfg *Config) {
		withTokens(t)(cfg)
		if configureFollower != nil {
			configureFollower(cfg)
		}
	})
	follower.cluster.set(func(c *fakeCluster) { c.leaderID, c.leaderAddr = leaderID, leaderRaftAddr })
	follower.seed(t, fsm.SetServerCommand{ID: leaderID, HTTPAddr: server.Listener.Addr().String(), RaftAddr: leaderRaftAddr})
	return &protectedPair{leader: leader, follower: follower, received: received}
}

func TestForwardKeepsAuthorization(t *testing.T) {
	for _, route := range protectedRoutes {
		if route.method == http.MethodGet && !strings.HasPrefix(route.target, "/v1/monitor") {
			continue // a follower serves reads from its own state
		}
		if route.target == "/v1/cluster/removed" {
			continue // a removal notice is for the central it names
		}
		t.Run(route.method+" "+route.target, func(t *testing.T) {
			pair := newProtectedPair(t, nil)
			token := map[Scope]string{ScopeRead: readToken, ScopeNode: nodeToken, ScopeAdmin: adminToken}[route.need]

			rec := pair.follower.doWithToken(t, route.method, route.target, route.body, token)

			if rec.Code != route.status {
				t.Errorf("status is %d, want %d; body: %s", rec.Code, route.status, rec.Body.String())
			}
			got := pair.received.all()
			if len(got) != 1 || got[0] != "Bearer "+token {
				t.Errorf("the leader received Authorization %q, want one request with the client's %q", got, "Bearer "+token)
			}
		})
	}
}

func TestForwardRejectsBeforeForwarding(t *testing.T) {
	pair := newProtectedPair(t, nil)

	wantError(t, pair.follower.doWithToken(t, http.MethodPut, "/v1/limits/front/alice", `{"limit":{"traffic_up":1}}`, ""), http.StatusUnauthorized, CodeUnauthorized)
	wantError(t, pair.follower.doWithToken(t, http.MethodPut, "/v1/limits/front/alice", `{"limit":{"traffic_up":1}}`, readToken), http.StatusForbidden, CodeForbidden)

	if got := pair.received.all(); len(got) != 0 {
		t.Errorf("the leader received %d requests, want none: %q", len(got), got)
	}
}

func TestForwardConsistentReadKeepsAuthorization(t *testing.T) {
	pair := newProtectedPair(t, nil)

	rec := pair.follower.doWithToken(t, http.MethodGet, "/v1/limits/front/alice?consistent=true", "", readToken)

	wantStatus(t, rec, http.StatusOK)
	if got := pair.received.all(); len(got) != 1 || got[0] != "Bearer "+readToken {
		t.Errorf("the leader received Authorization %q, want the client's read token", got)
	}
}

// roundTripRecorder is an http.RoundTripper that records the requests it
// is given and returns 204 for each.
type roundTripRecorder struct{ requests []*http.Request }

func (r *roundTripRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.requests = append(r.requests, req)
	return &http.Response{StatusCode: http.StatusNoContent, Body: http.NoBody, Request: req}, nil
}

func TestPeerAuthTransport(t *testing.T) {
	tests := []struct {
		name          string
		ctx           context.Context
		authorization string
		peer          string
		want          string
	}{
		{"adds the peer token", context.Background(), "", adminToken, "Bearer " + adminToken},
		{"keeps the client's header", context.Background(), "Bearer " + nodeToken, adminToken, "Bearer " + nodeToken},
		{"no peer token on a forwarded request", withoutPeerToken(context.Background()), "", adminToken, ""},
		{"open API", context.Background(), "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := &roundTripRecorder{}
			transport := &peerAuthTransport{next: next, token: func() string { return tt.peer }}
			req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:1/v1/report", nil).WithContext(tt.ctx)
			if tt.authorization != "" {
				req.Header.Set("Authorization", tt.authorization)
			}

			if _, err := transport.RoundTrip(req); err != nil {
				t.Fatalf("RoundTrip: %v", err)
			}

			if len(next.requests) != 1 {
				t.Fatalf("the next transport got %d requests, want 1", len(next.requests))
			}
			if got := next.requests[0].Header.Get("Authorization"); got != tt.want {
				t.Errorf("Authorization sent is %q, want %q", got, tt.want)
			}
			if got := req.Header.Get("Authorization"); got != tt.authorization {
				t.Errorf("the caller's request was changed: Authorization is %q, want %q", got, tt.authorization)
			}
		})
	}
}

// goodSignature is a fake SigV4 check: only X-Amz-Signature=good passes.
func goodSignature(r *http.Request) error {
	if r.URL.Query().Get("X-Amz-Signature") == "good" {
		return nil
	}
	return fmt.Errorf("signature does not match")
}

// dialStatus opens the report WebSocket at url with the Authorization
// header authorization, and returns the handshake's HTTP status and the
// socket, which is nil when the handshake failed.
func dialStatus(t *testing.T, url, authorization string) (int, *websocket.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	header := http.Header{}
	if authorization != "" {
		header.Set("Authorization", authorization)
	}
	conn, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		if resp == nil {
			t.Fatalf("dialing %s: no response: %v", url, err)
		}
		return resp.StatusCode, nil
	}
	t.Cleanup(func() { conn.CloseNow() })
	return resp.StatusCode, conn
}

func TestAuthWebSocketWithAccessKeys(t *testing.T) {
	tests := []struct {
		name          string
		query         string
		authorization string
		want          int
		reason        string
	}{
		{"SigV4 without a token", "?X-Amz-Signature=good", "", http.StatusSwitchingProtocols, ""},
		{"node token without SigV4", "", bearer(nodeToken), http.StatusSwitchingProtocols, ""},
		{"admin token without SigV4", "", bearer(adminToken), http.StatusSwitchingProtocols, ""},
		{"bad SigV4 without a token", "?X-Amz-Signature=bad", "", http.StatusForbidden, authSignature},
		{"neither", "", "", http.StatusForbidden, authSignature},
		{"unknown token with good SigV4", "?X-Amz-Signature=good", bearer(unknownToken), http.StatusUnauthorized, authInvalid},
		{"read token", "", bearer(readToken), http.StatusForbidden, authScope},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := newProtectedLeader(t, func(cfg *Config) { cfg.HandshakeAuth = goodSignature })
			server := serveNode(t, node)

			status, conn := dialStatus(t, socketURL(server)+tt.query, tt.authorization)

			if status != tt.want {
				t.Fatalf("handshake status is %d, want %d", status, tt.want)
			}
			if conn != nil {
				decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", testSlot)), "front")
			}
			if tt.reason != "" {
				if got := authFailures(t, node, tt.reason); got != 1 {
					t.Errorf("throttle_auth_failures_total{reason=%s} is %v, want 1", tt.reason, got)
				}
			}
		})
	}
}

func TestAuthWebSocketWithoutAccessKeys(t *testing.T) {
	node := newProtectedLeader(t, nil)
	server := serveNode(t, node)

	status, _ := dialStatus(t, socketURL(server)+"?X-Amz-Signature=good", "")
	if status != http.StatusUnauthorized {
		t.Errorf("handshake without a token: status is %d, want 401", status)
	}
	rec := node.doWithToken(t, http.MethodGet, "/throttle", "", "")
	body := wantError(t, rec, http.StatusUnauthorized, CodeUnauthorized)
	wantMessageContains(t, body, "scope node", "--access-keys-file")

	status, conn := dialStatus(t, socketURL(server), bearer(nodeToken))
	if status != http.StatusSwitchingProtocols {
		t.Fatalf("handshake with a node token: status is %d, want 101", status)
	}
	decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", testSlot)), "front")
}

func TestAuthOpenAPICountsBadSignatures(t *testing.T) {
	node := newReportLeader(t, &fakeReporter{}, nil, func(cfg *Config) { cfg.HandshakeAuth = goodSignature })
	server := serveNode(t, node)

	status, _ := dialStatus(t, socketURL(server)+"?X-Amz-Signature=bad", bearer(adminToken))

	if status != http.StatusForbidden {
		t.Errorf("handshake with a bad signature on an API without tokens: status is %d, want 403", status)
	}
	if got := authFailures(t, node, authSignature); got != 1 {
		t.Errorf("throttle_auth_failures_total{reason=signature} is %v, want 1", got)
	}
}

func TestAuthWebSocketRelaySendsPeerToken(t *testing.T) {
	pair := newProtectedPair(t, func(cfg *Config) { cfg.HandshakeAuth = goodSignature })
	server := serveNode(t, pair.follower)
	conn := dialSocket(t, socketURL(server)+"?X-Amz-Signature=good", nil)

	reply := exchangeFrame(t, conn, reportFrame("edge-1", testSlot))

	decodeLuaReply(t, reply, "front")
	got := pair.received.all()
	if len(got) != 1 || got[0] != "Bearer "+adminToken {
		t.Errorf("the leader received Authorization %q, want the follower's peer token (the first admin token)", got)
	}
	var frame map[string]json.RawMessage
	if err := json.Unmarshal(reply, &frame); err == nil {
		if _, isError := frame["error"]; isError {
			t.Errorf("the relayed report got an error frame: %s", reply)
		}
	}
}

func TestAuthWebSocketMonitorFramesNeedAdminToken(t *testing.T) {
	const monitorFrame = `{"monitor":"reported","start_slot":1,"end_slot":2}`
	tests := []struct {
		name          string
		query         string
		authorization string
		nodeMonitor   bool
		allowed       bool
	}{
		{"node token", "", bearer(nodeToken), false, false},
		{"SigV4 signature", "?X-Amz-Signature=good", "", false, false},
		{"admin token", "", bearer(adminToken), false, true},
		{"node token with NodeMonitor", "", bearer(nodeToken), true, true},
		{"SigV4 signature with NodeMonitor", "?X-Amz-Signature=good", "", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := newProtectedLeader(t, func(cfg *Config) {
				cfg.HandshakeAuth = goodSignature
				cfg.NodeMonitor = tt.nodeMonitor
			})
			server := serveNode(t, node)
			status, conn := dialStatus(t, socketURL(server)+tt.query, tt.authorization)
			if status != http.StatusSwitchingProtocols {
				t.Fatalf("handshake status is %d, want 101", status)
			}

			reply := exchangeFrame(t, conn, monitorFrame)

			var answer struct {
				Error *struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(reply, &answer); err != nil {
				t.Fatalf("reply %s is not JSON: %v", reply, err)
			}
			switch {
			case tt.allowed && answer.Error != nil:
				t.Errorf("monitor frame answered with error %+v, want monitor data", *answer.Error)
			case !tt.allowed && (answer.Error == nil || answer.Error.Code != CodeForbidden || !strings.Contains(answer.Error.Message, "--node-monitor")):
				t.Errorf("monitor frame answered %s, want a %s error that names --node-monitor", reply, CodeForbidden)
			}
			// The socket stays open for reports either way.
			decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", testSlot)), "front")
		})
	}
}

func TestRemovalNoticeCarriesPeerToken(t *testing.T) {
	authorization := make(chan string, 1)
	removed := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authorization <- r.Header.Get("Authorization")
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(removed.Close)
	node := newProtectedLeader(t, nil)
	node.cluster.set(func(c *fakeCluster) {
		c.servers = append(c.servers, raftnode.Server{ID: "central-2", Address: "127.0.0.1:7002", Suffrage: "Voter"})
	})
	node.seed(t, fsm.SetServerCommand{ID: "central-2", HTTPAddr: removed.Listener.Addr().String(), RaftAddr: "127.0.0.1:7002"})

	rec := node.doWithToken(t, http.MethodDelete, "/v1/cluster/servers/central-2", "", adminToken)

	wantStatus(t, rec, http.StatusNoContent)
	select {
	case got := <-authorization:
		if got != "Bearer "+adminToken {
			t.Errorf("the removal notice carried Authorization %q, want the peer token (the first admin token)", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the removed central got no notice within 10 s")
	}
}
