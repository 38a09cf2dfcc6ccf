package api

import (
	"bufio"
	"errors"
	"os"
	"reflect"
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

func FuzzParseReport(f *testing.F) {
	for _, seed := range parseSeeds {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParseAgrees(t, data)
		if _, err := DecodeReport(data); err != nil && !isInvalid(err) {
			t.Fatalf("DecodeReport(%q) returned %v, which is not an invalid-input error", data, err)
		}
	})
}

func isInvalid(err error) bool {
	return errors.Is(err, quota.ErrInvalid)
}
