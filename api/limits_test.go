package api

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

func TestPutLimitsOnLeader(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodPut, "/v1/limits/video/alice",
		`{"limit": {"traffic_up": 10240, "requests": 5}, "burst": {"traffic_up": 20480}}`)

	wantStatus(t, rec, http.StatusOK)
	var got fsm.LimitRecord
	decodeJSONBody(t, rec, &got)
	want := fsm.LimitRecord{
		Service:  "video",
		Username: "alice",
		Limit:    map[string]float64{"traffic_up": 10240, "requests": 5},
		Burst:    map[string]float64{"traffic_up": 20480},
		TS:       testTS,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("response record is %+v, want %+v", got, want)
	}

	commands := node.cluster.recordedCommands()
	if len(commands) != 1 {
		t.Fatalf("cluster received %d commands, want 1: %#v", len(commands), commands)
	}
	cmd, ok := commands[0].(fsm.SetLimitsCommand)
	if !ok {
		t.Fatalf("command is %T, want fsm.SetLimitsCommand", commands[0])
	}
	if cmd.Service != "video" || cmd.User != "alice" {
		t.Errorf("command is for %s/%s, want video/alice", cmd.Service, cmd.User)
	}
	if cmd.TS != testTS {
		t.Errorf("command ts is %d, want %d (Config.Now in unix milliseconds)", cmd.TS, testTS)
	}
	if cmd.Slot != testSlot {
		t.Errorf("command slot is %d, want %d (Config.Now in unix seconds)", cmd.Slot, testSlot)
	}
	wantLimits := map[string]quota.Limit{
		"traffic_up": {Rate: 10240, Burst: 20480},
		"requests":   {Rate: 5},
	}
	if !maps.Equal(cmd.Limits, wantLimits) {
		t.Errorf("command limits are %v, want %v", cmd.Limits, wantLimits)
	}
}

func TestPutLimitsOmitsUnsetBurst(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 10240}}`)

	wantStatus(t, rec, http.StatusOK)
	var raw map[string]any
	decodeJSONBody(t, rec, &raw)
	if _, ok := raw["burst"]; ok {
		t.Errorf("response has a burst field although no burst was set: %s", rec.Body.String())
	}
	for _, key := range []string{"service", "username", "limit", "ts"} {
		if _, ok := raw[key]; !ok {
			t.Errorf("response has no %q field: %s", key, rec.Body.String())
		}
	}
	if ts, _ := raw["ts"].(float64); int64(ts) != testTS {
		t.Errorf("response ts is %v, want %d", raw["ts"], testTS)
	}
}

func TestPutLimitsReplacesWholeSet(t *testing.T) {
	node := newLeader(t)
	node.seedLimits(t, "video", "alice", map[string]quota.Limit{"traffic_up": {Rate: 1}, "requests": {Rate: 2}})

	rec := node.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_down": 7}}`)

	wantStatus(t, rec, http.StatusOK)
	stored, ok := node.state.Limits("video", "alice")
	if !ok {
		t.Fatal("state has no limits for video/alice after PUT")
	}
	want := map[string]quota.Limit{"traffic_down": {Rate: 7}}
	if !maps.Equal(stored.Limits, want) {
		t.Errorf("stored limits are %v, want %v", stored.Limits, want)
	}
}

