package api

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/throttlecentral/throttle-central/quota"
)

// parseSeeds are reports in the forms the Lua client and the Go edge send,
// and some that the fast parser must hand to encoding/json.
var parseSeeds = []string{
	`{"node_id":"a","slot_number":1796411856,"consumption":{"front":{}},"rejection":{"front":{}}}`,
	`{"consumption":{"front":{"u":{"traffic_up":1.2345678901234e+14,"database_read":3}}},"rejection":{"front":{"u":{"traffic_up":2}}},"node_id":"n","slot_number":10}`,
	` { "version" : 2 , "node_id" : "n" , "slot_number" : 5 , "consumption" : { } } `,
	`{"node_id":"n","slot_number":5,"consumption":{"s":{"u":{"r":-0}}}}`,
	`{"node_id":"n","slot_number":5,"consumption":{"s":{"u":{"r":1e400}}}}`,
	`{"node_id":"n\u00e9","slot_number":5}`,
	`{"NODE_ID":"n","slot_number":5}`,
	`{"node_id":"n","slot_number":5.0}`,
	`{"node_id":"n","slot_number":5,"consumption":{"s":{"u":{"r":null}}}}`,
	`{"node_id":"n","slot_number":5,"consumption":{"s":{"u":{"r":01}}}}`,
	`{"node_id":"n","slot_number":5,"consumption":{"s":{"u":{"r":+1}}}}`,
	`{"node_id":"n","slot_number":5,"node_id":"m"}`,
	`{"node_id":"n","slot_number":5} x`,
	`{"node_id":"n","slot_number":5,"consumption":{"s":{"u":{"r":1,}}}}`,
	`{"node_id":"n","slot_number":0000000000000001}`,
	`{"node_id":"n","slot_number":+5}`,
	`{"node_id":"n","slot_number":5,"consumption":{"a":{}},"consumption":{"b":{}}}`,
}

// checkParseAgrees fails when the fast parser accepts data and its result
// differs from encoding/json's, or encoding/json rejects a report that the
// fast parser accepted and that validates.
func checkParseAgrees(t *testing.T, data []byte) {
	t.Helper()
	fast, ok := parseReport(data)
	if !ok {
		return
	}
	if quota.ValidateReport(fast) != nil {
		return
	}
	slow, err := decodeReportChecked(data)
	if err != nil {
		t.Fatalf("fast parser accepted %q, encoding/json rejects it: %v", data, err)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("fast parser and encoding/json disagree on %q:\nfast %+v\nslow %+v", data, fast, slow)
	}
}

func TestParseReportAgreesWithEncodingJSON(t *testing.T) {
	for _, seed := range parseSeeds {
		checkParseAgrees(t, []byte(seed))
	}
	checkParseAgrees(t, benchReportBody(200, 1_800_000_000))
	if f, err := os.Open("../../shared/fixtures/lua-resty-throttle/reports.jsonl"); err == nil {
		defer f.Close()
		scanner := bufio.NewScanner(f)
		for scanner.Scan() {
			line := append([]byte(nil), scanner.Bytes()...)
			if _, ok := parseReport(line); !ok {
				t.Errorf("fast parser does not take the Lua client's report %s", line)
			}
			checkParseAgrees(t, line)
		}
	}
}

func TestParseReportFallsBack(t *testing.T) {
	for _, seed := range parseSeeds[5:] {
		if seed == parseSeeds[11] {
			continue // a repeated key is valid JSON; both decoders keep the last
		}
		if _, ok := parseReport([]byte(seed)); ok {
			t.Errorf("fast parser accepted %s, which encoding/json must decode or reject", seed)
		}
	}
}

func isInvalid(err error) bool {
	return errors.Is(err, quota.ErrInvalid)
}

// The fuzzer found that the fast parser read a slot with leading zeros,
// which is not valid JSON, while encoding/json rejects it.
func TestParseReportSlotLeadingZeros(t *testing.T) {
	for _, body := range []string{
		`{"node_id":"0","slot_number":0000000000000001}`,
		`{"node_id":"n","slot_number":+5}`,
		`{"node_id":"n","slot_number":5,"version":02}`,
	} {
		if _, ok := parseReport([]byte(body)); ok {
			t.Errorf("fast parser accepted %s, which is not valid JSON", body)
		}
		if _, err := DecodeReport([]byte(body)); !isInvalid(err) {
			t.Errorf("DecodeReport(%s) returned %v, want an invalid-input error", body, err)
		}
	}
}

