package edge

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/protocol"
)

// testSlot is the slot most client tests start in, a realistic unix second.
const testSlot int64 = 1_800_000_000

// waitTimeout bounds every wait in the client tests.
const waitTimeout = 10 * time.Second

// at returns the time ms milliseconds into slot.
func at(slot int64, ms int) time.Time {
	return time.Unix(slot, int64(ms)*int64(time.Millisecond))
}

// fakeClock is a clock that tests set by hand.
type fakeClock struct {
	nanos atomic.Int64
}

func newFakeClock(now time.Time) *fakeClock {
	clock := &fakeClock{}
	clock.set(now)
	return clock
}

func (c *fakeClock) now() time.Time  { return time.Unix(0, c.nanos.Load()) }
func (c *fakeClock) set(t time.Time) { c.nanos.Store(t.UnixNano()) }

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
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

// receivedReport is one report as a fake central received it.
type receivedReport struct {
	report        protocol.Report
	authorization string
	contentType   string
	at            time.Time
}

// fakeCentral is an HTTP server on 127.0.0.1 that records reports and
// replies to them with respond.
type fakeCentral struct {
	server *httptest.Server

	mu      sync.Mutex
	reports []receivedReport
	respond func(report protocol.Report) (status int, body any)
}

// newFakeCentral starts a fake central that replies to every report with a
// version 2 reply carrying quotas(report) for the slot after the report's.
func newFakeCentral(t *testing.T, quotas func(report protocol.Report) map[string]protocol.Quotas) *fakeCentral {
	t.Helper()
	f := &fakeCentral{}
	f.respond = func(report protocol.Report) (int, any) {
		var byService map[string]protocol.Quotas
		if quotas != nil {
			byService = quotas(report)
		}
		return http.StatusOK, versionTwoReply(report.Slot+1, byService, nil)
	}
	f.server = httptest.NewServer(http.HandlerFunc(f.handle))
	t.Cleanup(f.server.Close)
	return f
}

func (f *fakeCentral) handle(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/report" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	var report protocol.Report
	if err := json.NewDecoder(r.Body).Decode(&report); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.reports = append(f.reports, receivedReport{
		report:        report,
		authorization: r.Header.Get("Authorization"),
		contentType:   r.Header.Get("Content-Type"),
		at:            time.Now(),
	})
	respond := f.respond
	f.mu.Unlock()

	status, body := respond(report)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// setRespond replaces the reply function.
func (f *fakeCentral) setRespond(respond func(report protocol.Report) (int, any)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.respond = respond
}

func (f *fakeCentral) received() []receivedReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]receivedReport(nil), f.reports...)
}

func (f *fakeCentral) url() string { return f.server.URL }

// versionTwoReply builds the central's version 2 reply with quotas for slot.
func versionTwoReply(slot int64, quotas map[string]protocol.Quotas, shares map[string]protocol.Shares) map[string]any {
	byService := map[string]map[string]protocol.Quotas{}
	for service, users := range quotas {
		byService[service] = map[string]protocol.Quotas{strconv.FormatInt(slot, 10): users}
	}
	reply := map[string]any{
		"version": 2, "slot": slot, "central_slot": slot, "offset": 0, "leader": "c1",
		"quotas": byService,
	}
	if shares != nil {
		reply["shares"] = shares
	}
	return reply
}

// errorReply is the central's error body.
func errorReply(code, message string) map[string]any {
	return map[string]any{"error": map[string]any{"code": code, "message": message}}
}

// testClient is a Client with a fake clock and a captured log.
type testClient struct {
	*Client
	clock *fakeClock
	log   *syncBuffer
}

// newTestClient returns a client of node testNode with a fake clock at
// start. adjust may change the options; centrals are required.
func newTestClient(t *testing.T, start time.Time, centrals []string, adjust func(*ClientOptions)) *testClient {
	t.Helper()
	clock := newFakeClock(start)
	logs := &syncBuffer{}
	options := ClientOptions{
		NodeID:   testNode,
		Centrals: centrals,
		Clock:    clock.now,
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if adjust != nil {
		adjust(&options)
	}
	client, err := NewClient(options)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() {
		// An ended context makes Close skip the wait for the report time.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = client.Close(ctx)
		if t.Failed() {
			t.Logf("client log:\n%s", logs.String())
		}
	})
	return &testClient{Client: client, clock: clock, log: logs}
}

// waitFor polls cond every 10 ms until it returns "" or waitTimeout
// passes, then fails with the last reason.
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

// consumptionOf returns a report's consumption of one user and resource of
// testService.
func consumptionOf(report protocol.Report, user, resource string) float64 {
	return report.Consumption[testService][user][resource]
}

