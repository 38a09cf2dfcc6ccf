package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/throttlecentral/throttle-central/edge"
	"github.com/throttlecentral/throttle-central/membership"
	"github.com/throttlecentral/throttle-central/protocol"
)

// testSlot is the slot the API tests start in, a realistic unix second.
const testSlot int64 = 1_800_000_000

// waitTimeout bounds every wait in these tests.
const waitTimeout = 10 * time.Second

// fakeCentral is an HTTP server on 127.0.0.1 that records reports and
// replies to each with a version 2 reply carrying quotas for the next slot.
type fakeCentral struct {
	server *httptest.Server
	quotas map[string]protocol.Quotas

	mu      sync.Mutex
	reports []protocol.Report
}

func newFakeCentral(t *testing.T, quotas map[string]protocol.Quotas) *fakeCentral {
	t.Helper()
	f := &fakeCentral{quotas: quotas}
	f.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var report protocol.Report
		if err := json.NewDecoder(r.Body).Decode(&report); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.reports = append(f.reports, report)
		f.mu.Unlock()

		slot := strconv.FormatInt(report.Slot+1, 10)
		byService := map[string]map[string]protocol.Quotas{}
		for service, users := range f.quotas {
			byService[service] = map[string]protocol.Quotas{slot: users}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"version": 2, "slot": report.Slot + 1, "central_slot": report.Slot + 1, "offset": 0, "leader": "c1",
			"quotas": byService,
		})
	}))
	t.Cleanup(f.server.Close)
	return f
}

func (f *fakeCentral) received() []protocol.Report {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]protocol.Report(nil), f.reports...)
}

// consumed sums one user's consumption of one resource over every report.
func (f *fakeCentral) consumed(service, user, resource string) float64 {
	total := 0.0
	for _, report := range f.received() {
		total += report.Consumption[service][user][resource]
	}
	return total
}

// fakeClock is a clock that tests set by hand.
type fakeClock struct {
	nanos atomic.Int64
}

func (c *fakeClock) now() time.Time  { return time.Unix(0, c.nanos.Load()) }
func (c *fakeClock) set(t time.Time) { c.nanos.Store(t.UnixNano()) }

func at(slot int64, ms int) time.Time {
	return time.Unix(slot, int64(ms)*int64(time.Millisecond))
}

// waitFor polls cond every 10 ms until it returns "" or waitTimeout
// passes.
func waitFor(t *testing.T, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	reason := ""
	for time.Now().Before(deadline) {
		if reason = cond(); reason == "" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s: %s", waitTimeout, what, reason)
}

// testAgent is the API in front of an edge client on a fake clock.
type testAgent struct {
	url     string
	client  *edge.Client
	clock   *fakeClock
	central *fakeCentral
}

// newTestAgent starts an edge client against a fake central that hands out
// quotas, waits until the client holds the quotas of testSlot+1, and sets
// the clock 100 ms into that slot. The report loop runs on real timers, so
// its next report comes about a second later and takes only the counts of
// testSlot.
func newTestAgent(t *testing.T, quotas map[string]protocol.Quotas, fallback edge.FallbackPolicy) *testAgent {
	t.Helper()
	central := newFakeCentral(t, quotas)
	clock := &fakeClock{}
	clock.set(at(testSlot, 40))
	client, err := edge.NewClient(edge.ClientOptions{
		NodeID:    "edge-test",
		Centrals:  []string{central.server.URL},
		Throttler: edge.Options{DefaultFallback: fallback},
		Clock:     clock.now,
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	if err := client.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = client.Close(ctx)
	})
	waitFor(t, "the first reply", func() string {
		if stats := client.Stats(); stats.ReportsSent == 0 {
			return fmt.Sprintf("stats %+v", stats)
		}
		return ""
	})
	clock.set(at(testSlot+1, 100))

	server := httptest.NewServer(newAPI(client, "edge-test", slog.New(slog.DiscardHandler), prometheus.NewRegistry()))
	t.Cleanup(server.Close)
	return &testAgent{url: server.URL, client: client, clock: clock, central: central}
}

// call sends a request to the agent and returns the status, the headers
// and the body.
func call(t *testing.T, method, url, body string) (int, http.Header, string) {
	t.Helper()
	request, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer response.Body.Close()
	data, err := io.ReadAll(response.Body)
	if err != nil {
		t.Fatalf("reading the body of %s %s: %v", method, url, err)
	}
	return response.StatusCode, response.Header, string(data)
}

func decodeThrottle(t *testing.T, body string) map[string]any {
	t.Helper()
	var decoded map[string]any
	if err := json.Unmarshal([]byte(body), &decoded); err != nil {
		t.Fatalf("throttle body %q is not JSON: %v", body, err)
	}
	return decoded
}

// errorMessage returns the message of the central's error shape,
// {"error": {"code": ..., "message": ...}}, and fails when body has another
// shape.
func errorMessage(t *testing.T, body string) string {
	t.Helper()
	var decoded struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &decoded); err != nil || decoded.Error.Code == "" {
		t.Errorf("body %s is not an error of the central's shape (%v)", body, err)
	}
	return decoded.Error.Message
}