// A stray closing bracket after a report that the fast parser hands to
// encoding/json used to pass, because json.Decoder.More reports false
// before '}' and ']'.
func TestDecodeReportStrayBracketRejected(t *testing.T) {
	for _, body := range []string{
		`{"node_id":"edge\u002d1","slot_number":5}}`,
		`{"node_id":"edge\u002d1","slot_number":5}]`,
	} {
		_, err := DecodeReport([]byte(body))
		if !isInvalid(err) {
			t.Fatalf("DecodeReport(%s) returned %v, want an invalid-input error", body, err)
		}
		if !strings.Contains(err.Error(), "data after the JSON object") {
			t.Errorf("DecodeReport(%s) error %q does not say that data follows the object", body, err)
		}
	}
}

// encoding/json merges a repeated object key into the map it decoded
// before; the fast parser used to keep only the last one.
func TestParseReportRepeatedCountsKey(t *testing.T) {
	body := []byte(`{"node_id":"n","slot_number":5,"consumption":{"a":{"u":{"r":1}}},"consumption":{"b":{"u":{"r":2}}},` +
		`"rejection":{"a":{}},"rejection":{"c":{}}}`)

	if _, ok := parseReport(body); ok {
		t.Errorf("fast parser accepted a repeated consumption key; it must leave it to encoding/json")
	}
	r, err := DecodeReport(body)
	if err != nil {
		t.Fatalf("DecodeReport: %v", err)
	}
	if got := len(r.Consumption); got != 2 {
		t.Errorf("consumption has %d services, want 2 (a and b): %v", got, r.Consumption)
	}
	if got := len(r.Rejection); got != 2 {
		t.Errorf("rejection has %d services, want 2 (a and c): %v", got, r.Rejection)
	}
}

// sizedReport returns a report with one map, consumption or rejection as
// field names it, of services services. Its first service has users users
// and the first user has resources resources; every other service and user
// has one. escaped writes the node ID with a JSON escape, so the fast
// parser hands the report to encoding/json.
func sizedReport(field string, services, users, resources int, escaped bool) []byte {
	var b bytes.Buffer
	nodeID := "edge-1"
	if escaped {
		nodeID = `edge\u002d1`
	}
	fmt.Fprintf(&b, `{"node_id":"%s","slot_number":1796411856,"%s":{`, nodeID, field)
	for s := range services {
		if s > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"s%d":{`, s)
		userCount := 1
		if s == 0 {
			userCount = users
		}
		for u := range userCount {
			if u > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"u%d":{`, u)
			resourceCount := 1
			if s == 0 && u == 0 {
				resourceCount = resources
			}
			for r := range resourceCount {
				if r > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `"r%d":1`, r)
			}
			b.WriteByte('}')
		}
		b.WriteByte('}')
	}
	b.WriteString("}}")
	return b.Bytes()
}

// reportLimit is one entry limit of reports: report builds a report with
// count entries where the limit applies, and want is the message part that
// names the count and the limit.
type reportLimit struct {
	limit  int
	reason string
	report func(field string, count int, escaped bool) []byte
	want   func(field string, count int) string
}

// checkReportLimit checks that DecodeReport accepts a report at the limit
// and rejects one over it. It checks consumption and rejection through the
// fast parser, and consumption through encoding/json too. Then it checks
// that POST /v1/report rejects the report over the limit with 400, applies
// nothing and counts the reason.
func checkReportLimit(t *testing.T, rl reportLimit) {
	t.Helper()
	for _, tc := range []struct {
		field   string
		escaped bool
	}{{"consumption", false}, {"consumption", true}, {"rejection", false}} {
		field, escaped := tc.field, tc.escaped
		at := rl.report(field, rl.limit, escaped)
		over := rl.report(field, rl.limit+1, escaped)
		if !escaped {
			if _, ok := parseReport(at); !ok {
				t.Errorf("%s: fast parser does not take a report at the limit of %d", field, rl.limit)
			}
			if _, ok := parseReport(over); ok {
				t.Errorf("%s: fast parser accepted a report over the limit of %d", field, rl.limit)
			}
		}
		if _, err := DecodeReport(at); err != nil {
			t.Errorf("%s, escaped %v: DecodeReport of a report at the limit of %d: %v", field, escaped, rl.limit, err)
		}
		_, err := DecodeReport(over)
		if !isInvalid(err) {
			t.Fatalf("%s, escaped %v: DecodeReport of a report over the limit returned %v, want an invalid-input error", field, escaped, err)
		}
		if want := rl.want(field, rl.limit+1); !strings.Contains(err.Error(), want) {
			t.Errorf("%s, escaped %v: error %q does not contain %q", field, escaped, err, want)
		}
		if got := rejectedInputReason(err); got != rl.reason {
			t.Errorf("%s, escaped %v: error %q has the reason %q, want %q", field, escaped, err, got, rl.reason)
		}
	}

	reporter := &fakeReporter{}
	at := rl.report("consumption", rl.limit, false)
	over := rl.report("consumption", rl.limit+1, false)
	bodyLimit := int64(2 * len(over))
	node := newReportLeader(t, reporter, nil, func(cfg *Config) { cfg.BodyLimit = bodyLimit })

	wantStatus(t, node.do(t, http.MethodPost, "/v1/report", string(at)), http.StatusOK)
	rec := node.do(t, http.MethodPost, "/v1/report", string(over))

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, rl.want("consumption", rl.limit+1))
	if got := len(reporter.received()); got != 1 {
		t.Errorf("Reporter received %d reports, want only the one at the limit", got)
	}
	wantRejectedInput(t, node, rl.reason, 1)
	wantReportCount(t, node, "http", "invalid", 1)
}

