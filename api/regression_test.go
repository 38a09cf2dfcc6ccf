package api

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/raftnode"
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

func TestReportOnStartingLeaderIs503(t *testing.T) {
	reporter := &fakeReporter{answer: func(*protocol.Report) (ReportReply, error) {
		return ReportReply{}, fmt.Errorf("%w: engine not running", raftnode.ErrNotLeader)
	}}
	node := newTestNode(t, leaderID, true, func(cfg *Config) { cfg.Reports = reporter })
	rec := node.do(t, http.MethodPost, "/v1/report", reportWithCount("7"))
	wantError(t, rec, http.StatusServiceUnavailable, CodeUnavailable)
	if !strings.Contains(rec.Body.String(), "starting its quota engine") {
		t.Errorf("body %s does not say the engine is starting", rec.Body.String())
	}
}

func TestShutdownClosesWebSockets(t *testing.T) {
	node := newLeader(t)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- node.api.Serve(listener) }()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+listener.Addr().String()+"/throttle", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.CloseNow()

	if err := node.api.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, _, err := conn.Read(ctx); err == nil {
		t.Errorf("the WebSocket still delivers messages after Shutdown")
	}
	if ctx.Err() != nil {
		t.Errorf("the WebSocket stayed open until the test deadline after Shutdown")
	}
	if err := <-served; err != nil {
		t.Errorf("Serve returned %v", err)
	}
}