func TestConsumeThenThrottleRejects(t *testing.T) {
	agent := newTestAgent(t, map[string]protocol.Quotas{"front": {"alice": {"traffic_up": 100}}}, edge.FallbackSafeShare)

	status, _, body := call(t, http.MethodGet, agent.url+"/v1/throttle?service=front&user=alice", "")
	if status != http.StatusOK {
		t.Fatalf("throttle before consuming: %d %s, want 200", status, body)
	}
	if got := decodeThrottle(t, body); got["allowed"] != true || got["source"] != "central" {
		t.Errorf("throttle before consuming = %s, want allowed by the central", body)
	}

	status, _, body = call(t, http.MethodPost, agent.url+"/v1/consume", `{"service":"front","user":"alice","amounts":{"traffic_up":150}}`)
	if status != http.StatusNoContent {
		t.Fatalf("consume: %d %s, want 204", status, body)
	}

	status, header, body := call(t, http.MethodGet, agent.url+"/v1/throttle?service=front&user=alice", "")
	if status != http.StatusTooManyRequests {
		t.Fatalf("throttle after consuming 150 of 100: %d %s, want 429", status, body)
	}
	got := decodeThrottle(t, body)
	if got["allowed"] != false {
		t.Errorf("allowed = %v, want false", got["allowed"])
	}
	if got["source"] != "central" {
		t.Errorf("source = %v, want central", got["source"])
	}
	if got["resource"] != "traffic_up" {
		t.Errorf("resource = %v, want traffic_up", got["resource"])
	}
	if got["quota"] != 100.0 {
		t.Errorf("quota = %v, want 100", got["quota"])
	}
	if got["consumption"] != 150.0 {
		t.Errorf("consumption = %v, want 150", got["consumption"])
	}
	if reason, _ := got["reason"].(string); !strings.Contains(reason, "traffic_up consumption 150 is above the quota 100") {
		t.Errorf("reason = %q, want it to name the resource, consumption and quota", reason)
	}
	if header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After = %q, want 1", header.Get("Retry-After"))
	}

	status, _, body = call(t, http.MethodGet, agent.url+"/v1/throttle?service=front&user=bob", "")
	if status != http.StatusOK {
		t.Errorf("throttle of bob, who has no quota entry: %d %s, want 200", status, body)
	}
}

