package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/throttlecentral/throttle-central/internal/testutil"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// fixtureReports is the file of report frames recorded from the
// lua-resty-throttle client, one JSON object a line. It lies outside the
// repository, so tests that need it skip when it is absent.
const fixtureReports = "../../shared/fixtures/lua-resty-throttle/reports.jsonl"

// fixtureReportCount is the number of reports in fixtureReports.
const fixtureReportCount = 28

// staleLeaderID is a central that Raft still calls the leader but whose
// Reporter no longer assigns quotas.
const staleLeaderID = "central-3"

// fakeReporter is a Reporter that records every report. Report returns
// what answer returns, or, when answer is nil, the reply of the engine for
// users without limits: every service the report named, with no quotas.
type fakeReporter struct {
	mu      sync.Mutex
	reports []*protocol.Report
	answer  func(r *protocol.Report) (ReportReply, error)
}

var _ Reporter = (*fakeReporter)(nil)

func (f *fakeReporter) Report(r *protocol.Report) (ReportReply, error) {
	f.mu.Lock()
	f.reports = append(f.reports, r)
	answer := f.answer
	f.mu.Unlock()
	if answer == nil {
		return replyWith(r, nil), nil
	}
	return answer(r)
}

// received returns a copy of the reports the fake was given.
func (f *fakeReporter) received() []*protocol.Report {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reports)
}

// replyWith returns the reply the engine gives r: quotas for the slot
// after r's, for every service r named and no other. A service that
// quotas lacks gets an empty map.
func replyWith(r *protocol.Report, quotas map[string]protocol.Quotas) ReportReply {
	byService := make(map[string]protocol.Quotas)
	for _, service := range r.Services() {
		q := quotas[service]
		if q == nil {
			q = protocol.Quotas{}
		}
		byService[service] = q
	}
	return ReportReply{NodeSlot: r.Slot + 1, CentralSlot: r.Slot + 1, Quotas: byService}
}

// fakeMonitor is a Monitor that records every query and returns data for
// any known subject. Like the engine, it rejects an unknown subject with
// an error wrapping quota.ErrInvalid.
type fakeMonitor struct {
	data map[int64]any

	mu      sync.Mutex
	queries []quota.MonitorQuery
}

var _ Monitor = (*fakeMonitor)(nil)

func (m *fakeMonitor) Monitor(q quota.MonitorQuery) (map[int64]any, error) {
	m.mu.Lock()
	m.queries = append(m.queries, q)
	m.mu.Unlock()
	if !slices.Contains(quota.Subjects, q.Subject) {
		return nil, fmt.Errorf("%w: monitor subject %q is unknown; use one of %v", quota.ErrInvalid, q.Subject, quota.Subjects)
	}
	return m.data, nil
}

func (m *fakeMonitor) received() []quota.MonitorQuery {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.queries)
}

// newReportLeader builds a leader that hands reports to reporter and
// monitor queries to monitor. A nil fake leaves the Config field unset.
// configure, if not nil, changes the Config further before New.
func newReportLeader(t *testing.T, reporter *fakeReporter, monitor *fakeMonitor, configure func(*Config)) *testNode {
	t.Helper()
	return newTestNode(t, leaderID, true, func(cfg *Config) {
		if reporter != nil {
			cfg.Reports = reporter
		}
		if monitor != nil {
			cfg.Monitor = monitor
		}
		if configure != nil {
			configure(cfg)
		}
	})
}

// newStaleLeader builds a central that Raft calls the leader but whose
// Reporter returns an error matching raftnode.ErrNotLeader, as a central
// whose allocator has stopped. Its state names the pair's leader as the
// leader, at the pair's HTTP address.
func newStaleLeader(t *testing.T, pair *forwardingPair, reporter *fakeReporter) *testNode {
	t.Helper()
	reporter.answer = func(*protocol.Report) (ReportReply, error) {
		return ReportReply{}, fmt.Errorf("%w: this central assigns no quotas", raftnode.ErrNotLeader)
	}
	stale := newTestNode(t, staleLeaderID, true, func(cfg *Config) { cfg.Reports = reporter })
	stale.cluster.set(func(c *fakeCluster) { c.leaderID, c.leaderAddr = leaderID, leaderRaftAddr })
	stale.seed(t, fsm.SetServerCommand{ID: leaderID, HTTPAddr: pair.leaderAddr, RaftAddr: leaderRaftAddr})
	return stale
}