func TestClientReportAppliesQuotas(t *testing.T) {
	central := newFakeCentral(t, func(protocol.Report) map[string]protocol.Quotas {
		return map[string]protocol.Quotas{testService: {"alice": {"traffic_up": 100}}}
	})
	client := newTestClient(t, at(testSlot-1, 500), []string{central.url()}, nil)

	client.Consume(testService, "alice", map[string]float64{"traffic_up": 300})
	client.Consume(testService, "bob", map[string]float64{"database_read": 2})
	client.clock.set(at(testSlot, 50))
	if err := client.report(testSlot); err != nil {
		t.Fatalf("report(%d): %v", testSlot, err)
	}

	received := central.received()
	if len(received) != 1 {
		t.Fatalf("central received %d reports, want 1", len(received))
	}
	report := received[0].report
	if report.Version != 2 {
		t.Errorf("report version = %d, want 2", report.Version)
	}
	if report.NodeID != testNode {
		t.Errorf("report node_id = %q, want %q", report.NodeID, testNode)
	}
	if report.Slot != testSlot {
		t.Errorf("report slot_number = %d, want %d", report.Slot, testSlot)
	}
	if got := consumptionOf(report, "alice", "traffic_up"); got != 300 {
		t.Errorf("reported consumption of alice = %v, want 300", got)
	}
	if got := consumptionOf(report, "bob", "database_read"); got != 2 {
		t.Errorf("reported consumption of bob = %v, want 2", got)
	}
	if _, ok := report.Rejection[testService]; !ok {
		t.Errorf("report rejection = %v, want an entry for %q as the Lua client sends it", report.Rejection, testService)
	}
	if received[0].contentType != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", received[0].contentType)
	}
	if received[0].authorization != "" {
		t.Errorf("Authorization = %q, want none without a bearer token", received[0].authorization)
	}

	client.clock.set(at(testSlot+1, 100))
	if err := client.Throttle(testService, "alice"); err != nil {
		t.Errorf("Throttle(alice) before consuming = %v, want nil", err)
	}
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 150})
	err := client.Throttle(testService, "alice")
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("Throttle(alice) after consuming 150 of 100 = %v, want an error wrapping ErrRejected", err)
	}
	var rejected *RejectedError
	if !errors.As(err, &rejected) {
		t.Fatalf("Throttle error %T is not a *RejectedError", err)
	}
	checkDecision(t, rejected.Decision, Decision{Source: SourceCentral, Resource: "traffic_up", Quota: 100, Consumption: 150})
	if rejected.Service != testService || rejected.User != "alice" {
		t.Errorf("RejectedError names service %q and user %q, want %q and alice", rejected.Service, rejected.User, testService)
	}
	for _, want := range []string{`"alice"`, `"front"`, "traffic_up", "150", "quota 100"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if err := client.Throttle(testService, "carol"); err != nil {
		t.Errorf("Throttle(carol) = %v, want nil for a user without a quota entry", err)
	}

	stats := client.Stats()
	if stats.ReportsSent != 1 {
		t.Errorf("Stats.ReportsSent = %d, want 1", stats.ReportsSent)
	}
	if stats.LastCentral != central.url() {
		t.Errorf("Stats.LastCentral = %q, want %q", stats.LastCentral, central.url())
	}
	if stats.LastReportSlot != testSlot {
		t.Errorf("Stats.LastReportSlot = %d, want %d", stats.LastReportSlot, testSlot)
	}
	if stats.Leader != "c1" {
		t.Errorf("Stats.Leader = %q, want c1", stats.Leader)
	}
	if stats.QuotaSlots != 1 || stats.NewestQuotaSlot != testSlot+1 {
		t.Errorf("Stats.QuotaSlots = %d and NewestQuotaSlot = %d, want 1 and %d", stats.QuotaSlots, stats.NewestQuotaSlot, testSlot+1)
	}
}

func TestClientSendsBearerToken(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 50), []string{central.url()}, func(o *ClientOptions) {
		o.BearerToken = "token-1"
	})

	if err := client.report(testSlot); err != nil {
		t.Fatalf("report: %v", err)
	}
	received := central.received()
	if len(received) != 1 {
		t.Fatalf("central received %d reports, want 1", len(received))
	}
	if got := received[0].authorization; got != "Bearer token-1" {
		t.Errorf("Authorization = %q, want %q", got, "Bearer token-1")
	}
	if strings.Contains(client.log.String(), "token-1") {
		t.Errorf("the log contains the bearer token:\n%s", client.log.String())
	}
}

func TestClientReportsOverTLS(t *testing.T) {
	central := newFakeCentral(t, nil)
	secure := httptest.NewTLSServer(central.server.Config.Handler)
	t.Cleanup(secure.Close)
	roots := x509.NewCertPool()
	roots.AddCert(secure.Certificate())
	client := newTestClient(t, at(testSlot, 50), []string{secure.URL}, func(o *ClientOptions) {
		o.TLSConfig = &tls.Config{RootCAs: roots}
	})

	if err := client.report(testSlot); err != nil {
		t.Fatalf("report over https: %v", err)
	}

	if got := len(central.received()); got != 1 {
		t.Errorf("central received %d reports over https, want 1", got)
	}
}