func TestPutLimitsValidation(t *testing.T) {
	long := strings.Repeat("a", quota.MaxNameLength+1)
	cases := []struct {
		name string
		path string
		body string
		// want lists parts the error message must contain.
		want []string
	}{
		{"empty body", "/v1/limits/video/alice", "", []string{"request body is empty"}},
		{"blank body", "/v1/limits/video/alice", "  \n", []string{"request body is empty"}},
		{"not JSON", "/v1/limits/video/alice", "limit=5", []string{"not valid JSON"}},
		{"truncated JSON", "/v1/limits/video/alice", `{"limit": {"traffic_up": 5`, []string{"middle of the JSON object"}},
		{"body is an array", "/v1/limits/video/alice", `[1]`, []string{"request body", "array"}},
		{"unknown field", "/v1/limits/video/alice", `{"limit": {"traffic_up": 5}, "rate": 5}`, []string{`unknown field "rate"`}},
		{"data after the object", "/v1/limits/video/alice", `{"limit": {"traffic_up": 5}} {}`, []string{"data after the JSON object"}},
		{"no limit", "/v1/limits/video/alice", `{}`, []string{"limit is missing or empty"}},
		{"empty limit", "/v1/limits/video/alice", `{"limit": {}}`, []string{"limit is missing or empty"}},
		{"limit not an object", "/v1/limits/video/alice", `{"limit": 5}`, []string{"limit", "JSON object"}},
		{"non-numeric limit", "/v1/limits/video/alice", `{"limit": {"traffic_up": "x"}}`, []string{"limit.traffic_up is a JSON string", "number"}},
		{"null limit", "/v1/limits/video/alice", `{"limit": {"traffic_up": null}}`, []string{"limit.traffic_up is null"}},
		{"non-numeric burst", "/v1/limits/video/alice", `{"limit": {"traffic_up": 10}, "burst": {"traffic_up": {}}}`, []string{"burst.traffic_up is a JSON object"}},
		{"negative limit", "/v1/limits/video/alice", `{"limit": {"traffic_up": -1}}`, []string{"limit.traffic_up is -1", "negative"}},
		{"limit above 2^53", "/v1/limits/video/alice", `{"limit": {"traffic_up": 9007199254740994}}`, []string{"limit.traffic_up", "2^53"}},
		{"limit out of float range", "/v1/limits/video/alice", `{"limit": {"traffic_up": 1e400}}`, []string{"limit.traffic_up is 1e400", "2^53"}},
		{"negative burst", "/v1/limits/video/alice", `{"limit": {"traffic_up": 10}, "burst": {"traffic_up": -5}}`, []string{"burst.traffic_up is -5"}},
		{"burst below limit", "/v1/limits/video/alice", `{"limit": {"traffic_up": 10}, "burst": {"traffic_up": 5}}`, []string{"burst.traffic_up", "below limit.traffic_up 10"}},
		{"burst without limit", "/v1/limits/video/alice", `{"limit": {"traffic_up": 10}, "burst": {"requests": 5}}`, []string{"burst.requests", "limit.requests"}},
		{"empty resource name", "/v1/limits/video/alice", `{"limit": {"": 10}}`, []string{"resource", "empty"}},
		{"resource name too long", "/v1/limits/video/alice", `{"limit": {"` + long + `": 10}}`, []string{"resource", "129 bytes"}},
		{"resource name with slash", "/v1/limits/video/alice", `{"limit": {"traffic/up": 10}}`, []string{"resource", `"traffic/up"`}},
		{"service too long", "/v1/limits/" + long + "/alice", `{"limit": {"traffic_up": 10}}`, []string{"service is 129 bytes long"}},
		{"user too long", "/v1/limits/video/" + long, `{"limit": {"traffic_up": 10}}`, []string{"user is 129 bytes long"}},
		{"user with control character", "/v1/limits/video/al%01ice", `{"limit": {"traffic_up": 10}}`, []string{"user", "printable"}},
		{"user with leading space", "/v1/limits/video/%20alice", `{"limit": {"traffic_up": 10}}`, []string{"user", "leading or trailing spaces"}},
		{"user with escaped slash", "/v1/limits/video/al%2Fice", `{"limit": {"traffic_up": 10}}`, []string{"user", `'/'`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			node := newLeader(t)

			rec := node.do(t, http.MethodPut, tc.path, tc.body)

			body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
			wantMessageContains(t, body, tc.want...)
			wantNoCommands(t, node)
		})
	}
}

