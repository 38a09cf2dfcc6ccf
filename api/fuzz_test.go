package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
)

// fixtureLines returns the non-empty lines of the fixture file path, or nil
// when it is absent: the fixtures lie outside the repository, so they are
// optional seeds.
func fixtureLines(f *testing.F, path string) [][]byte {
	f.Helper()
	file, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		f.Fatalf("opening %s: %v", path, err)
	}
	defer file.Close()
	var lines [][]byte
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		if line := bytes.TrimSpace(scanner.Bytes()); len(line) > 0 {
			lines = append(lines, bytes.Clone(line))
		}
	}
	if err := scanner.Err(); err != nil {
		f.Fatalf("reading %s: %v", path, err)
	}
	return lines
}

// reportLimitSeeds are reports at and just over the entry limits, small
// enough for the fuzzer to mutate.
func reportLimitSeeds() []string {
	resources := func(n int) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = fmt.Sprintf(`"r%d":1`, i)
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	return []string{
		`{"node_id":"n","slot_number":5,"consumption":{"s":{"u":` + resources(MaxReportResources) + `}}}`,
		`{"node_id":"n","slot_number":5,"consumption":{"s":{"u":` + resources(MaxReportResources+1) + `}}}`,
		`{"node_id":"n","slot_number":5,"rejection":{"s":{"u":` + resources(MaxReportResources+1) + `}}}`,
		`{"node_id":"n","slot_number":5,"consumption":{"a":{}},"consumption":{"b":{}}}`,
		`{"node_id":"n","slot_number":5,"consumption":{"s":{"u":{"r":1}}},"consumption":{"s":{"v":{"r":2}}}}`,
		`{"node_id":"` + strings.Repeat("n", quota.MaxNameLength) + `","slot_number":5}`,
		`{"node_id":"` + strings.Repeat("n", quota.MaxNameLength+1) + `","slot_number":5}`,
	}
}

// FuzzDecodeReport checks DecodeReport against encoding/json. The fast
// parser and the checked decoder agree, and every error wraps
// quota.ErrInvalid. An accepted report is within every input limit, equals
// what plain encoding/json decodes when that accepts the body too, and
// decodes to the same report after encoding it again.
func FuzzDecodeReport(f *testing.F) {
	for _, seed := range parseSeeds {
		f.Add([]byte(seed))
	}
	for _, seed := range reportLimitSeeds() {
		f.Add([]byte(seed))
	}
	for _, line := range fixtureLines(f, fixtureReports) {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParseAgrees(t, data)

		r, err := DecodeReport(data)
		if err != nil {
			if !isInvalid(err) {
				t.Fatalf("DecodeReport(%q) returned %v, which is not an invalid-input error", data, err)
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("DecodeReport accepted %q, which is not valid JSON", data)
		}
		if err := quota.ValidateReport(r); err != nil {
			t.Fatalf("DecodeReport accepted %q, which quota.ValidateReport rejects: %v", data, err)
		}
		checkWithinLimits(t, data, r)

		var reference protocol.Report
		if json.Unmarshal(data, &reference) == nil {
			if reference.Consumption == nil {
				reference.Consumption = protocol.Counts{}
			}
			if reference.Rejection == nil {
				reference.Rejection = protocol.Counts{}
			}
			if !reflect.DeepEqual(r, &reference) {
				t.Fatalf("DecodeReport and json.Unmarshal disagree on %q:\nDecodeReport %+v\njson.Unmarshal %+v", data, r, reference)
			}
		}

		encoded, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("encoding the report decoded from %q: %v", data, err)
		}
		again, err := DecodeReport(encoded)
		if err != nil {
			t.Fatalf("DecodeReport rejects %s, the encoding of the report it accepted from %q: %v", encoded, data, err)
		}
		if !reflect.DeepEqual(r, again) {
			t.Fatalf("report changed when encoded and decoded again:\nfirst %+v\nagain %+v", r, again)
		}
	})
}

// checkWithinLimits fails the test when r, decoded from data, has more
// services, users or resources than the input limits allow.
func checkWithinLimits(t *testing.T, data []byte, r *protocol.Report) {
	t.Helper()
	for _, counts := range []protocol.Counts{r.Consumption, r.Rejection} {
		if len(counts) > MaxReportServices {
			t.Fatalf("DecodeReport accepted %d services in %q; the maximum is %d", len(counts), data, MaxReportServices)
		}
		for service, users := range counts {
			if len(users) > MaxReportUsers {
				t.Fatalf("DecodeReport accepted %d users of %s in %q; the maximum is %d", len(users), service, data, MaxReportUsers)
			}
			for user, resources := range users {
				if len(resources) > MaxReportResources {
					t.Fatalf("DecodeReport accepted %d resources of %s.%s in %q; the maximum is %d", len(resources), service, user, data, MaxReportResources)
				}
			}
		}
	}
}