func TestClientFailoverOnStatus(t *testing.T) {
	tests := []struct {
		status   int
		failover bool
	}{
		{http.StatusServiceUnavailable, true},
		{http.StatusInternalServerError, true},
		{http.StatusBadGateway, true},
		{http.StatusNotFound, true},
		{http.StatusTooManyRequests, true},
		{http.StatusBadRequest, false},
		{http.StatusRequestEntityTooLarge, false},
	}
	for _, tc := range tests {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			first := newFakeCentral(t, nil)
			first.setRespond(func(protocol.Report) (int, any) {
				return tc.status, errorReply("some_code", fmt.Sprintf("message of status %d", tc.status))
			})
			second := newFakeCentral(t, nil)
			client := newTestClient(t, at(testSlot-1, 500), []string{first.url(), second.url()}, nil)
			client.Consume(testService, "alice", map[string]float64{"traffic_up": 1})
			client.clock.set(at(testSlot, 50))

			err := client.report(testSlot)

			if got := len(first.received()); got != 1 {
				t.Errorf("first central received %d reports, want 1", got)
			}
			stats := client.Stats()
			if !tc.failover {
				if !errors.Is(err, errReportRejected) {
					t.Errorf("report error = %v, want one wrapping errReportRejected", err)
				}
				if got := len(second.received()); got != 0 {
					t.Errorf("second central received %d reports, want 0: a rejected report must not be sent elsewhere", got)
				}
				if stats.ReportsRejected != 1 || stats.Failovers != 0 {
					t.Errorf("Stats.ReportsRejected = %d and Failovers = %d, want 1 and 0", stats.ReportsRejected, stats.Failovers)
				}
				message := fmt.Sprintf("message of status %d", tc.status)
				if !strings.Contains(client.log.String(), message) {
					t.Errorf("log does not contain the central's message %q:\n%s", message, client.log.String())
				}
				return
			}
			if err != nil {
				t.Errorf("report error = %v, want nil after failover", err)
			}
			if got := len(second.received()); got != 1 {
				t.Errorf("second central received %d reports, want 1", got)
			}
			if stats.Failovers != 1 || stats.LastCentral != second.url() {
				t.Errorf("Stats.Failovers = %d and LastCentral = %q, want 1 and %q", stats.Failovers, stats.LastCentral, second.url())
			}
		})
	}
}

func TestClientStaysOnCentralLastReached(t *testing.T) {
	first := newFakeCentral(t, nil)
	first.setRespond(func(protocol.Report) (int, any) {
		return http.StatusServiceUnavailable, errorReply("no_leader", "no leader")
	})
	second := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 50), []string{first.url(), second.url()}, nil)

	for slot := testSlot; slot < testSlot+3; slot++ {
		client.clock.set(at(slot, 50))
		if err := client.report(slot); err != nil {
			t.Fatalf("report(%d): %v", slot, err)
		}
	}

	if got := len(first.received()); got != 1 {
		t.Errorf("first central received %d reports, want 1: after a failover reports go to the central last reached", got)
	}
	if got := len(second.received()); got != 3 {
		t.Errorf("second central received %d reports, want 3", got)
	}
	if got := client.Stats().Failovers; got != 1 {
		t.Errorf("Stats.Failovers = %d, want 1", got)
	}
}

func TestClientFailoverFromClosedCentral(t *testing.T) {
	closed := newFakeCentral(t, nil)
	closed.server.Close()
	second := newFakeCentral(t, func(protocol.Report) map[string]protocol.Quotas {
		return map[string]protocol.Quotas{testService: {"alice": {"traffic_up": 0}}}
	})
	client := newTestClient(t, at(testSlot, 50), []string{closed.url(), second.url()}, nil)

	if err := client.report(testSlot); err != nil {
		t.Fatalf("report: %v", err)
	}

	if got := len(second.received()); got != 1 {
		t.Errorf("second central received %d reports, want 1", got)
	}
	client.clock.set(at(testSlot+1, 100))
	if err := client.Throttle(testService, "alice"); !errors.Is(err, ErrRejected) {
		t.Errorf("Throttle(alice) = %v, want a rejection by the quota 0 from the second central", err)
	}
	if !strings.Contains(client.log.String(), "trying the next central") {
		t.Errorf("log does not mention the failover:\n%s", client.log.String())
	}
}

func TestClientFailoverOnTimeout(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	second := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 50), []string{slow.URL, second.url()}, func(o *ClientOptions) {
		o.RequestTimeout = 100 * time.Millisecond
	})

	started := time.Now()
	if err := client.report(testSlot); err != nil {
		t.Fatalf("report: %v", err)
	}

	if got := len(second.received()); got != 1 {
		t.Errorf("second central received %d reports, want 1", got)
	}
	if elapsed := time.Since(started); elapsed > 2*time.Second {
		t.Errorf("report took %v, want about the 100ms request timeout plus one request", elapsed)
	}
}