func TestPutLimitsDecodesEscapedNames(t *testing.T) {
	node := newLeader(t)

	// %2B makes Go keep the raw path, so Echo matches on the escaped form.
	rec := node.do(t, http.MethodPut, "/v1/limits/50%25off/a%2Bb", `{"limit": {"requests": 1}}`)

	wantStatus(t, rec, http.StatusOK)
	if _, ok := node.state.Limits("50%off", "a+b"); !ok {
		t.Errorf("state has no limits for service \"50%%off\", user \"a+b\"; services: %v", node.state.Services())
	}
	rec = node.do(t, http.MethodGet, "/v1/limits/50%25off/a+b", "")
	wantStatus(t, rec, http.StatusOK)
}

func TestPutLimitsBodyTooLarge(t *testing.T) {
	const limit = 64
	body := `{"limit": {"traffic_up": 10}}` + strings.Repeat(" ", 2*limit)

	t.Run("with Content-Length", func(t *testing.T) {
		node := newTestNode(t, leaderID, true, func(cfg *Config) { cfg.BodyLimit = limit })
		req := newPut(t, "/v1/limits/video/alice", strings.NewReader(body))
		if req.ContentLength != int64(len(body)) {
			t.Fatalf("request Content-Length is %d, want %d", req.ContentLength, len(body))
		}

		rec := node.serve(req)

		errBody := wantError(t, rec, http.StatusRequestEntityTooLarge, CodeTooLarge)
		wantMessageContains(t, errBody, "64")
		wantNoCommands(t, node)
	})

	t.Run("chunked", func(t *testing.T) {
		node := newTestNode(t, leaderID, true, func(cfg *Config) { cfg.BodyLimit = limit })
		// The wrapper hides the reader's length, as a chunked body has none.
		req := newPut(t, "/v1/limits/video/alice", struct{ io.Reader }{strings.NewReader(body)})
		req.ContentLength = -1

		rec := node.serve(req)

		errBody := wantError(t, rec, http.StatusRequestEntityTooLarge, CodeTooLarge)
		wantMessageContains(t, errBody, "64")
		wantNoCommands(t, node)
	})

	t.Run("exactly the limit", func(t *testing.T) {
		node := newTestNode(t, leaderID, true, func(cfg *Config) { cfg.BodyLimit = limit })
		exact := `{"limit": {"traffic_up": 10}}`
		exact += strings.Repeat(" ", limit-len(exact))
		req := newPut(t, "/v1/limits/video/alice", struct{ io.Reader }{strings.NewReader(exact)})
		req.ContentLength = -1

		rec := node.serve(req)

		wantStatus(t, rec, http.StatusOK)
	})
}

func newPut(t *testing.T, target string, body io.Reader) *http.Request {
	t.Helper()
	req := httptest.NewRequest(http.MethodPut, target, body)
	req.Header.Set("Content-Type", "application/json")
	return req
}