// limitBodySeeds are PUT /v1/limits bodies, valid and invalid.
var limitBodySeeds = []string{
	`{"limit": {"traffic_up": 1048576, "database_read": 200}, "burst": {"traffic_up": 2097152}}`,
	`{"limit": {"traffic_up": 0}}`,
	`{"limit": {"traffic_up": 0}, "burst": {"traffic_up": 0}}`,
	`{"limit": {"traffic_up": 10}, "burst": {"traffic_up": 0}}`,
	`{"limit": {"traffic_up": 10}, "burst": {"traffic_up": 10}}`,
	`{"limit": {"traffic_up": 10}, "burst": {"traffic_up": 9.999999999999998}}`,
	`{"limit": {"traffic_up": 9007199254740992}}`,
	`{"limit": {"traffic_up": 9007199254740993}}`,
	`{"limit": {"traffic_up": 1.2345678901234e+14}}`,
	`{"limit": {"traffic_up": -0}}`,
	`{"limit": {"traffic_up": 1e400}}`,
	`{"limit": {"traffic_up": null}}`,
	`{"limit": {"traffic_up": "10"}}`,
	`{"limit": {"traffic_up": 10}, "burst": {"requests": 5}}`,
	`{"limit": {"traffic_up": 10}, "burst": null}`,
	`{"limit": {"traffic_up": 10, "traffic_up": 20}}`,
	`{"LIMIT": {"traffic_up": 10}}`,
	`{"limit": {"traffic\u002fup": 10}}`,
	`{"limit": {" traffic_up": 10}}`,
	`{"limit": {}}`,
	`{}`,
	`{"limit": {"r0":1,"r1":1,"r2":1,"r3":1,"r4":1,"r5":1,"r6":1,"r7":1,"r8":1,"r9":1,"r10":1,"r11":1,"r12":1,"r13":1,"r14":1,"r15":1}}`,
	`{"limit": {"r0":1,"r1":1,"r2":1,"r3":1,"r4":1,"r5":1,"r6":1,"r7":1,"r8":1,"r9":1,"r10":1,"r11":1,"r12":1,"r13":1,"r14":1,"r15":1,"r16":1}}`,
}

// limitBodyReference is the PUT body as plain encoding/json reads it.
type limitBodyReference struct {
	Limit map[string]float64 `json:"limit"`
	Burst map[string]float64 `json:"burst"`
}