func TestClientAllCentralsFailDropsCounts(t *testing.T) {
	first := newFakeCentral(t, nil)
	second := newFakeCentral(t, nil)
	unavailable := func(protocol.Report) (int, any) {
		return http.StatusServiceUnavailable, errorReply("no_leader", "no leader is known")
	}
	first.setRespond(unavailable)
	second.setRespond(unavailable)
	client := newTestClient(t, at(testSlot-1, 500), []string{first.url(), second.url()}, nil)
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 300})
	client.clock.set(at(testSlot, 50))

	err := client.report(testSlot)

	if err == nil || !strings.Contains(err.Error(), "no leader is known") {
		t.Errorf("report error = %v, want one with the central's message", err)
	}
	stats := client.Stats()
	if stats.ReportsFailed != 1 || stats.ReportsSent != 0 {
		t.Errorf("Stats.ReportsFailed = %d and ReportsSent = %d, want 1 and 0", stats.ReportsFailed, stats.ReportsSent)
	}
	if stats.LastErrorSlot == 0 {
		t.Error("Stats.LastErrorSlot is 0, want the slot of the failed report")
	}
	if !strings.Contains(stats.LastError, "503") {
		t.Errorf("Stats.LastError = %q, want it to name status 503", stats.LastError)
	}
	if !strings.Contains(client.log.String(), "counts are dropped") || !strings.Contains(client.log.String(), "dropped_users=1") {
		t.Errorf("log does not say which counts were dropped:\n%s", client.log.String())
	}

	// The counts of the failed report are not carried into the next one.
	first.setRespond(func(report protocol.Report) (int, any) {
		return http.StatusOK, versionTwoReply(report.Slot+1, nil, nil)
	})
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 50})
	client.clock.set(at(testSlot+1, 50))
	if err := client.report(testSlot + 1); err != nil {
		t.Fatalf("report(%d): %v", testSlot+1, err)
	}
	received := first.received()
	if got := consumptionOf(received[len(received)-1].report, "alice", "traffic_up"); got != 50 {
		t.Errorf("next report's consumption of alice = %v, want 50 (only its own second)", got)
	}
	if !strings.Contains(client.log.String(), "reports reach a central again") {
		t.Errorf("log does not mention the recovery:\n%s", client.log.String())
	}
}

func TestClientReportAfterWindowNotSent(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 600), []string{central.url()}, nil)

	err := client.report(testSlot)

	if err == nil || !strings.Contains(err.Error(), "not tried") {
		t.Errorf("report at 600ms into its second = %v, want an error saying the central was not tried", err)
	}
	if got := len(central.received()); got != 0 {
		t.Errorf("central received %d reports, want 0: the central would map a late report onto the next second", got)
	}
	if got := client.Stats().ReportsFailed; got != 1 {
		t.Errorf("Stats.ReportsFailed = %d, want 1", got)
	}
}

func TestClientReportSlotOnlyOnce(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 50), []string{central.url()}, nil)

	if err := client.report(testSlot); err != nil {
		t.Fatalf("first report: %v", err)
	}
	if err := client.report(testSlot); !errors.Is(err, errAlreadyReported) {
		t.Errorf("second report of the same slot = %v, want errAlreadyReported", err)
	}
	if got := len(central.received()); got != 1 {
		t.Errorf("central received %d reports, want 1", got)
	}
}

func TestClientMissedSecondsDropped(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 50), []string{central.url()}, nil)
	if err := client.report(testSlot); err != nil {
		t.Fatalf("report(%d): %v", testSlot, err)
	}
	for i, slot := range []int64{testSlot, testSlot + 1, testSlot + 2} {
		client.clock.set(at(slot, 500))
		client.Consume(testService, "alice", map[string]float64{"traffic_up": float64(int(1) << i)})
	}

	client.clock.set(at(testSlot+3, 50))
	if err := client.report(testSlot + 3); err != nil {
		t.Fatalf("report(%d): %v", testSlot+3, err)
	}

	received := central.received()
	if got := consumptionOf(received[len(received)-1].report, "alice", "traffic_up"); got != 4 {
		t.Errorf("consumption reported at %d = %v, want 4 (the second before only)", testSlot+3, got)
	}
	if got := client.Stats().ReportsSkipped; got != 2 {
		t.Errorf("Stats.ReportsSkipped = %d, want 2", got)
	}
	if !strings.Contains(client.log.String(), "report loop ran late") {
		t.Errorf("log does not mention the missed seconds:\n%s", client.log.String())
	}
}