func TestPutLimitsNotReadableAfterCommit(t *testing.T) {
	node := newLeader(t)
	node.cluster.set(func(c *fakeCluster) { c.skipFSM = true })

	rec := node.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 10}}`)

	wantError(t, rec, http.StatusServiceUnavailable, CodeUnavailable)
	wantRetryAfter(t, rec)
}

func TestGetLimits(t *testing.T) {
	node := newLeader(t)
	node.seedLimits(t, "video", "alice", map[string]quota.Limit{"traffic_up": {Rate: 100, Burst: 300}})

	rec := node.do(t, http.MethodGet, "/v1/limits/video/alice", "")

	wantStatus(t, rec, http.StatusOK)
	var got fsm.LimitRecord
	decodeJSONBody(t, rec, &got)
	want := fsm.LimitRecord{
		Service:  "video",
		Username: "alice",
		Limit:    map[string]float64{"traffic_up": 100},
		Burst:    map[string]float64{"traffic_up": 300},
		TS:       testTS,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("record is %+v, want %+v", got, want)
	}
}

func TestGetLimitsUnknownUser(t *testing.T) {
	node := newLeader(t)
	node.seedLimits(t, "video", "alice", map[string]quota.Limit{"traffic_up": {Rate: 100}})

	rec := node.do(t, http.MethodGet, "/v1/limits/video/bob", "")

	body := wantError(t, rec, http.StatusNotFound, CodeNotFound)
	wantMessageContains(t, body, `"bob"`, `"video"`)
	if body.Error.Leader != "" {
		t.Errorf("error leader is %q, want it omitted on a 404", body.Error.Leader)
	}
	if strings.Contains(rec.Body.String(), `"leader"`) {
		t.Errorf("404 body has a leader field: %s", rec.Body.String())
	}
}

func TestListServiceLimitsSorted(t *testing.T) {
	node := newLeader(t)
	node.seedLimits(t, "video", "carol", map[string]quota.Limit{"requests": {Rate: 3}})
	node.seedLimits(t, "video", "alice", map[string]quota.Limit{"requests": {Rate: 1}})
	node.seedLimits(t, "video", "bob", map[string]quota.Limit{"requests": {Rate: 2}})
	node.seedLimits(t, "audio", "dave", map[string]quota.Limit{"requests": {Rate: 4}})

	rec := node.do(t, http.MethodGet, "/v1/limits/video", "")

	wantStatus(t, rec, http.StatusOK)
	var records []fsm.LimitRecord
	decodeJSONBody(t, rec, &records)
	if got, want := usernames(records), []string{"alice", "bob", "carol"}; !slices.Equal(got, want) {
		t.Errorf("users are %v, want %v", got, want)
	}
	for _, r := range records {
		if r.Service != "video" {
			t.Errorf("record %s/%s is listed under service video", r.Service, r.Username)
		}
	}
}

func TestListServiceLimitsEmpty(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodGet, "/v1/limits/video", "")

	wantStatus(t, rec, http.StatusOK)
	if got := strings.TrimSpace(rec.Body.String()); got != "[]" {
		t.Errorf("body for a service without limits is %q, want []", got)
	}
}

func TestListAllLimits(t *testing.T) {
	node := newLeader(t)
	node.seedLimits(t, "video", "bob", map[string]quota.Limit{"requests": {Rate: 2}})
	node.seedLimits(t, "audio", "dave", map[string]quota.Limit{"requests": {Rate: 4}})
	node.seedLimits(t, "video", "alice", map[string]quota.Limit{"requests": {Rate: 1}})

	rec := node.do(t, http.MethodGet, "/v1/limits", "")

	wantStatus(t, rec, http.StatusOK)
	var records []fsm.LimitRecord
	decodeJSONBody(t, rec, &records)
	var got []string
	for _, r := range records {
		got = append(got, r.Service+"/"+r.Username)
	}
	if want := []string{"audio/dave", "video/alice", "video/bob"}; !slices.Equal(got, want) {
		t.Errorf("records are %v, want %v", got, want)
	}
}

func TestListAllLimitsEmpty(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodGet, "/v1/limits", "")

	wantStatus(t, rec, http.StatusOK)
	if got := strings.TrimSpace(rec.Body.String()); got != "[]" {
		t.Errorf("body without any limits is %q, want []", got)
	}
}

func TestConsistentReadOnLeaderRunsBarrier(t *testing.T) {
	for _, path := range []string{"/v1/limits", "/v1/limits/video", "/v1/limits/video/alice"} {
		t.Run(path, func(t *testing.T) {
			node := newLeader(t)
			node.seedLimits(t, "video", "alice", map[string]quota.Limit{"requests": {Rate: 1}})

			rec := node.do(t, http.MethodGet, path+"?consistent=true", "")

			wantStatus(t, rec, http.StatusOK)
			if got := node.cluster.barrierCount(); got != 1 {
				t.Errorf("Barrier called %d times for ?consistent=true, want 1", got)
			}
		})
	}
}

func TestLocalReadSkipsBarrier(t *testing.T) {
	for _, query := range []string{"", "?consistent=false"} {
		t.Run("query "+query, func(t *testing.T) {
			node := newLeader(t)
			node.seedLimits(t, "video", "alice", map[string]quota.Limit{"requests": {Rate: 1}})

			rec := node.do(t, http.MethodGet, "/v1/limits/video/alice"+query, "")

			wantStatus(t, rec, http.StatusOK)
			if got := node.cluster.barrierCount(); got != 0 {
				t.Errorf("Barrier called %d times for a local read, want 0", got)
			}
		})
	}
}

func TestConsistentReadBarrierTimeout(t *testing.T) {
	node := newLeader(t)
	node.cluster.set(func(c *fakeCluster) {
		c.barrierErr = fmt.Errorf("raftnode: barrier: %w", raftnode.ErrTimeout)
	})

	rec := node.do(t, http.MethodGet, "/v1/limits?consistent=true", "")

	wantError(t, rec, http.StatusServiceUnavailable, CodeTimeout)
	wantRetryAfter(t, rec)
}

func TestConsistentParamInvalid(t *testing.T) {
	for _, path := range []string{"/v1/limits", "/v1/limits/video", "/v1/limits/video/alice"} {
		t.Run(path, func(t *testing.T) {
			node := newLeader(t)

			rec := node.do(t, http.MethodGet, path+"?consistent=maybe", "")

			body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
			wantMessageContains(t, body, "consistent", `"maybe"`)
			if got := node.cluster.barrierCount(); got != 0 {
				t.Errorf("Barrier called %d times for an invalid parameter, want 0", got)
			}
		})
	}
}

func TestDeleteLimits(t *testing.T) {
	node := newLeader(t)
	node.seedLimits(t, "video", "alice", map[string]quota.Limit{"requests": {Rate: 1}})

	rec := node.do(t, http.MethodDelete, "/v1/limits/video/alice", "")

	wantStatus(t, rec, http.StatusNoContent)
	if rec.Body.Len() != 0 {
		t.Errorf("204 body is %q, want empty", rec.Body.String())
	}
	commands := node.cluster.recordedCommands()
	want := []fsm.Command{fsm.DeleteLimitsCommand{Service: "video", User: "alice", TS: testTS}}
	if !reflect.DeepEqual(commands, want) {
		t.Errorf("commands are %#v, want %#v", commands, want)
	}
	if _, ok := node.state.Limits("video", "alice"); ok {
		t.Error("state still has limits for video/alice after DELETE")
	}

	rec = node.do(t, http.MethodGet, "/v1/limits/video/alice", "")
	wantError(t, rec, http.StatusNotFound, CodeNotFound)

	rec = node.do(t, http.MethodDelete, "/v1/limits/video/alice", "")
	body := wantError(t, rec, http.StatusNotFound, CodeNotFound)
	wantMessageContains(t, body, `"alice"`, `"video"`)
	if got := len(node.cluster.recordedCommands()); got != 1 {
		t.Errorf("cluster received %d commands after the second DELETE, want 1", got)
	}
}

func TestDeleteLimitsUnknownUser(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodDelete, "/v1/limits/video/nobody", "")

	body := wantError(t, rec, http.StatusNotFound, CodeNotFound)
	wantMessageContains(t, body, `"nobody"`)
	wantNoCommands(t, node)
}

func TestDeleteLimitsInvalidName(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodDelete, "/v1/limits/video/"+strings.Repeat("u", quota.MaxNameLength+1), "")

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, "user is 129 bytes long")
	wantNoCommands(t, node)
}

func usernames(records []fsm.LimitRecord) []string {
	names := make([]string, 0, len(records))
	for _, r := range records {
		names = append(names, r.Username)
	}
	return names
}

// limitBodyWith returns a PUT body with count resources, each limited to 1.
func limitBodyWith(count int) string {
	parts := make([]string, count)
	for i := range parts {
		parts[i] = fmt.Sprintf(`"r%d": 1`, i)
	}
	return `{"limit": {` + strings.Join(parts, ", ") + `}}`
}

func TestPutLimitsResourceLimit(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodPut, "/v1/limits/video/alice", limitBodyWith(MaxLimitResources))
	wantStatus(t, rec, http.StatusOK)
	rec = node.do(t, http.MethodPut, "/v1/limits/video/bob", limitBodyWith(MaxLimitResources+1))

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, fmt.Sprintf("limit has %d resources; the maximum is %d", MaxLimitResources+1, MaxLimitResources))
	if commands := node.cluster.recordedCommands(); len(commands) != 1 {
		t.Errorf("cluster received %d commands, want only the one at the limit: %#v", len(commands), commands)
	}
	if _, ok := node.state.Limits("video", "bob"); ok {
		t.Errorf("state has limits for video/bob after a rejected PUT")
	}
	wantRejectedInput(t, node, reasonLimitResources, 1)
}

func TestPutLimitsNameLengthCounted(t *testing.T) {
	node := newLeader(t)
	atLimit := strings.Repeat("u", quota.MaxNameLength)

	rec := node.do(t, http.MethodPut, "/v1/limits/video/"+atLimit, `{"limit": {"traffic_up": 10}}`)
	wantStatus(t, rec, http.StatusOK)
	rec = node.do(t, http.MethodPut, "/v1/limits/video/"+atLimit+"u", `{"limit": {"traffic_up": 10}}`)

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, fmt.Sprintf("user is %d bytes long; the maximum is %d", quota.MaxNameLength+1, quota.MaxNameLength))
	wantRejectedInput(t, node, reasonNameLength, 1)
}

func TestPutLimitsBodySizeCounted(t *testing.T) {
	exact := `{"limit": {"traffic_up": 10}}`
	node := newTestNode(t, leaderID, true, func(cfg *Config) { cfg.BodyLimit = int64(len(exact)) })

	wantStatus(t, node.do(t, http.MethodPut, "/v1/limits/video/alice", exact), http.StatusOK)
	rec := node.do(t, http.MethodPut, "/v1/limits/video/bob", exact+" ")

	wantError(t, rec, http.StatusRequestEntityTooLarge, CodeTooLarge)
	wantRejectedInput(t, node, reasonBodySize, 1)
}

// A burst of 0 used to be stored as no burst, which quota.Limit reads as
// 10 x the limit: far above what the operator asked for.
func TestPutLimitsZeroBurstRejected(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 10}, "burst": {"traffic_up": 0}}`)

	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, "burst.traffic_up is 0, below limit.traffic_up 10")
	wantNoCommands(t, node)
}

func TestPutLimitsZeroBurstOfZeroLimit(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodPut, "/v1/limits/video/alice", `{"limit": {"traffic_up": 0}, "burst": {"traffic_up": 0}}`)

	wantStatus(t, rec, http.StatusOK)
	stored, ok := node.state.Limits("video", "alice")
	if !ok {
		t.Fatal("state has no limits for video/alice after PUT")
	}
	if got := stored.Limits["traffic_up"].Capacity(); got != 0 {
		t.Errorf("stored traffic_up capacity is %v, want 0", got)
	}
}

// The fuzzer found that a stray closing bracket after the body passed,
// because json.Decoder.More reports false before '}' and ']'.
func TestPutLimitsStrayBracketRejected(t *testing.T) {
	for _, body := range []string{`{"limit": {"traffic_up": 10}}}`, `{"limit": {"traffic_up": 10}}]`} {
		node := newLeader(t)

		rec := node.do(t, http.MethodPut, "/v1/limits/video/alice", body)

		errBody := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
		wantMessageContains(t, errBody, "data after the JSON object")
		wantNoCommands(t, node)
	}
}