func TestConsumeRejectsInvalidBody(t *testing.T) {
	agent := newTestAgent(t, nil, edge.FallbackOpen)
	tests := []struct {
		name   string
		body   string
		status int
		want   string
	}{
		{"empty body", "", 400, "the body is empty"},
		{"not JSON", `{"service":`, 400, "not valid JSON"},
		{"unknown field", `{"service":"front","user":"alice","amounts":{"a":1},"extra":1}`, 400, `unknown field "extra"`},
		{"missing service", `{"user":"alice","amounts":{"a":1}}`, 400, "service is missing"},
		{"null user", `{"service":"front","user":null,"amounts":{"a":1}}`, 400, "user is missing"},
		{"user with slash", `{"service":"front","user":"a/b","amounts":{"a":1}}`, 400, `user "a/b" contains '/'`},
		{"empty service", `{"service":"","user":"alice","amounts":{"a":1}}`, 400, "service is empty"},
		{"missing amounts", `{"service":"front","user":"alice"}`, 400, "amounts is missing or empty"},
		{"negative amount", `{"service":"front","user":"alice","amounts":{"traffic_up":-1}}`, 400, "amounts.traffic_up is -1; it must not be negative"},
		{"amount above 2^53", `{"service":"front","user":"alice","amounts":{"traffic_up":1e16}}`, 400, "amounts.traffic_up is 1e+16; it must be at most 2^53"},
		{"amount out of range", `{"service":"front","user":"alice","amounts":{"traffic_up":1e400}}`, 400, "amounts.traffic_up is 1e400; it must be at most 2^53"},
		{"amount as string", `{"service":"front","user":"alice","amounts":{"traffic_up":"5"}}`, 400, `amounts.traffic_up is "5"; it must be a number`},
		{"amount null", `{"service":"front","user":"alice","amounts":{"traffic_up":null}}`, 400, "amounts.traffic_up is null; it must be a number"},
		{"service as number", `{"service":5,"user":"alice","amounts":{"a":1}}`, 400, "service is a JSON number; it must be a string"},
		{"amounts as list", `{"service":"front","user":"alice","amounts":[1]}`, 400, "amounts is a JSON array; it must be an object"},
		{"bad resource", `{"service":"front","user":"alice","amounts":{" up":1}}`, 400, `resource " up" has leading or trailing spaces (in amounts)`},
		{"two objects", `{"service":"front","user":"alice","amounts":{"a":1}} {}`, 400, "data after the JSON object"},
		{"too large", `{"service":"front","user":"` + strings.Repeat("a", maxBodyBytes) + `"}`, 413, "larger than the maximum"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := call(t, http.MethodPost, agent.url+"/v1/consume", tc.body)
			if status != tc.status {
				t.Errorf("status = %d, want %d (body %s)", status, tc.status, body)
			}
			if message := errorMessage(t, body); !strings.Contains(message, tc.want) {
				t.Errorf("error message = %q, want it to contain %q", message, tc.want)
			}
		})
	}

	// Nothing of a rejected request is counted: the final report of this
	// slot holds no consumption.
	agent.clock.set(at(testSlot+1, 990))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := agent.client.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	reports := agent.central.received()
	if final := reports[len(reports)-1]; final.Slot != testSlot+2 || len(final.Consumption["front"]) != 0 {
		t.Errorf("final report: slot %d, consumption %v; want slot %d without consumption", final.Slot, final.Consumption, testSlot+2)
	}
}

func TestThrottleRejectsInvalidQuery(t *testing.T) {
	agent := newTestAgent(t, nil, edge.FallbackOpen)
	tests := []struct {
		query string
		want  string
	}{
		{"user=alice", "the query parameter service is missing"},
		{"service=front", "the query parameter user is missing"},
		{"service=front&user=", "user is empty"},
		{"service=front&user=a%2Fb", `user "a/b" contains '/'`},
	}
	for _, tc := range tests {
		status, _, body := call(t, http.MethodGet, agent.url+"/v1/throttle?"+tc.query, "")
		if status != http.StatusBadRequest {
			t.Errorf("throttle?%s: status %d, want 400", tc.query, status)
		}
		if message := errorMessage(t, body); !strings.Contains(message, tc.want) {
			t.Errorf("throttle?%s: error message %q, want it to contain %q", tc.query, message, tc.want)
		}
	}
}

func TestThrottleClosedFallbackRejects(t *testing.T) {
	agent := newTestAgent(t, nil, edge.FallbackClosed)

	status, _, body := call(t, http.MethodGet, agent.url+"/v1/throttle?service=front&user=alice", "")

	if status != http.StatusTooManyRequests {
		t.Fatalf("throttle without quota under the closed policy: %d %s, want 429", status, body)
	}
	got := decodeThrottle(t, body)
	if got["source"] != "fallback" {
		t.Errorf("source = %v, want fallback", got["source"])
	}
	if _, ok := got["resource"]; ok {
		t.Errorf("body %s has a resource, want none: the closed policy checks no resource", body)
	}
	if reason, _ := got["reason"].(string); !strings.Contains(reason, "fallback policy is closed") {
		t.Errorf("reason = %q, want it to name the closed fallback policy", reason)
	}
}