func TestClientMergesShares(t *testing.T) {
	central := newFakeCentral(t, nil)
	var shares atomic.Pointer[map[string]protocol.Shares]
	central.setRespond(func(report protocol.Report) (int, any) {
		// No quotas, so every decision falls back to the safe shares.
		return http.StatusOK, versionTwoReply(report.Slot+1, nil, *shares.Load())
	})
	client := newTestClient(t, at(testSlot-1, 500), []string{central.url()}, nil)

	reportWithShares := func(slot int64, users []string, replyShares protocol.Shares) {
		t.Helper()
		client.clock.set(at(slot-1, 500))
		for _, user := range users {
			client.Consume(testService, user, map[string]float64{"traffic_up": 1})
		}
		shares.Store(&map[string]protocol.Shares{testService: replyShares})
		client.clock.set(at(slot, 50))
		if err := client.report(slot); err != nil {
			t.Fatalf("report(%d): %v", slot, err)
		}
	}
	// decide returns the decision for user after consuming amount in a slot
	// without quotas.
	slot := testSlot + 10
	decide := func(user string, amount float64) Decision {
		slot++
		client.clock.set(at(slot, 500))
		client.Consume(testService, user, map[string]float64{"traffic_up": amount})
		return client.Decide(testService, user)
	}

	reportWithShares(testSlot, []string{"alice", "bob", "carol"}, protocol.Shares{
		"alice": {"traffic_up": 10}, "bob": {"traffic_up": 20}, "carol": {"traffic_up": 5},
	})
	// The second report names alice and carol. bob is not named and keeps
	// his share; carol is named without a share, so her limit is gone.
	reportWithShares(testSlot+1, []string{"alice", "carol"}, protocol.Shares{"alice": {"traffic_up": 30}})

	checkDecision(t, decide("alice", 31), Decision{Source: SourceFallback, Resource: "traffic_up", Quota: 30, Consumption: 31})
	checkDecision(t, decide("bob", 21), Decision{Source: SourceFallback, Resource: "traffic_up", Quota: 20, Consumption: 21})
	checkDecision(t, decide("carol", 1000), Decision{Allowed: true, Source: SourceFallback})

	// bob's share came with the reply for testSlot+1. It expires with the
	// reply shareKeepReplies slots later, the reply to the report of
	// testSlot+shareKeepReplies.
	reportWithShares(testSlot+shareKeepReplies-1, nil, protocol.Shares{})
	checkDecision(t, decide("bob", 21), Decision{Source: SourceFallback, Resource: "traffic_up", Quota: 20, Consumption: 21})
	reportWithShares(testSlot+shareKeepReplies, nil, protocol.Shares{})
	checkDecision(t, decide("bob", 21), Decision{Allowed: true, Source: SourceFallback})
}

func TestClientKeepsSharesWithoutSharesField(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 50), []string{central.url()}, nil)
	client.throttler.SetShares(testService, protocol.Shares{"alice": {"traffic_up": 10}})

	if err := client.report(testSlot); err != nil {
		t.Fatalf("report: %v", err)
	}

	client.clock.set(at(testSlot+5, 100))
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 11})
	checkDecision(t, client.Decide(testService, "alice"), Decision{Source: SourceFallback, Resource: "traffic_up", Quota: 10, Consumption: 11})
}

func TestClientRemovesInvalidNames(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot-1, 500), []string{central.url()}, nil)
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 1, "bad\x00resource": 1})
	client.Consume(testService, "a/b", map[string]float64{"traffic_up": 1})
	client.Consume(testService, "", map[string]float64{"traffic_up": 1})
	client.Consume(" padded", "alice", map[string]float64{"traffic_up": 1})
	client.Consume("other", "bob", map[string]float64{"traffic_up": 1e300})
	client.clock.set(at(testSlot, 50))

	if err := client.report(testSlot); err != nil {
		t.Fatalf("report: %v", err)
	}

	report := central.received()[0].report
	if got := report.Consumption[testService]; len(got) != 1 || len(got["alice"]) != 1 || got["alice"]["traffic_up"] != 1 {
		t.Errorf("reported consumption of %q = %v, want only alice's traffic_up 1", testService, got)
	}
	if _, ok := report.Consumption[" padded"]; ok {
		t.Errorf("report names the invalid service %q", " padded")
	}
	if _, ok := report.Rejection[" padded"]; ok {
		t.Errorf("report rejection names the invalid service %q", " padded")
	}
	if got := report.Consumption["other"]["bob"]["traffic_up"]; got != 1<<53 {
		t.Errorf("reported consumption 1e300 = %v, want it lowered to 2^53", got)
	}
	if got := client.Stats().InvalidEntries; got != 4 {
		t.Errorf("Stats.InvalidEntries = %d, want 4", got)
	}
	if !strings.Contains(client.log.String(), "names the central rejects") {
		t.Errorf("log does not mention the removed entries:\n%s", client.log.String())
	}
}

