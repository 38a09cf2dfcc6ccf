package api

import (
	"net/http"
	"strings"
	"testing"
)

func TestJoinWildcardAddressRejected(t *testing.T) {
	node := newLeader(t)
	for _, body := range []string{
		`{"node_id":"c7","raft_addr":"0.0.0.0:7007","http_addr":"127.0.0.1:8087"}`,
		`{"node_id":"c7","raft_addr":"127.0.0.1:7007","http_addr":"[::]:8087"}`,
	} {
		rec := node.do(t, http.MethodPost, "/v1/cluster/join", body)
		wantError(t, rec, http.StatusBadRequest, CodeInvalid)
		if !strings.Contains(rec.Body.String(), "wildcard") {
			t.Errorf("join %s: body %s does not explain the wildcard host", body, rec.Body.String())
		}
	}
}

func TestLimitJustAboveMaxAmountRejected(t *testing.T) {
	node := newLeader(t)
	rec := node.do(t, http.MethodPut, "/v1/limits/front/alice", `{"limit":{"traffic_up":9007199254740993}}`)
	wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	rec = node.do(t, http.MethodPut, "/v1/limits/front/alice", `{"limit":{"traffic_up":9007199254740992}}`)
	if rec.Code != http.StatusOK {
		t.Errorf("a limit of exactly 2^53: status %d, body %s", rec.Code, rec.Body.String())
	}
}