// wantRejectedInput fails the test unless throttle_rejected_input_total
// for reason is want.
func wantRejectedInput(t *testing.T, n *testNode, reason string, want float64) {
	t.Helper()
	if got := metricValue(t, n, "throttle_rejected_input_total", map[string]string{"reason": reason}); got != want {
		t.Errorf("throttle_rejected_input_total{reason=%q} is %v, want %v", reason, got, want)
	}
}

func TestReportServicesLimit(t *testing.T) {
	checkReportLimit(t, reportLimit{
		limit:  MaxReportServices,
		reason: reasonServices,
		report: func(field string, count int, escaped bool) []byte { return sizedReport(field, count, 1, 1, escaped) },
		want: func(field string, count int) string {
			return fmt.Sprintf("%s has %d services; the maximum is %d", field, count, MaxReportServices)
		},
	})
}

func TestReportUsersLimit(t *testing.T) {
	checkReportLimit(t, reportLimit{
		limit:  MaxReportUsers,
		reason: reasonUsers,
		report: func(field string, count int, escaped bool) []byte { return sizedReport(field, 1, count, 1, escaped) },
		want: func(field string, count int) string {
			return fmt.Sprintf("%s.s0 has %d users; the maximum is %d", field, count, MaxReportUsers)
		},
	})
}

func TestReportResourcesLimit(t *testing.T) {
	checkReportLimit(t, reportLimit{
		limit:  MaxReportResources,
		reason: reasonResources,
		report: func(field string, count int, escaped bool) []byte { return sizedReport(field, 1, 1, count, escaped) },
		want: func(field string, count int) string {
			return fmt.Sprintf("%s.s0.u0 has %d resources; the maximum is %d", field, count, MaxReportResources)
		},
	})
}

func TestReportNameLengthLimit(t *testing.T) {
	atLimit := strings.Repeat("u", quota.MaxNameLength)
	overLimit := atLimit + "u"
	report := func(user string) string {
		return `{"node_id":"edge-1","slot_number":1796411856,"consumption":{"front":{"` + user + `":{"traffic_up":1}}}}`
	}
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, nil)

	wantStatus(t, node.do(t, http.MethodPost, "/v1/report", report(atLimit)), http.StatusOK)
	rec := node.do(t, http.MethodPost, "/v1/report", report(overLimit))

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, fmt.Sprintf("consumption.front is %d bytes long; the maximum is %d", quota.MaxNameLength+1, quota.MaxNameLength))
	if got := len(reporter.received()); got != 1 {
		t.Errorf("Reporter received %d reports, want only the one at the limit", got)
	}
	wantRejectedInput(t, node, reasonNameLength, 1)
}

func TestReportBodySizeCounted(t *testing.T) {
	report := reportFrame("edge-1", 1796411856)
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, func(cfg *Config) { cfg.BodyLimit = int64(len(report)) })

	wantStatus(t, node.do(t, http.MethodPost, "/v1/report", report), http.StatusOK)
	rec := node.do(t, http.MethodPost, "/v1/report", report+" ")

	body := wantError(t, rec, http.StatusRequestEntityTooLarge, CodeTooLarge)
	wantMessageContains(t, body, fmt.Sprint(len(report)+1), fmt.Sprint(len(report)))
	if got := len(reporter.received()); got != 1 {
		t.Errorf("Reporter received %d reports, want only the one at the limit", got)
	}
	wantRejectedInput(t, node, reasonBodySize, 1)
}

func TestParseManyEmptyServicesAllocatesLittle(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"node_id": "edge-1", "slot_number": 1796411856, "consumption": {`)
	for i := range MaxReportServices {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"s%d": {}`, i)
	}
	b.WriteString(`}, "rejection": {}`)
	b.WriteString(strings.Repeat(" ", 900_000))
	b.WriteString("}")
	body := []byte(b.String())

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r, ok := parseReport(body)
	runtime.ReadMemStats(&after)

	if !ok || len(r.Consumption) != MaxReportServices {
		t.Fatalf("parseReport: ok %v, %d services; want true, %d", ok, len(r.Consumption), MaxReportServices)
	}
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 2<<20 {
		t.Errorf("parsing %d empty services allocated %d bytes, want under 2 MiB", MaxReportServices, allocated)
	}
}