func TestClientTrimsReportToLimits(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot-1, 500), []string{central.url()}, nil)
	resources := map[string]float64{}
	for i := range protocol.MaxReportResources + 2 {
		resources["r"+strconv.Itoa(i)] = 1
	}
	client.Consume(testService, "alice", resources)
	for i := range protocol.MaxReportServices + 3 {
		client.Consume("s"+strconv.Itoa(i), "bob", map[string]float64{"traffic_up": 1})
	}
	client.clock.set(at(testSlot, 50))

	if err := client.report(testSlot); err != nil {
		t.Fatalf("report: %v", err)
	}

	report := central.received()[0].report
	if got := len(report.Consumption); got != protocol.MaxReportServices {
		t.Errorf("report names %d services in consumption, want the maximum %d", got, protocol.MaxReportServices)
	}
	if got := len(report.Rejection); got != protocol.MaxReportServices {
		t.Errorf("report names %d services in rejection, want the maximum %d", got, protocol.MaxReportServices)
	}
	if users, ok := report.Consumption[testService]; ok && len(users["alice"]) > protocol.MaxReportResources {
		t.Errorf("alice has %d resources in the report, want at most %d", len(users["alice"]), protocol.MaxReportResources)
	}
	if got := client.Stats().InvalidEntries; got < 3 {
		t.Errorf("Stats.InvalidEntries = %d, want at least the 3 services beyond the maximum", got)
	}
}

func TestClientReadsLuaShapedReply(t *testing.T) {
	central := newFakeCentral(t, nil)
	central.setRespond(func(report protocol.Report) (int, any) {
		return http.StatusOK, map[string]any{
			testService: map[string]any{strconv.FormatInt(report.Slot+1, 10): map[string]any{"alice": map[string]float64{"traffic_up": 0}}},
		}
	})
	client := newTestClient(t, at(testSlot, 50), []string{central.url()}, nil)

	if err := client.report(testSlot); err != nil {
		t.Fatalf("report: %v", err)
	}

	client.clock.set(at(testSlot+1, 100))
	checkDecision(t, client.Decide(testService, "alice"), Decision{Source: SourceCentral, Resource: "traffic_up", Quota: 0})
}

func TestClientInvalidReplyFailsOver(t *testing.T) {
	first := newFakeCentral(t, nil)
	first.setRespond(func(protocol.Report) (int, any) {
		return http.StatusOK, map[string]any{"version": 3}
	})
	second := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 50), []string{first.url(), second.url()}, nil)

	if err := client.report(testSlot); err != nil {
		t.Fatalf("report: %v", err)
	}

	if got := len(second.received()); got != 1 {
		t.Errorf("second central received %d reports, want 1 after an unknown reply version", got)
	}
	if !strings.Contains(client.log.String(), "reply version 3 is unknown") {
		t.Errorf("log does not name the unknown version:\n%s", client.log.String())
	}
}

func TestClientThrottleClosedFallback(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 100), []string{central.url()}, func(o *ClientOptions) {
		o.Throttler.DefaultFallback = FallbackClosed
	})

	err := client.Throttle(testService, "alice")

	var rejected *RejectedError
	if !errors.As(err, &rejected) {
		t.Fatalf("Throttle without quota under the closed policy = %v, want a *RejectedError", err)
	}
	checkDecision(t, rejected.Decision, Decision{Source: SourceFallback})
	if !strings.Contains(err.Error(), "fallback policy is closed") {
		t.Errorf("error %q does not name the closed fallback policy", err)
	}
}

// fakeGossip records the calls Close makes.
type fakeGossip struct {
	mu       sync.Mutex
	calls    []string
	timeout  time.Duration
	leaveErr error
}

func (g *fakeGossip) Leave(timeout time.Duration) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, "leave")
	g.timeout = timeout
	return g.leaveErr
}

func (g *fakeGossip) Shutdown() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, "shutdown")
	return nil
}

func TestClientCloseSendsFinalReport(t *testing.T) {
	central := newFakeCentral(t, nil)
	gossip := &fakeGossip{}
	client := newTestClient(t, at(testSlot, 980), []string{central.url()}, func(o *ClientOptions) {
		o.Gossip = gossip
	})
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 7})

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := client.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	received := central.received()
	if len(received) != 1 {
		t.Fatalf("central received %d reports, want the final one", len(received))
	}
	if got := received[0].report.Slot; got != testSlot+1 {
		t.Errorf("final report slot_number = %d, want %d (the counts of %d)", got, testSlot+1, testSlot)
	}
	if got := consumptionOf(received[0].report, "alice", "traffic_up"); got != 7 {
		t.Errorf("final report consumption of alice = %v, want 7", got)
	}
	if got := fmt.Sprint(gossip.calls); got != "[leave shutdown]" {
		t.Errorf("gossip calls = %s, want [leave shutdown]", got)
	}
	if gossip.timeout <= 0 {
		t.Errorf("gossip Leave timeout = %v, want the time left before the close deadline", gossip.timeout)
	}

	if err := client.Close(ctx); err != nil {
		t.Errorf("second Close = %v, want the first call's nil", err)
	}
	if got := len(central.received()); got != 1 {
		t.Errorf("central received %d reports after a second Close, want 1", got)
	}
	if got := fmt.Sprint(gossip.calls); got != "[leave shutdown]" {
		t.Errorf("gossip calls after a second Close = %s, want [leave shutdown]", got)
	}
	if err := client.Start(); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