// FuzzLimitBody checks the PUT /v1/limits body decoder. It never panics,
// and every error wraps quota.ErrInvalid. An accepted body stays within
// MaxLimitResources and matches what plain encoding/json reads. Its limits
// come back unchanged from fsm.Encode and fsm.Decode, and from the FSM's
// state after Apply.
func FuzzLimitBody(f *testing.F) {
	for _, seed := range limitBodySeeds {
		f.Add([]byte(seed))
	}
	// Bodies that set the Lua client's recorded counts and quotas as
	// limits, one body per user.
	for _, path := range []string{fixtureReports, fixtureQuotaReplies} {
		for _, line := range fixtureLines(f, path) {
			for _, body := range fixtureLimitBodies(f, line) {
				f.Add(body)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		limits, err := decodeLimitsBody(data)
		if err != nil {
			if !isInvalid(err) {
				t.Fatalf("decodeLimitsBody(%q) returned %v, which is not an invalid-input error", data, err)
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("decodeLimitsBody accepted %q, which is not valid JSON", data)
		}
		if len(limits) == 0 || len(limits) > MaxLimitResources {
			t.Fatalf("decodeLimitsBody accepted %d resources in %q; want 1 to %d", len(limits), data, MaxLimitResources)
		}
		checkLimitsMatchReference(t, data, limits)
		checkLimitsRoundTrip(t, data, limits)
	})
}

// checkLimitsMatchReference fails the test unless limits, decoded from
// data, hold the numbers that plain encoding/json reads from data.
func checkLimitsMatchReference(t *testing.T, data []byte, limits map[string]quota.Limit) {
	t.Helper()
	var reference limitBodyReference
	if err := json.Unmarshal(data, &reference); err != nil {
		t.Fatalf("decodeLimitsBody accepted %q, which json.Unmarshal rejects: %v", data, err)
	}
	if len(reference.Limit) != len(limits) {
		t.Fatalf("decodeLimitsBody read %d resources from %q, json.Unmarshal %d", len(limits), data, len(reference.Limit))
	}
	for resource, l := range limits {
		rate, ok := reference.Limit[resource]
		if !ok || rate != l.Rate {
			t.Fatalf("decodeLimitsBody read limit.%s = %v from %q, json.Unmarshal %v (present %v)", resource, l.Rate, data, rate, ok)
		}
		burst, hasBurst := reference.Burst[resource]
		if hasBurst && burst != l.Burst {
			t.Fatalf("decodeLimitsBody read burst.%s = %v from %q, json.Unmarshal %v", resource, l.Burst, data, burst)
		}
		if hasBurst && burst < rate {
			t.Fatalf("decodeLimitsBody accepted burst.%s = %v below limit %v in %q", resource, burst, rate, data)
		}
		if !hasBurst && l.Burst != 0 {
			t.Fatalf("decodeLimitsBody set burst.%s = %v from %q, which has none", resource, l.Burst, data)
		}
	}
}

// checkLimitsRoundTrip fails the test unless limits pass through the FSM
// command encoding and the FSM's state unchanged.
func checkLimitsRoundTrip(t *testing.T, data []byte, limits map[string]quota.Limit) {
	t.Helper()
	cmd := fsm.SetLimitsCommand{Service: "front", User: "alice", Limits: limits, TS: testTS, Slot: testSlot}
	encoded, err := fsm.Encode(cmd)
	if err != nil {
		t.Fatalf("fsm.Encode rejects the limits accepted from %q: %v", data, err)
	}
	decoded, err := fsm.Decode(encoded)
	if err != nil {
		t.Fatalf("fsm.Decode(%s) of the limits accepted from %q: %v", encoded, data, err)
	}
	if !reflect.DeepEqual(decoded, cmd) {
		t.Fatalf("limits from %q changed in the FSM encoding:\nsent    %#v\ndecoded %#v", data, cmd, decoded)
	}

	state := fsm.New(fsm.Options{OnCorrupt: func(index uint64, err error) {
		t.Fatalf("FSM rejects the command %s as corrupt: %v", encoded, err)
	}})
	if response := state.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: encoded}); response != nil {
		t.Fatalf("FSM.Apply of the limits accepted from %q returned %v", data, response)
	}
	stored, ok := state.Limits("front", "alice")
	if !ok {
		t.Fatalf("FSM has no limits after applying those accepted from %q", data)
	}
	if !maps.Equal(stored.Limits, limits) {
		t.Fatalf("FSM stored %v from %q, want %v", stored.Limits, data, limits)
	}
}

// fixtureQuotaReplies is the file of quota replies that the
// lua-resty-throttle client accepted, one JSON object a line.
const fixtureQuotaReplies = "../../shared/fixtures/lua-resty-throttle/quota-replies.jsonl"

// fixtureLimitBodies returns, for a recorded report or quota reply, one PUT
// body per user that sets the user's recorded numbers as limits.
func fixtureLimitBodies(f *testing.F, line []byte) [][]byte {
	f.Helper()
	// A report holds service -> user -> resource -> count under
	// consumption and rejection; a reply holds service -> slot -> user ->
	// resource -> quota. Both end in user -> resource -> number.
	var byUser []map[string]map[string]float64
	var report struct {
		Consumption protocol.Counts `json:"consumption"`
		Rejection   protocol.Counts `json:"rejection"`
	}
	var reply map[string]map[string]protocol.Quotas

	switch {
	case bytes.Contains(line, []byte(`"node_id"`)):
		if err := json.Unmarshal(line, &report); err != nil {
			f.Fatalf("decoding the recorded report %s: %v", line, err)
		}
		for _, counts := range []protocol.Counts{report.Consumption, report.Rejection} {
			for _, users := range counts {
				byUser = append(byUser, users)
			}
		}
	default:
		if err := json.Unmarshal(line, &reply); err != nil {
			f.Fatalf("decoding the recorded reply %s: %v", line, err)
		}
		for _, slots := range reply {
			for _, quotas := range slots {
				byUser = append(byUser, quotas)
			}
		}
	}

	var bodies [][]byte
	for _, users := range byUser {
		for _, resources := range users {
			body, err := json.Marshal(map[string]any{"limit": resources})
			if err != nil {
				f.Fatalf("encoding a limit body: %v", err)
			}
			bodies = append(bodies, body)
		}
	}
	return bodies
}