// metricValue returns the value of the counter or gauge name whose labels
// are exactly labels, or 0 when no such series exists yet.
func metricValue(t *testing.T, n *testNode, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := n.api.cfg.Registry.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	for _, family := range families {
		if family.GetName() != name {
			continue
		}
		for _, m := range family.GetMetric() {
			if !labelsEqual(m.GetLabel(), labels) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func labelsEqual(pairs []*dto.LabelPair, want map[string]string) bool {
	if len(pairs) != len(want) {
		return false
	}
	for _, pair := range pairs {
		if value, ok := want[pair.GetName()]; !ok || value != pair.GetValue() {
			return false
		}
	}
	return true
}

// reportCount returns throttle_reports_total for transport and outcome.
func reportCount(t *testing.T, n *testNode, transport, outcome string) float64 {
	t.Helper()
	return metricValue(t, n, "throttle_reports_total", map[string]string{"transport": transport, "outcome": outcome})
}

// wantReportCount fails the test unless throttle_reports_total for
// transport and outcome is want.
func wantReportCount(t *testing.T, n *testNode, transport, outcome string, want float64) {
	t.Helper()
	if got := reportCount(t, n, transport, outcome); got != want {
		t.Errorf("%s: throttle_reports_total{transport=%q,outcome=%q} is %v, want %v", n.api.cfg.NodeID, transport, outcome, got, want)
	}
}

// wantNoReports fails the test if reporter was given any report.
func wantNoReports(t *testing.T, reporter *fakeReporter) {
	t.Helper()
	if got := reporter.received(); len(got) != 0 {
		t.Errorf("Reporter received %d reports, want none; first: %+v", len(got), got[0])
	}
}

// readFixtureReports returns the lines of fixtureReports and skips the
// test when the file is absent.
func readFixtureReports(t *testing.T) [][]byte {
	return testutil.ReadLines(t, fixtureReports)
}

// reportWithCount returns a report whose only count is
// consumption.front.alice.traffic_up, written as count.
func reportWithCount(count string) string {
	return `{"node_id": "edge-1", "slot_number": 1796411856,` +
		`"consumption": {"front": {"alice": {"traffic_up": ` + count + `}}}, "rejection": {"front": {}}}`
}

// invalidReport is a report DecodeReport must reject, and a part of the
// message that names the field at fault.
type invalidReport struct {
	name string
	body string
	want string
}

const countField = "consumption.front.alice.traffic_up"

var invalidReports = []invalidReport{
	{"empty body", "", "empty"},
	{"blank body", " \n\t ", "empty"},
	{"not an object", `[1, 2]`, "request body"},
	{"truncated", `{"node_id": "edge-1", "slot_number": 17964`, "ends in the middle"},
	{"data after the object", reportWithCount("1") + `{}`, "after the JSON object"},
	{"missing node_id", `{"slot_number": 1796411856, "consumption": {}, "rejection": {}}`, "node_id"},
	{"empty node_id", `{"node_id": "", "slot_number": 1796411856, "consumption": {}, "rejection": {}}`, "node_id"},
	{"node_id is a number", `{"node_id": 7, "slot_number": 1796411856, "consumption": {}, "rejection": {}}`, "node_id"},
	{"missing slot_number", `{"node_id": "edge-1", "consumption": {}, "rejection": {}}`, "slot_number"},
	{"slot_number 1.5", `{"node_id": "edge-1", "slot_number": 1.5, "consumption": {}, "rejection": {}}`, "slot_number"},
	{"slot_number fraction in exponent form", `{"node_id": "edge-1", "slot_number": 1.7964118565e+09, "consumption": {}, "rejection": {}}`, "slot_number"},
	{"slot_number is a string", `{"node_id": "edge-1", "slot_number": "1796411856", "consumption": {}, "rejection": {}}`, "slot_number"},
	{"slot_number is null", `{"node_id": "edge-1", "slot_number": null, "consumption": {}, "rejection": {}}`, "slot_number"},
	{"slot_number zero", `{"node_id": "edge-1", "slot_number": 0, "consumption": {}, "rejection": {}}`, "slot_number"},
	{"slot_number negative", `{"node_id": "edge-1", "slot_number": -1796411856, "consumption": {}, "rejection": {}}`, "slot_number"},
	{"negative count", reportWithCount("-1"), countField},
	{"negative count in exponent form", reportWithCount("-1.5e+3"), countField},
	{"count above 2^53", reportWithCount("9007199254740994"), countField},
	{"count far above 2^53", reportWithCount("1e300"), countField},
	{"count overflows float64", reportWithCount("1e999"), countField},
	{"count is a numeric string", reportWithCount(`"12"`), countField},
	{"count is text", reportWithCount(`"many"`), countField},
	{"count is NaN string", reportWithCount(`"NaN"`), countField},
	{"count is nan string", reportWithCount(`"nan"`), countField},
	{"count is Infinity string", reportWithCount(`"Infinity"`), countField},
	{"count is -inf string", reportWithCount(`"-inf"`), countField},
	{"count is a boolean", reportWithCount("true"), countField},
	{"count is an object", reportWithCount(`{}`), countField},
	{"count is null", reportWithCount("null"), countField},
	{"count is a bare NaN token", reportWithCount("NaN"), "not valid JSON"},
	{"negative rejection count", `{"node_id": "edge-1", "slot_number": 1796411856, "consumption": {"front": {}},` +
		`"rejection": {"front": {"bob": {"traffic_up": -3}}}}`, "rejection.front.bob.traffic_up"},
	{"user is not an object", `{"node_id": "edge-1", "slot_number": 1796411856, "consumption": {"front": {"alice": 5}}, "rejection": {}}`, "consumption"},
	{"user name with a slash", `{"node_id": "edge-1", "slot_number": 1796411856,` +
		`"consumption": {"front": {"a/b": {"traffic_up": 1}}}, "rejection": {}}`, "consumption.front"},
	{"unknown top-level field", `{"node_id": "edge-1", "slot_number": 1796411856, "consumption": {}, "rejection": {}, "extra": 1}`, `unknown field "extra"`},
	{"version 3", `{"version": 3, "node_id": "edge-1", "slot_number": 1796411856, "consumption": {}, "rejection": {}}`, "version"},
	{"version 1", `{"version": 1, "node_id": "edge-1", "slot_number": 1796411856, "consumption": {}, "rejection": {}}`, "version"},
	{"version is a string", `{"version": "2", "node_id": "edge-1", "slot_number": 1796411856, "consumption": {}, "rejection": {}}`, "version"},
}

func TestDecodeReportLuaFixtures(t *testing.T) {
	lines := readFixtureReports(t)
	if len(lines) != fixtureReportCount {
		t.Errorf("%s has %d reports, want %d", fixtureReports, len(lines), fixtureReportCount)
	}
	for i, line := range lines {
		r, err := DecodeReport(line)
		if err != nil {
			t.Errorf("line %d: DecodeReport: %v", i+1, err)
			continue
		}

		// Decode the line again with UseNumber and compare every field, so
		// no count is lost or rounded.
		var raw struct {
			NodeID      string                                       `json:"node_id"`
			Slot        json.Number                                  `json:"slot_number"`
			Consumption map[string]map[string]map[string]json.Number `json:"consumption"`
			Rejection   map[string]map[string]map[string]json.Number `json:"rejection"`
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.UseNumber()
		if err := dec.Decode(&raw); err != nil {
			t.Fatalf("line %d: decoding with UseNumber: %v", i+1, err)
		}
		if r.NodeID != raw.NodeID {
			t.Errorf("line %d: node_id is %q, want %q", i+1, r.NodeID, raw.NodeID)
		}
		if got := fmt.Sprint(r.Slot); got != raw.Slot.String() {
			t.Errorf("line %d: slot_number is %s, want %s", i+1, got, raw.Slot)
		}
		if r.Version != 0 {
			t.Errorf("line %d: version is %d, want 0", i+1, r.Version)
		}
		wantCountsEqual(t, fmt.Sprintf("line %d: consumption", i+1), r.Consumption, raw.Consumption)
		wantCountsEqual(t, fmt.Sprintf("line %d: rejection", i+1), r.Rejection, raw.Rejection)
	}
}

// wantCountsEqual fails the test unless got holds exactly the services,
// users, resources and values of want.
func wantCountsEqual(t *testing.T, what string, got protocol.Counts, want map[string]map[string]map[string]json.Number) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s has %d services, want %d", what, len(got), len(want))
	}
	for service, users := range want {
		if _, ok := got[service]; !ok {
			t.Errorf("%s lacks service %q", what, service)
			continue
		}
		if len(got[service]) != len(users) {
			t.Errorf("%s.%s has %d users, want %d", what, service, len(got[service]), len(users))
		}
		for user, resources := range users {
			if len(got[service][user]) != len(resources) {
				t.Errorf("%s.%s.%s has %d resources, want %d", what, service, user, len(got[service][user]), len(resources))
			}
			for resource, number := range resources {
				want, err := number.Float64()
				if err != nil {
					t.Fatalf("%s.%s.%s.%s: %v", what, service, user, resource, err)
				}
				if value, ok := got[service][user][resource]; !ok || value != want {
					t.Errorf("%s.%s.%s.%s is %v (present %v), want %v", what, service, user, resource, value, ok, want)
				}
			}
		}
	}
}

func TestDecodeReportExponentCount(t *testing.T) {
	// The Lua client writes counts with 14 significant digits, so large
	// counts arrive in exponent form and must decode to the exact integer.
	cases := []struct {
		name string
		body string
	}{
		{"integer slot", reportWithCount("1.2345678901234e+14")},
		{"slot in exponent form", `{"node_id": "edge-1", "slot_number": 1.796411856e+09,` +
			`"consumption": {"front": {"alice": {"traffic_up": 1.2345678901234e+14}}}, "rejection": {"front": {}}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := DecodeReport([]byte(tc.body))
			if err != nil {
				t.Fatalf("DecodeReport: %v", err)
			}
			if got := r.Consumption["front"]["alice"]["traffic_up"]; got != 123456789012340 {
				t.Errorf("consumption.front.alice.traffic_up is %v, want 123456789012340", got)
			}
			if r.Slot != 1796411856 {
				t.Errorf("slot_number is %d, want 1796411856", r.Slot)
			}
		})
	}
}

func TestDecodeReportSlotInExponentForm(t *testing.T) {
	for _, slot := range []string{"1.796411856e+09", "1.796411856E9", "17964118.56e2", "1796411856.0"} {
		t.Run(slot, func(t *testing.T) {
			body := `{"node_id": "edge-1", "slot_number": ` + slot + `, "consumption": {"front": {}}, "rejection": {"front": {}}}`
			r, err := DecodeReport([]byte(body))
			if err != nil {
				t.Fatalf("DecodeReport: %v", err)
			}
			if r.Slot != 1796411856 {
				t.Errorf("slot_number is %d, want 1796411856", r.Slot)
			}
		})
	}
}

func TestDecodeReportVersion2(t *testing.T) {
	body := `{"version": 2, "node_id": "edge-1", "slot_number": 1796411856, "consumption": {}, "rejection": {}}`
	r, err := DecodeReport([]byte(body))
	if err != nil {
		t.Fatalf("DecodeReport: %v", err)
	}
	if r.Version != ReportVersion2 {
		t.Errorf("version is %d, want %d", r.Version, ReportVersion2)
	}
}

func TestDecodeReportInvalid(t *testing.T) {
	for _, tc := range invalidReports {
		t.Run(tc.name, func(t *testing.T) {
			r, err := DecodeReport([]byte(tc.body))
			if err == nil {
				t.Fatalf("DecodeReport returned no error and %+v", r)
			}
			if !errors.Is(err, quota.ErrInvalid) {
				t.Errorf("error %q does not wrap quota.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if r != nil {
				t.Errorf("DecodeReport returned %+v with the error, want nil", r)
			}
		})
	}
}

func TestReportReplyLuaShape(t *testing.T) {
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		return replyWith(r, map[string]protocol.Quotas{
			"front": {"alice": {"traffic_up": 1048576, "database_read": 51200.5}, "bob": {"traffic_up": 0}},
		}), nil
	}}
	node := newReportLeader(t, reporter, nil, nil)

	rec := node.do(t, http.MethodPost, "/v1/report", `{"node_id": "edge-1", "slot_number": 1796411856,`+
		`"consumption": {"front": {"alice": {"traffic_up": 11534593, "database_read": 3}}},`+
		`"rejection": {"front": {"bob": {"traffic_up": 10}}}}`)

	wantStatus(t, rec, http.StatusOK)
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type is %q, want application/json", ct)
	}
	want := `{"front":{"1796411857":{"alice":{"database_read":51200.5,"traffic_up":1048576},"bob":{"traffic_up":0}}}}`
	if got := rec.Body.String(); got != want {
		t.Errorf("reply is\n%s\nwant\n%s", got, want)
	}
	reports := reporter.received()
	if len(reports) != 1 {
		t.Fatalf("Reporter received %d reports, want 1", len(reports))
	}
	r := reports[0]
	if r.NodeID != "edge-1" || r.Slot != 1796411856 || r.Version != 0 {
		t.Errorf("Reporter received node %q, slot %d, version %d; want edge-1, 1796411856, 0", r.NodeID, r.Slot, r.Version)
	}
	if got := r.Consumption["front"]["alice"]["traffic_up"]; got != 11534593 {
		t.Errorf("Reporter received consumption.front.alice.traffic_up %v, want 11534593", got)
	}
	if got := r.Rejection["front"]["bob"]["traffic_up"]; got != 10 {
		t.Errorf("Reporter received rejection.front.bob.traffic_up %v, want 10", got)
	}
}

func TestReportReplyServicesWithoutQuotas(t *testing.T) {
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, nil)

	// video appears only in rejection; the reply names it all the same.
	rec := node.do(t, http.MethodPost, "/v1/report", `{"node_id": "edge-1", "slot_number": 1796411856,`+
		`"consumption": {"front": {}}, "rejection": {"front": {}, "video": {"carol": {"requests": 1}}}}`)

	wantStatus(t, rec, http.StatusOK)
	want := `{"front":{"1796411857":{}},"video":{"1796411857":{}}}`
	if got := rec.Body.String(); got != want {
		t.Errorf("reply is %s, want %s", got, want)
	}
}

func TestReportDurationRecordedForHTTP(t *testing.T) {
	node := newReportLeader(t, &fakeReporter{}, nil, nil)

	rec := node.do(t, http.MethodPost, "/v1/report", `{"node_id": "edge-1", "slot_number": 1796411856, "consumption": {}, "rejection": {}}`)

	wantStatus(t, rec, http.StatusOK)
	if got := metricValue(t, node, "throttle_report_duration_seconds", map[string]string{"transport": "http"}); got != 1 {
		t.Errorf("throttle_report_duration_seconds{transport=\"http\"} has %v samples, want 1", got)
	}
}

func TestReportVersion2ExtendedReply(t *testing.T) {
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		reply := replyWith(r, map[string]protocol.Quotas{"front": {"alice": {"traffic_up": 2048}}})
		reply.CentralSlot = r.Slot + 3
		reply.Offset = 2
		reply.Duplicate = true
		reply.Shares = map[string]protocol.Shares{"front": {"alice": {"traffic_up": 512}}}
		return reply, nil
	}}
	node := newReportLeader(t, reporter, nil, nil)

	rec := node.do(t, http.MethodPost, "/v1/report", `{"version": 2, "node_id": "edge-1", "slot_number": 1796411856,`+
		`"consumption": {"front": {"alice": {"traffic_up": 1}}}, "rejection": {"front": {}}}`)

	wantStatus(t, rec, http.StatusOK)
	var reply struct {
		Version     int                                   `json:"version"`
		Slot        int64                                 `json:"slot"`
		CentralSlot int64                                 `json:"central_slot"`
		Offset      int64                                 `json:"offset"`
		Leader      string                                `json:"leader"`
		Duplicate   bool                                  `json:"duplicate"`
		Quotas      map[string]map[string]protocol.Quotas `json:"quotas"`
		Shares      map[string]protocol.Shares            `json:"shares"`
	}
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&reply); err != nil {
		t.Fatalf("version 2 reply %s: %v", rec.Body.String(), err)
	}
	if reply.Version != ReportVersion2 {
		t.Errorf("version is %d, want %d", reply.Version, ReportVersion2)
	}
	if reply.Slot != 1796411857 {
		t.Errorf("slot is %d, want 1796411857", reply.Slot)
	}
	if reply.CentralSlot != 1796411859 {
		t.Errorf("central_slot is %d, want 1796411859", reply.CentralSlot)
	}
	if reply.Offset != 2 {
		t.Errorf("offset is %d, want 2", reply.Offset)
	}
	if reply.Leader != leaderID {
		t.Errorf("leader is %q, want %q", reply.Leader, leaderID)
	}
	if !reply.Duplicate {
		t.Error("duplicate is false, want true")
	}
	if got := reply.Quotas["front"]["1796411857"]["alice"]["traffic_up"]; got != 2048 {
		t.Errorf("quotas.front.1796411857.alice.traffic_up is %v, want 2048; reply: %s", got, rec.Body.String())
	}
	if len(reply.Quotas) != 1 || len(reply.Quotas["front"]) != 1 {
		t.Errorf("quotas has keys other than front/1796411857: %s", rec.Body.String())
	}
	if got := reply.Shares["front"]["alice"]["traffic_up"]; got != 512 {
		t.Errorf("shares.front.alice.traffic_up is %v, want 512; reply: %s", got, rec.Body.String())
	}
	if reports := reporter.received(); len(reports) != 1 || reports[0].Version != ReportVersion2 {
		t.Errorf("Reporter received %+v, want one version 2 report", reports)
	}
}

func TestReportInvalidChangesNothing(t *testing.T) {
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, nil)

	for _, tc := range invalidReports {
		t.Run(tc.name, func(t *testing.T) {
			rec := node.do(t, http.MethodPost, "/v1/report", tc.body)

			body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
			wantMessageContains(t, body, tc.want)
		})
	}
	wantNoReports(t, reporter)
	wantReportCount(t, node, "http", "invalid", float64(len(invalidReports)))
	wantReportCount(t, node, "http", "ok", 0)
}

// lengthHidingReader hides the length of its reader from http.NewRequest,
// so the client sends the body chunked, without a Content-Length.
type lengthHidingReader struct{ io.Reader }

// requestShape records how the last request's body was framed.
type requestShape struct {
	mu               sync.Mutex
	contentLength    int64
	transferEncoding []string
}

func (s *requestShape) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.contentLength, s.transferEncoding = r.ContentLength, slices.Clone(r.TransferEncoding)
		s.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (s *requestShape) last() (int64, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.contentLength, s.transferEncoding
}

func TestReportBodyTooLarge(t *testing.T) {
	const bodyLimit = 1024
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, func(cfg *Config) { cfg.BodyLimit = bodyLimit })
	shape := &requestShape{}
	server := httptest.NewServer(shape.wrap(node.api.Handler()))
	t.Cleanup(server.Close)

	// A valid report padded with spaces, which JSON allows between tokens.
	report := reportWithCount("1")
	oversized := report + strings.Repeat(" ", 2*bodyLimit-len(report))
	post := func(t *testing.T, body io.Reader) (int, errorResponse) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, server.URL+"/v1/report", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := server.Client().Do(req)
		if err != nil {
			t.Fatalf("POST /v1/report: %v", err)
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("reading the response: %v", err)
		}
		var decoded errorResponse
		if resp.StatusCode != http.StatusOK {
			if err := json.Unmarshal(data, &decoded); err != nil {
				t.Fatalf("error body %s: %v", data, err)
			}
		}
		return resp.StatusCode, decoded
	}

	t.Run("with Content-Length", func(t *testing.T) {
		status, body := post(t, strings.NewReader(oversized))

		if status != http.StatusRequestEntityTooLarge {
			t.Errorf("status is %d, want 413", status)
		}
		if body.Error.Code != CodeTooLarge {
			t.Errorf("error code is %q, want %q", body.Error.Code, CodeTooLarge)
		}
		if length, _ := shape.last(); length != int64(len(oversized)) {
			t.Errorf("server saw Content-Length %d, want %d", length, len(oversized))
		}
	})
	t.Run("chunked", func(t *testing.T) {
		before := reportCount(t, node, "http", "too_large")

		status, body := post(t, lengthHidingReader{strings.NewReader(oversized)})

		if status != http.StatusRequestEntityTooLarge {
			t.Errorf("status is %d, want 413", status)
		}
		if body.Error.Code != CodeTooLarge {
			t.Errorf("error code is %q, want %q", body.Error.Code, CodeTooLarge)
		}
		length, encoding := shape.last()
		if length != -1 || !slices.Equal(encoding, []string{"chunked"}) {
			t.Errorf("server saw Content-Length %d and Transfer-Encoding %v, want -1 and [chunked]", length, encoding)
		}
		if got := reportCount(t, node, "http", "too_large"); got != before+1 {
			t.Errorf("throttle_reports_total{http,too_large} went from %v to %v, want one more", before, got)
		}
	})
	wantNoReports(t, reporter)

	t.Run("chunked within the limit", func(t *testing.T) {
		status, _ := post(t, lengthHidingReader{strings.NewReader(report)})

		if status != http.StatusOK {
			t.Errorf("status is %d, want 200", status)
		}
		if got := len(reporter.received()); got != 1 {
			t.Errorf("Reporter received %d reports, want 1", got)
		}
	})
}

func TestReportFollowerForwards(t *testing.T) {
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		return replyWith(r, map[string]protocol.Quotas{"front": {"alice": {"traffic_up": 512}}}), nil
	}}
	pair := newForwardingPairWith(t, func(cfg *Config) { cfg.Reports = reporter })

	rec := pair.follower.do(t, http.MethodPost, "/v1/report", reportWithCount("7"))

	wantStatus(t, rec, http.StatusOK)
	exchange := pair.onlyExchange(t)
	wantRelayed(t, rec, exchange)
	if exchange.Method != http.MethodPost || exchange.RequestURI != "/v1/report" {
		t.Errorf("leader received %s %s, want POST /v1/report", exchange.Method, exchange.RequestURI)
	}
	if exchange.ForwardedBy != followerID {
		t.Errorf("%s header at the leader is %q, want %q", forwardedHeader, exchange.ForwardedBy, followerID)
	}
	if want := `{"front":{"1796411857":{"alice":{"traffic_up":512}}}}`; rec.Body.String() != want {
		t.Errorf("reply is %s, want %s", rec.Body.String(), want)
	}
	if got := len(reporter.received()); got != 1 {
		t.Errorf("leader's Reporter received %d reports, want 1", got)
	}
	wantReportCount(t, pair.follower, "http", "forwarded", 1)
	wantReportCount(t, pair.leader, "http", "ok", 1)
}

func TestReportFollowerRelaysLeaderRejection(t *testing.T) {
	reporter := &fakeReporter{}
	pair := newForwardingPairWith(t, func(cfg *Config) { cfg.Reports = reporter })

	rec := pair.follower.do(t, http.MethodPost, "/v1/report", reportWithCount("-1"))

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, countField)
	wantRelayed(t, rec, pair.onlyExchange(t))
	wantNoReports(t, reporter)
	wantReportCount(t, pair.leader, "http", "invalid", 1)
}

func TestReportNotLeaderErrorForwards(t *testing.T) {
	leaderReporter := &fakeReporter{}
	pair := newForwardingPairWith(t, func(cfg *Config) { cfg.Reports = leaderReporter })
	staleReporter := &fakeReporter{}
	stale := newStaleLeader(t, pair, staleReporter)

	rec := stale.do(t, http.MethodPost, "/v1/report", reportWithCount("7"))

	wantStatus(t, rec, http.StatusOK)
	exchange := pair.onlyExchange(t)
	wantRelayed(t, rec, exchange)
	if exchange.ForwardedBy != staleLeaderID {
		t.Errorf("%s header at the leader is %q, want %q", forwardedHeader, exchange.ForwardedBy, staleLeaderID)
	}
	if got := len(staleReporter.received()); got != 1 {
		t.Errorf("stale leader's Reporter received %d reports, want 1", got)
	}
	if got := len(leaderReporter.received()); got != 1 {
		t.Errorf("leader's Reporter received %d reports, want 1", got)
	}
	wantReportCount(t, stale, "http", "forwarded", 1)
}

func TestReportMetricsByOutcome(t *testing.T) {
	const (
		duplicateSlot = 1796411857
		failingSlot   = 1796411858
	)
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		reply := replyWith(r, nil)
		switch r.Slot {
		case duplicateSlot:
			reply.Duplicate = true
		case failingSlot:
			return ReportReply{}, errors.New("engine failed")
		}
		return reply, nil
	}}
	node := newReportLeader(t, reporter, nil, nil)
	report := func(slot int64) string {
		return fmt.Sprintf(`{"node_id": "edge-1", "slot_number": %d, "consumption": {"front": {}}, "rejection": {"front": {}}}`, slot)
	}

	wantStatus(t, node.do(t, http.MethodPost, "/v1/report", report(1796411856)), http.StatusOK)
	wantStatus(t, node.do(t, http.MethodPost, "/v1/report", report(duplicateSlot)), http.StatusOK)
	wantError(t, node.do(t, http.MethodPost, "/v1/report", report(failingSlot)), http.StatusInternalServerError, CodeInternal)
	wantError(t, node.do(t, http.MethodPost, "/v1/report", reportWithCount("-1")), http.StatusBadRequest, CodeInvalid)

	for _, outcome := range []string{"ok", "duplicate", "error", "invalid"} {
		wantReportCount(t, node, "http", outcome, 1)
		wantReportCount(t, node, "websocket", outcome, 0)
	}
	wantReportCount(t, node, "http", "forwarded", 0)
}

func TestReportWorkersBoundConcurrency(t *testing.T) {
	const workers, reports = 2, 6
	var (
		mu                  sync.Mutex
		running, maxRunning int
		gate                = make(chan struct{})
	)
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		mu.Lock()
		running++
		maxRunning = max(maxRunning, running)
		mu.Unlock()
		<-gate
		mu.Lock()
		running--
		mu.Unlock()
		return replyWith(r, nil), nil
	}}
	node := newReportLeader(t, reporter, nil, func(cfg *Config) { cfg.ReportWorkers = workers })

	codes := make(chan int, reports)
	for i := range reports {
		go func() {
			body := fmt.Sprintf(`{"node_id": "edge-%d", "slot_number": %d, "consumption": {}, "rejection": {}}`, i, testSlot)
			codes <- node.do(t, http.MethodPost, "/v1/report", body).Code
		}()
	}
	testutil.PollUntil(t, 10*time.Second, "two reports being applied", func() string {
		mu.Lock()
		defer mu.Unlock()
		if running < workers {
			return fmt.Sprintf("%d running", running)
		}
		return ""
	})
	for range reports {
		gate <- struct{}{}
	}
	for range reports {
		if code := <-codes; code != http.StatusOK {
			t.Errorf("report answered %d, want 200", code)
		}
	}
	if maxRunning != workers {
		t.Errorf("at most %d reports were applied at once, want %d (ReportWorkers)", maxRunning, workers)
	}
	if got := len(reporter.received()); got != reports {
		t.Errorf("%d reports reached the reporter, want all %d", got, reports)
	}
}

func TestSlowReaderHoldsNoReportWorker(t *testing.T) {
	// A reply of 16 MB fills the socket buffers of a client that does not
	// read it, so its write blocks.
	big := []byte(`{"alice":{"traffic_up":1,"padding":"` + strings.Repeat("x", 16<<20) + `"}}`)
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		reply := replyWith(r, nil)
		if r.NodeID == "edge-slow" {
			reply.Quotas, reply.Encoded = nil, map[string][]byte{"front": big}
		}
		return reply, nil
	}}
	node := newReportLeader(t, reporter, nil, func(cfg *Config) { cfg.ReportWorkers = 1 })
	server := serveNode(t, node)
	addr := server.Listener.Addr().String()

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	body := fmt.Sprintf(`{"node_id": "edge-slow", "slot_number": %d, "consumption": {"front": {}}, "rejection": {}}`, testSlot)
	fmt.Fprintf(slow, "POST /v1/report HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", addr, len(body), body)
	testutil.PollUntil(t, 10*time.Second, "the slow client's report to reach the reporter", func() string {
		if len(reporter.received()) == 0 {
			return "no report yet"
		}
		return ""
	})

	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post("http://"+addr+"/v1/report", "application/json",
		strings.NewReader(fmt.Sprintf(`{"node_id": "edge-1", "slot_number": %d, "consumption": {}, "rejection": {}}`, testSlot)))
	if err != nil {
		t.Fatalf("a report behind a client that does not read its reply: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a report behind a client that does not read its reply: status %d, want 200", resp.StatusCode)
	}
}