func TestClientCloseBeforeReportTime(t *testing.T) {
	// Close early in a second, before the loop sent that second's report:
	// the final report is that second's, not the next one's.
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot-1, 500), []string{central.url()}, nil)
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 5})
	client.clock.set(at(testSlot, 20))
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 7})

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := client.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	received := central.received()
	if len(received) != 1 {
		t.Fatalf("central received %d reports, want the final one", len(received))
	}
	if got := received[0].report.Slot; got != testSlot {
		t.Errorf("final report slot_number = %d, want %d", got, testSlot)
	}
	// The counts of the second before and of the second in progress.
	if got := consumptionOf(received[0].report, "alice", "traffic_up"); got != 12 {
		t.Errorf("final report consumption of alice = %v, want 5 + 7", got)
	}
}

func TestClientCloseGathersUnreportedSeconds(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot-2, 500), []string{central.url()}, nil)
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 5})
	client.clock.set(at(testSlot, 980))
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 7})

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := client.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	received := central.received()
	if len(received) != 1 {
		t.Fatalf("central received %d reports, want the final one", len(received))
	}
	if got := consumptionOf(received[0].report, "alice", "traffic_up"); got != 12 {
		t.Errorf("final report consumption of alice = %v, want 5 + 7 from two unreported seconds", got)
	}
}

func TestClientCloseTimerFiredLate(t *testing.T) {
	// The first clock reading is before the report time; every later one is
	// past the report window of the next second, as when the process was
	// starved while it waited.
	central := newFakeCentral(t, nil)
	var readings atomic.Int64
	client := newTestClient(t, at(testSlot, 980), []string{central.url()}, func(o *ClientOptions) {
		o.Clock = func() time.Time {
			if readings.Add(1) == 1 {
				return at(testSlot, 980)
			}
			return at(testSlot+1, 700)
		}
	})
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 7})

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	readings.Store(0)
	if err := client.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	received := central.received()
	if len(received) != 1 {
		t.Fatalf("central received %d reports, want the final one", len(received))
	}
	if got := received[0].report.Slot; got != testSlot+2 {
		t.Errorf("final report slot_number = %d, want %d, the next second whose window is open", got, testSlot+2)
	}
	if got := consumptionOf(received[0].report, "alice", "traffic_up"); got != 7 {
		t.Errorf("final report consumption of alice = %v, want 7", got)
	}
}

func TestClientCloseReportsGossipError(t *testing.T) {
	central := newFakeCentral(t, nil)
	gossip := &fakeGossip{leaveErr: errors.New("no members reachable")}
	client := newTestClient(t, at(testSlot, 990), []string{central.url()}, func(o *ClientOptions) {
		o.Gossip = gossip
	})

	err := client.Close(context.Background())

	if err == nil || !strings.Contains(err.Error(), "no members reachable") {
		t.Errorf("Close = %v, want the gossip Leave error", err)
	}
	if got := fmt.Sprint(gossip.calls); got != "[leave shutdown]" {
		t.Errorf("gossip calls = %s, want Shutdown after a failed Leave", got)
	}
	if got := len(central.received()); got != 1 {
		t.Errorf("central received %d reports, want the final one", got)
	}
}

func TestClientCloseDeadlineBeforeReportTime(t *testing.T) {
	central := newFakeCentral(t, nil)
	client := newTestClient(t, at(testSlot, 100), []string{central.url()}, nil)
	client.Consume(testService, "alice", map[string]float64{"traffic_up": 7})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := client.Close(ctx)

	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if got := len(central.received()); got != 0 {
		t.Errorf("central received %d reports, want 0", got)
	}
	if !strings.Contains(client.log.String(), "final report not sent") {
		t.Errorf("log does not mention the dropped final report:\n%s", client.log.String())
	}
}