func TestStatsHealthAndMetrics(t *testing.T) {
	agent := newTestAgent(t, nil, edge.FallbackOpen)
	call(t, http.MethodGet, agent.url+"/v1/throttle?service=front&user=alice", "")

	status, _, body := call(t, http.MethodGet, agent.url+"/healthz", "")
	if status != http.StatusOK {
		t.Errorf("healthz: %d %s, want 200", status, body)
	}

	status, _, body = call(t, http.MethodGet, agent.url+"/v1/stats", "")
	if status != http.StatusOK {
		t.Fatalf("stats: %d %s, want 200", status, body)
	}
	var stats struct {
		NodeID      string `json:"node_id"`
		ReportsSent uint64 `json:"reports_sent"`
		LastCentral string `json:"last_central"`
	}
	if err := json.Unmarshal([]byte(body), &stats); err != nil {
		t.Fatalf("stats body %q: %v", body, err)
	}
	if stats.NodeID != "edge-test" || stats.ReportsSent == 0 || stats.LastCentral != agent.central.server.URL {
		t.Errorf("stats = %s, want node_id edge-test, reports_sent above 0 and last_central %s", body, agent.central.server.URL)
	}

	status, _, body = call(t, http.MethodGet, agent.url+"/metrics", "")
	if status != http.StatusOK {
		t.Fatalf("metrics: %d, want 200", status)
	}
	for _, want := range []string{`throttle_edge_reports_total{outcome="sent"}`, `throttle_agent_checks_total{result="allowed"} 1`, "throttle_edge_quota_slots"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestUnknownRouteAndMethod(t *testing.T) {
	agent := newTestAgent(t, nil, edge.FallbackOpen)

	status, header, body := call(t, http.MethodGet, agent.url+"/v1/consume", "")
	if status != http.StatusMethodNotAllowed || header.Get("Allow") != http.MethodPost {
		t.Errorf("GET /v1/consume: %d, Allow %q, want 405 with Allow POST (body %s)", status, header.Get("Allow"), body)
	}
	status, _, body = call(t, http.MethodGet, agent.url+"/v1/nothing", "")
	if status != http.StatusNotFound || !strings.Contains(body, "POST /v1/consume") {
		t.Errorf("GET /v1/nothing: %d %s, want 404 that lists the routes", status, body)
	}
}

// startAgent runs the agent's main loop with args and returns its address,
// a function that stops it, and the exit code channel.
func startAgent(t *testing.T, args []string, stderr io.Writer) (string, context.CancelCauseFunc, <-chan int) {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	addresses := make(chan string, 1)
	exit := make(chan int, 1)
	go func() {
		exit <- run(ctx, args, stderr, func(addr string) { addresses <- addr })
	}()
	t.Cleanup(func() { cancel(nil) })
	select {
	case addr := <-addresses:
		return addr, cancel, exit
	case code := <-exit:
		t.Fatalf("the agent exited with code %d before it listened", code)
	case <-time.After(waitTimeout):
		t.Fatalf("the agent did not listen within %v", waitTimeout)
	}
	return "", nil, nil
}

// waitExit waits for the agent's exit code.
func waitExit(t *testing.T, exit <-chan int) int {
	t.Helper()
	select {
	case code := <-exit:
		return code
	case <-time.After(waitTimeout):
		t.Fatalf("the agent did not exit within %v", waitTimeout)
	}
	return -1
}

func TestRunSendsFinalReportOnShutdown(t *testing.T) {
	central := newFakeCentral(t, nil)
	var stderr syncBuffer
	addr, stop, exit := startAgent(t, []string{"--listen", "127.0.0.1:0", "--node-id", "edge-run", "--centrals", central.server.URL}, &stderr)

	status, _, body := call(t, http.MethodPost, "http://"+addr+"/v1/consume", `{"service":"front","user":"alice","amounts":{"traffic_up":1024}}`)
	if status != http.StatusNoContent {
		t.Fatalf("consume: %d %s, want 204", status, body)
	}
	stop(fmt.Errorf("test shutdown"))

	if code := waitExit(t, exit); code != 0 {
		t.Errorf("exit code %d, want 0; log:\n%s", code, stderr.String())
	}
	if got := central.consumed("front", "alice", "traffic_up"); got != 1024 {
		t.Errorf("reported consumption of alice = %v, want 1024 by the final report; log:\n%s", got, stderr.String())
	}
	for _, want := range []string{"throttle-agent started", "test shutdown", "throttle-agent stopped"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, stderr.String())
		}
	}
}