func TestClientLoopReportsEverySecond(t *testing.T) {
	central := newFakeCentral(t, nil)
	client, err := NewClient(ClientOptions{NodeID: testNode, Centrals: []string{central.url()}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	if err := client.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := client.Start(); err == nil {
		t.Errorf("second Start = nil, want an error")
	}

	waitFor(t, "two reports from the loop", func() string {
		if n := len(central.received()); n < 2 {
			return fmt.Sprintf("%d reports", n)
		}
		return ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := client.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	received := central.received()
	for i, r := range received {
		if i > 0 && r.report.Slot != received[i-1].report.Slot+1 {
			t.Errorf("report %d has slot %d after %d, want consecutive slots", i, r.report.Slot, received[i-1].report.Slot)
		}
		if got := r.at.Unix(); got != r.report.Slot {
			t.Errorf("report of slot %d arrived in second %d, want the same second", r.report.Slot, got)
		}
	}
	if stats := client.Stats(); stats.ReportsSent != uint64(len(received)) {
		t.Errorf("Stats.ReportsSent = %d, want %d", stats.ReportsSent, len(received))
	}
}

func TestClientConcurrentUse(t *testing.T) {
	const (
		workers  = 8
		requests = 2000
	)
	central := newFakeCentral(t, func(report protocol.Report) map[string]protocol.Quotas {
		return map[string]protocol.Quotas{testService: {"user0": {"traffic_up": 1e9}, "user1": {"traffic_up": 0}}}
	})
	client, err := NewClient(ClientOptions{NodeID: testNode, Centrals: []string{central.url()}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	if err := client.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}

	var consumed atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range requests {
				user := fmt.Sprintf("user%d", (w+i)%4)
				if client.Throttle(testService, user) != nil {
					continue
				}
				client.Consume(testService, user, map[string]float64{"traffic_up": 1})
				consumed.Add(1)
				if i%100 == 0 {
					_ = client.Stats()
				}
			}
		})
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := client.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	var reported float64
	for _, r := range central.received() {
		for _, resources := range r.report.Consumption[testService] {
			reported += resources["traffic_up"]
		}
	}
	// A count added in the last moments of a second, after that second's
	// report was taken, is dropped, so the reports may hold a little less.
	if reported > float64(consumed.Load()) || reported == 0 {
		t.Errorf("reported consumption = %v, want more than 0 and at most the %d consumed", reported, consumed.Load())
	}
}

func TestNewClientRejectsInvalidOptions(t *testing.T) {
	valid := func() ClientOptions {
		return ClientOptions{NodeID: "edge-1", Centrals: []string{"http://127.0.0.1:8081"}}
	}
	tests := []struct {
		name   string
		adjust func(*ClientOptions)
		want   string
	}{
		{"empty node ID", func(o *ClientOptions) { o.NodeID = "" }, "node ID is empty"},
		{"node ID with slash", func(o *ClientOptions) { o.NodeID = "a/b" }, `node ID "a/b"`},
		{"no centrals", func(o *ClientOptions) { o.Centrals = nil }, "no central given"},
		{"scheme", func(o *ClientOptions) { o.Centrals = []string{"ftp://127.0.0.1:8081"} }, `"ftp://127.0.0.1:8081": the scheme must be http or https`},
		{"no scheme", func(o *ClientOptions) { o.Centrals = []string{"127.0.0.1:8081"} }, `write it as http://127.0.0.1:8081`},
		{"missing scheme", func(o *ClientOptions) { o.Centrals = []string{"127.0.0.1:8081"} }, `"127.0.0.1:8081"`},
		{"missing host", func(o *ClientOptions) { o.Centrals = []string{"http:///v1"} }, "the host is missing"},
		{"query", func(o *ClientOptions) { o.Centrals = []string{"http://127.0.0.1:8081?a=b"} }, "query or fragment"},
		{"user info", func(o *ClientOptions) { o.Centrals = []string{"http://user:secret@127.0.0.1:8081"} }, "user info is not supported"},
		{"second URL", func(o *ClientOptions) { o.Centrals = []string{"http://127.0.0.1:8081", "http//x"} }, `"http//x"`},
		{"report offset", func(o *ClientOptions) { o.ReportOffset = 600 * time.Millisecond }, "invalid ReportOffset 600ms"},
		{"negative report offset", func(o *ClientOptions) { o.ReportOffset = -time.Millisecond }, "invalid ReportOffset -1ms"},
		{"request timeout", func(o *ClientOptions) { o.RequestTimeout = -time.Second }, "invalid RequestTimeout -1s"},
		{"fallback", func(o *ClientOptions) { o.Throttler.DefaultFallback = FallbackPolicy(9) }, "invalid fallback policy"},
		{"token line break", func(o *ClientOptions) { o.BearerToken = "a\nb" }, "line break"},
		{"client and TLS", func(o *ClientOptions) {
			o.HTTPClient = &http.Client{}
			o.TLSConfig = &tls.Config{}
		}, "exclude each other"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			options := valid()
			tc.adjust(&options)
			_, err := NewClient(options)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewClient error = %v, want one containing %q", err, tc.want)
			}
		})
	}
	_, err := NewClient(ClientOptions{NodeID: "e", Centrals: []string{"http://user:secret@h:1"}})
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("NewClient error = %v, want one that hides the password", err)
	}
}