func TestRunJoinsGossipAsEdge(t *testing.T) {
	observer, err := membership.Start(membership.Config{
		Name: "observer", Role: membership.RoleEdge, BindAddr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("start the observing gossip member: %v", err)
	}
	t.Cleanup(func() { _ = observer.Shutdown() })
	central := newFakeCentral(t, nil)
	var stderr syncBuffer
	_, stop, exit := startAgent(t, []string{"--listen", "127.0.0.1:0", "--node-id", "edge-gossip", "--centrals", central.server.URL,
		"--gossip-addr", "127.0.0.1:0", "--gossip-join", observer.Addr()}, &stderr)

	// memberState returns the agent's role and state in the observer's
	// view.
	memberState := func() (membership.Role, membership.State) {
		for _, member := range observer.Members() {
			if member.Name == "edge-gossip" {
				return member.Role, member.State
			}
		}
		return "", ""
	}
	waitFor(t, "the agent in the observer's view", func() string {
		if role, state := memberState(); role != membership.RoleEdge || state != membership.StateAlive {
			return fmt.Sprintf("role %q, state %q", role, state)
		}
		return ""
	})

	stop(fmt.Errorf("test shutdown"))

	if code := waitExit(t, exit); code != 0 {
		t.Errorf("exit code %d, want 0; log:\n%s", code, stderr.String())
	}
	waitFor(t, "the agent to leave", func() string {
		if _, state := memberState(); state != membership.StateLeft {
			return fmt.Sprintf("state %q", state)
		}
		return ""
	})
	if got := len(central.received()); got == 0 {
		t.Errorf("central received no report, want at least the final one")
	}
}

// syncBuffer is a bytes.Buffer safe for the agent's logger and the test at
// once.
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

// BenchmarkAgentAPI measures a throttle check and a consume through the
// agent's HTTP API on loopback, with one keep-alive connection per
// goroutine, as an application calls it. The report loop does not run, so
// no central is contacted.
func BenchmarkAgentAPI(b *testing.B) {
	client, err := edge.NewClient(edge.ClientOptions{
		NodeID:    "edge-bench",
		Centrals:  []string{"http://127.0.0.1:1"},
		Throttler: edge.Options{DefaultFallback: edge.FallbackOpen},
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatalf("NewClient: %v", err)
	}
	server := httptest.NewServer(newAPI(client, "edge-bench", slog.New(slog.DiscardHandler), prometheus.NewRegistry()))
	defer server.Close()

	b.Run("throttle", func(b *testing.B) {
		url := server.URL + "/v1/throttle?service=front&user=alice"
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				response, err := http.Get(url)
				if err != nil {
					b.Errorf("GET: %v", err)
					return
				}
				_, _ = io.Copy(io.Discard, response.Body)
				response.Body.Close()
			}
		})
	})
	b.Run("consume", func(b *testing.B) {
		url := server.URL + "/v1/consume"
		const body = `{"service":"front","user":"alice","amounts":{"traffic_up":1024}}`
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				response, err := http.Post(url, "application/json", strings.NewReader(body))
				if err != nil {
					b.Errorf("POST: %v", err)
					return
				}
				_, _ = io.Copy(io.Discard, response.Body)
				response.Body.Close()
			}
		})
	})
}
