package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
)

// socketTimeout bounds every WebSocket dial, write and read in these tests.
const socketTimeout = 5 * time.Second

// quietPeriod is how long a test waits to check that the central sends
// nothing unprompted.
const quietPeriod = 300 * time.Millisecond

// testReadLimit is the client's read limit, far above MaxFrame, so that a
// test reads an oversized reply instead of failing on the read limit.
const testReadLimit = 1 << 22

// serveNode serves n's API over HTTP on 127.0.0.1 with a kernel-chosen port.
func serveNode(t *testing.T, n *testNode) *httptest.Server {
	t.Helper()
	server := httptest.NewServer(n.api.Handler())
	t.Cleanup(server.Close)
	return server
}

func socketURL(server *httptest.Server) string {
	return "ws://" + server.Listener.Addr().String() + "/throttle"
}

// dialSocket opens the report WebSocket at url and closes it when the test
// ends.
func dialSocket(t *testing.T, url string, opts *websocket.DialOptions) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("dialing %s: %v", url, err)
	}
	conn.SetReadLimit(testReadLimit)
	t.Cleanup(func() { conn.CloseNow() })
	return conn
}

// sendFrame writes data as one message of kind.
func sendFrame(t *testing.T, conn *websocket.Conn, kind websocket.MessageType, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	if err := conn.Write(ctx, kind, data); err != nil {
		t.Fatalf("writing a %d-byte frame: %v", len(data), err)
	}
}

// readTextFrame reads one message and fails the test unless it is text.
func readTextFrame(t *testing.T, conn *websocket.Conn) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	kind, data, err := conn.Read(ctx)
	if err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	if kind != websocket.MessageText {
		t.Fatalf("reply is a %v message, want text: %q", kind, data)
	}
	return data
}

// exchangeFrame sends one text frame and returns the reply.
func exchangeFrame(t *testing.T, conn *websocket.Conn, frame string) []byte {
	t.Helper()
	sendFrame(t, conn, websocket.MessageText, []byte(frame))
	return readTextFrame(t, conn)
}

// wantClosed reads from conn and fails the test unless the central closed
// the connection with status want. It returns the close reason.
func wantClosed(t *testing.T, conn *websocket.Conn, want websocket.StatusCode) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	kind, data, err := conn.Read(ctx)
	if err == nil {
		t.Fatalf("read a %v message %q, want the connection closed with %v", kind, data, want)
	}
	var closeErr websocket.CloseError
	if !errors.As(err, &closeErr) {
		t.Fatalf("read failed with %v, want a close frame with %v", err, want)
	}
	if closeErr.Code != want {
		t.Errorf("close status is %v (%q), want %v", closeErr.Code, closeErr.Reason, want)
	}
	return closeErr.Reason
}

// wantErrorFrame decodes frame as the JSON error shape and checks its code.
func wantErrorFrame(t *testing.T, frame []byte, code string) errorResponse {
	t.Helper()
	var body errorResponse
	dec := json.NewDecoder(bytes.NewReader(frame))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("frame %s is not {\"error\": {\"code\", \"message\", \"leader\"}}: %v", frame, err)
	}
	if body.Error.Code != code {
		t.Errorf("error code is %q, want %q; frame: %s", body.Error.Code, code, frame)
	}
	if body.Error.Message == "" {
		t.Errorf("error message is empty; frame: %s", frame)
	}
	return body
}

// slotKey matches a slot number as the Lua client parses it.
var slotKey = regexp.MustCompile(`^[0-9]+$`)

// decodeLuaReply decodes a version 0 reply and fails the test unless it
// has the shape the Lua client accepts: only services from services at the
// top, and only slot numbers inside each service.
func decodeLuaReply(t *testing.T, frame []byte, services ...string) map[string]map[string]protocol.Quotas {
	t.Helper()
	var reply map[string]map[string]protocol.Quotas
	if err := json.Unmarshal(frame, &reply); err != nil {
		t.Fatalf("reply %.200s is not service -> slot -> user -> resource -> quota: %v", frame, err)
	}
	for service, slots := range reply {
		if !slices.Contains(services, service) {
			t.Errorf("reply names service %q; the report named only %v", service, services)
		}
		for slot := range slots {
			if !slotKey.MatchString(slot) {
				t.Errorf("key %q inside service %q is not a slot number", slot, service)
			}
		}
	}
	return reply
}

// reportFrame returns a report of node for slot with one count.
func reportFrame(node string, slot int64) string {
	return fmt.Sprintf(`{"node_id": %q, "slot_number": %d,`+
		`"consumption": {"front": {"alice": {"traffic_up": 1024}}}, "rejection": {"front": {}}}`, node, slot)
}

// slotQuotaReporter returns a Reporter whose quota for alice equals the
// report's slot, so a test can tell which report a reply belongs to.
func slotQuotaReporter() *fakeReporter {
	return &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		return replyWith(r, map[string]protocol.Quotas{"front": {"alice": {"traffic_up": float64(r.Slot)}}}), nil
	}}
}

func TestWebSocketRepliesInOrder(t *testing.T) {
	reporter := slotQuotaReporter()
	node := newReportLeader(t, reporter, nil, nil)
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	// Send every frame before reading any reply: each reply must still
	// come back once, in the order of the reports.
	const first, count = 1796411856, 5
	for i := range int64(count) {
		sendFrame(t, conn, websocket.MessageText, []byte(reportFrame("edge-1", first+i)))
	}
	for i := range int64(count) {
		slot := first + i
		reply := decodeLuaReply(t, readTextFrame(t, conn), "front")
		key := fmt.Sprint(slot + 1)
		if len(reply["front"]) != 1 {
			t.Errorf("reply %d has slots %v, want only %s", i, reply["front"], key)
		}
		if got := reply["front"][key]["alice"]["traffic_up"]; got != float64(slot) {
			t.Errorf("reply %d: front.%s.alice.traffic_up is %v, want %d (the reply to slot %d)", i, key, got, slot, slot)
		}
	}
	if got := len(reporter.received()); got != count {
		t.Errorf("Reporter received %d reports, want %d", got, count)
	}
	wantReportCount(t, node, "websocket", "ok", count)
}

func TestWebSocketNeverPingsFirst(t *testing.T) {
	node := newReportLeader(t, &fakeReporter{}, nil, nil)
	server := serveNode(t, node)
	var mu sync.Mutex
	pings := 0
	conn := dialSocket(t, socketURL(server), &websocket.DialOptions{
		OnPingReceived: func(context.Context, []byte) bool {
			mu.Lock()
			pings++
			mu.Unlock()
			return true
		},
	})
	decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", 1796411856)), "front")

	ctx, cancel := context.WithTimeout(context.Background(), quietPeriod)
	defer cancel()
	kind, data, err := conn.Read(ctx)

	if err == nil {
		t.Errorf("central sent an unprompted %v message: %q", kind, data)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting for an unprompted frame failed with %v, want the %v deadline to pass", err, quietPeriod)
	}
	mu.Lock()
	defer mu.Unlock()
	if pings != 0 {
		t.Errorf("central sent %d pings, want none", pings)
	}
}

func TestWebSocketBinaryFrameCloses(t *testing.T) {
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, nil)
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	sendFrame(t, conn, websocket.MessageBinary, []byte(reportFrame("edge-1", 1796411856)))

	wantClosed(t, conn, websocket.StatusUnsupportedData)
	wantNoReports(t, reporter)
}

func TestWebSocketInvalidReportKeepsOpen(t *testing.T) {
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, nil)
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	frame := exchangeFrame(t, conn, reportWithCount("-1"))

	body := wantErrorFrame(t, frame, CodeInvalid)
	if !strings.Contains(body.Error.Message, countField) {
		t.Errorf("error message %q does not name %s", body.Error.Message, countField)
	}
	wantNoReports(t, reporter)

	reply := decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", 1796411856)), "front")
	if _, ok := reply["front"]["1796411857"]; !ok {
		t.Errorf("reply %v to the valid report after the invalid one lacks front.1796411857", reply)
	}
	if got := len(reporter.received()); got != 1 {
		t.Errorf("Reporter received %d reports, want 1", got)
	}
	wantReportCount(t, node, "websocket", "invalid", 1)
	wantReportCount(t, node, "websocket", "ok", 1)
}

// padFrame pads report with trailing spaces to size bytes.
func padFrame(t *testing.T, report string, size int) []byte {
	t.Helper()
	if len(report) > size {
		t.Fatalf("report is %d bytes, more than %d", len(report), size)
	}
	return []byte(report + strings.Repeat(" ", size-len(report)))
}

func TestWebSocketFrameAtMaxFrameAccepted(t *testing.T) {
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, nil)
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	sendFrame(t, conn, websocket.MessageText, padFrame(t, reportFrame("edge-1", 1796411856), MaxFrame))

	decodeLuaReply(t, readTextFrame(t, conn), "front")
	if got := len(reporter.received()); got != 1 {
		t.Errorf("Reporter received %d reports, want 1", got)
	}
}

func TestWebSocketFrameOverMaxFrameCloses(t *testing.T) {
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, nil)
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	frame := padFrame(t, reportFrame("edge-1", 1796411856), MaxFrame+1)
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	// The central may close before it has read the whole frame, so the
	// write can fail; the close status below is what counts.
	if err := conn.Write(ctx, websocket.MessageText, frame); err != nil {
		t.Logf("writing the oversized frame: %v", err)
	}

	wantClosed(t, conn, websocket.StatusMessageTooBig)
	wantNoReports(t, reporter)
}

func TestWebSocketNoLeaderCloses(t *testing.T) {
	// A follower without a Reporter, and no leader is known.
	node := newTestNode(t, followerID, false, nil)
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	sendFrame(t, conn, websocket.MessageText, []byte(reportFrame("edge-1", 1796411856)))

	reason := wantClosed(t, conn, websocket.StatusTryAgainLater)
	if !strings.Contains(reason, "no leader") {
		t.Errorf("close reason %q does not say that no leader is known", reason)
	}
	wantReportCount(t, node, "websocket", "no_leader", 1)
}

func TestWebSocketFollowerForwards(t *testing.T) {
	reporter := slotQuotaReporter()
	pair := newForwardingPairWith(t, func(cfg *Config) { cfg.Reports = reporter })
	server := serveNode(t, pair.follower)
	conn := dialSocket(t, socketURL(server), nil)

	frame := exchangeFrame(t, conn, reportFrame("edge-1", 1796411856))

	exchange := pair.onlyExchange(t)
	if exchange.Method != http.MethodPost || exchange.RequestURI != "/v1/report" {
		t.Errorf("leader received %s %s, want POST /v1/report", exchange.Method, exchange.RequestURI)
	}
	if exchange.ForwardedBy != followerID {
		t.Errorf("%s header at the leader is %q, want %q", forwardedHeader, exchange.ForwardedBy, followerID)
	}
	if !bytes.Equal(frame, exchange.Body) {
		t.Errorf("follower relayed %s, leader sent %s", frame, exchange.Body)
	}
	reply := decodeLuaReply(t, frame, "front")
	if got := reply["front"]["1796411857"]["alice"]["traffic_up"]; got != 1796411856 {
		t.Errorf("front.1796411857.alice.traffic_up is %v, want 1796411856", got)
	}
	if got := len(reporter.received()); got != 1 {
		t.Errorf("leader's Reporter received %d reports, want 1", got)
	}
	wantReportCount(t, pair.follower, "websocket", "forwarded", 1)

	// The connection stays open for the next report.
	decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", 1796411857)), "front")
}

func TestWebSocketFollowerRelaysLeaderRejection(t *testing.T) {
	reporter := &fakeReporter{}
	pair := newForwardingPairWith(t, func(cfg *Config) { cfg.Reports = reporter })
	server := serveNode(t, pair.follower)
	conn := dialSocket(t, socketURL(server), nil)

	body := wantErrorFrame(t, exchangeFrame(t, conn, reportWithCount("-1")), CodeInvalid)

	if !strings.Contains(body.Error.Message, countField) {
		t.Errorf("error message %q does not name %s", body.Error.Message, countField)
	}
	wantNoReports(t, reporter)
	decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", 1796411856)), "front")
}

func TestWebSocketNotLeaderErrorForwards(t *testing.T) {
	leaderReporter := slotQuotaReporter()
	pair := newForwardingPairWith(t, func(cfg *Config) { cfg.Reports = leaderReporter })
	staleReporter := &fakeReporter{}
	stale := newStaleLeader(t, pair, staleReporter)
	server := serveNode(t, stale)
	conn := dialSocket(t, socketURL(server), nil)

	frame := exchangeFrame(t, conn, reportFrame("edge-1", 1796411856))

	if exchange := pair.onlyExchange(t); !bytes.Equal(frame, exchange.Body) {
		t.Errorf("stale leader relayed %s, leader sent %s", frame, exchange.Body)
	}
	if got := len(staleReporter.received()); got != 1 {
		t.Errorf("stale leader's Reporter received %d reports, want 1", got)
	}
	if got := len(leaderReporter.received()); got != 1 {
		t.Errorf("leader's Reporter received %d reports, want 1", got)
	}
	wantReportCount(t, stale, "websocket", "forwarded", 1)
}

func TestWebSocketLeaderFailureCloses(t *testing.T) {
	t.Run("leader unreachable", func(t *testing.T) {
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listening on 127.0.0.1:0: %v", err)
		}
		deadAddr := listener.Addr().String()
		if err := listener.Close(); err != nil {
			t.Fatalf("closing the listener: %v", err)
		}
		follower := newTestNode(t, followerID, false, nil)
		follower.cluster.set(func(c *fakeCluster) { c.leaderID, c.leaderAddr = leaderID, leaderRaftAddr })
		follower.seed(t, fsm.SetServerCommand{ID: leaderID, HTTPAddr: deadAddr, RaftAddr: leaderRaftAddr})
		server := serveNode(t, follower)
		conn := dialSocket(t, socketURL(server), nil)

		sendFrame(t, conn, websocket.MessageText, []byte(reportFrame("edge-1", 1796411856)))

		reason := wantClosed(t, conn, websocket.StatusTryAgainLater)
		if !strings.Contains(reason, deadAddr) {
			t.Errorf("close reason %q does not name the leader at %s", reason, deadAddr)
		}
		wantReportCount(t, follower, "websocket", "no_leader", 1)
	})
	t.Run("leader answers 503", func(t *testing.T) {
		// The pair's leader has no Reporter, so it rejects a forwarded
		// report with 503 instead of forwarding it again.
		pair := newForwardingPair(t)
		server := serveNode(t, pair.follower)
		conn := dialSocket(t, socketURL(server), nil)

		sendFrame(t, conn, websocket.MessageText, []byte(reportFrame("edge-1", 1796411856)))

		reason := wantClosed(t, conn, websocket.StatusTryAgainLater)
		if !strings.Contains(reason, "503") {
			t.Errorf("close reason %q does not give the leader's status 503", reason)
		}
		if exchange := pair.onlyExchange(t); exchange.Status != http.StatusServiceUnavailable {
			t.Errorf("leader answered %d, want 503", exchange.Status)
		}
		wantReportCount(t, pair.follower, "websocket", "no_leader", 1)
	})
}

func TestWebSocketMonitorFrame(t *testing.T) {
	reporter := &fakeReporter{}
	monitor := &fakeMonitor{data: map[int64]any{
		1: []string{"edge-1"},
		2: []string{"edge-1", "edge-2"},
	}}
	node := newReportLeader(t, reporter, monitor, nil)
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	frame := exchangeFrame(t, conn, `{"monitor":"reported","start_slot":1,"end_slot":2}`)

	want := `{"1":["edge-1"],"2":["edge-1","edge-2"]}`
	if string(frame) != want {
		t.Errorf("monitor reply is %s, want %s", frame, want)
	}
	queries := monitor.received()
	wantQuery := quota.MonitorQuery{Subject: quota.SubjectReported, Start: 1, End: 2}
	if len(queries) != 1 || queries[0] != wantQuery {
		t.Errorf("Monitor received %+v, want [%+v]", queries, wantQuery)
	}
	wantNoReports(t, reporter)
}

func TestWebSocketMonitorUnknownSubject(t *testing.T) {
	node := newReportLeader(t, &fakeReporter{}, &fakeMonitor{}, nil)
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	body := wantErrorFrame(t, exchangeFrame(t, conn, `{"monitor":"weather","start_slot":1,"end_slot":2}`), CodeInvalid)

	if !strings.Contains(body.Error.Message, `"weather"`) {
		t.Errorf("error message %q does not name the subject \"weather\"", body.Error.Message)
	}
	decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", 1796411856)), "front")
}

func TestWebSocketHandshakeAuth(t *testing.T) {
	var mu sync.Mutex
	var queries []string
	verdict := errors.New("signature does not match")
	node := newReportLeader(t, &fakeReporter{}, nil, func(cfg *Config) {
		cfg.HandshakeAuth = func(r *http.Request) error {
			mu.Lock()
			defer mu.Unlock()
			queries = append(queries, r.URL.RawQuery)
			if r.URL.Query().Get("X-Amz-Signature") == "good" {
				return nil
			}
			return verdict
		}
	})
	server := serveNode(t, node)

	t.Run("rejected", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, socketURL(server)+"?X-Amz-Signature=bad", nil)
		if err == nil {
			conn.CloseNow()
			t.Fatal("handshake was accepted, want 403")
		}
		if resp == nil {
			t.Fatalf("dial failed without a response: %v", err)
		}
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("handshake status is %d, want 403", resp.StatusCode)
		}
		if resp.Header.Get("Upgrade") != "" {
			t.Errorf("403 response carries Upgrade: %q", resp.Header.Get("Upgrade"))
		}
		data, _ := io.ReadAll(resp.Body)
		var body errorResponse
		if err := json.Unmarshal(data, &body); err != nil {
			t.Fatalf("403 body %s: %v", data, err)
		}
		if body.Error.Code != CodeForbidden || !strings.Contains(body.Error.Message, verdict.Error()) {
			t.Errorf("403 error is %+v, want code %q and the verdict %q", body.Error, CodeForbidden, verdict)
		}
		wantReportCount(t, node, "websocket", "unauthorized", 1)
		if got := metricValue(t, node, "throttle_websocket_connections", nil); got != 0 {
			t.Errorf("throttle_websocket_connections is %v after a rejected handshake, want 0", got)
		}
	})
	t.Run("accepted", func(t *testing.T) {
		conn := dialSocket(t, socketURL(server)+"?X-Amz-Signature=good", nil)

		decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", 1796411856)), "front")
		if got := metricValue(t, node, "throttle_websocket_connections", nil); got != 1 {
			t.Errorf("throttle_websocket_connections is %v with one socket open, want 1", got)
		}
	})

	mu.Lock()
	defer mu.Unlock()
	want := []string{"X-Amz-Signature=bad", "X-Amz-Signature=good"}
	if strings.Join(queries, " ") != strings.Join(want, " ") {
		t.Errorf("HandshakeAuth saw queries %q, want %q", queries, want)
	}
	wantReportCount(t, node, "websocket", "unauthorized", 1)
}

// manyUserQuotas returns quotas of front for users users, each with two
// resources. The smaller quota of user i is a permutation of 0..users-1
// times 3.25, so every user's smallest quota is distinct.
func manyUserQuotas(users int) protocol.Quotas {
	quotas := make(protocol.Quotas, users)
	for i := range users {
		smallest := float64((i*7919)%users) * 3.25
		quotas[fmt.Sprintf("user-%05d", i)] = map[string]float64{"traffic_up": smallest * 1024, "database_read": smallest}
	}
	return quotas
}

func smallestQuota(resources map[string]float64) float64 {
	smallest := -1.0
	for _, q := range resources {
		if smallest < 0 || q < smallest {
			smallest = q
		}
	}
	return smallest
}

// wantTrimmedReply fails the test unless frame is a Lua reply of at most
// MaxFrame bytes that keeps, for slot, some of all's users with their
// quotas unchanged, and keeps exactly those with the smallest quotas.
func wantTrimmedReply(t *testing.T, frame []byte, slot string, all protocol.Quotas) {
	t.Helper()
	if len(frame) > MaxFrame {
		t.Fatalf("reply is %d bytes, more than the %d of one frame", len(frame), MaxFrame)
	}
	reply := decodeLuaReply(t, frame, "front")
	if len(reply["front"]) != 1 {
		t.Errorf("reply has %d slots, want only %s", len(reply["front"]), slot)
	}
	kept := reply["front"][slot]
	if len(kept) == 0 || len(kept) >= len(all) {
		t.Fatalf("reply keeps %d of %d users, want some but not all", len(kept), len(all))
	}

	maxKept, minDropped := -1.0, -1.0
	for user, resources := range all {
		smallest := smallestQuota(resources)
		got, ok := kept[user]
		if !ok {
			if minDropped < 0 || smallest < minDropped {
				minDropped = smallest
			}
			continue
		}
		maxKept = max(maxKept, smallest)
		for resource, q := range resources {
			if got[resource] != q {
				t.Errorf("kept user %s has %s quota %v, want %v", user, resource, got[resource], q)
			}
		}
		if len(got) != len(resources) {
			t.Errorf("kept user %s has %d resources, want %d", user, len(got), len(resources))
		}
	}
	if len(kept) > 0 && maxKept > minDropped {
		t.Errorf("a kept user's smallest quota %v is above a dropped user's %v; the users with the smallest quotas must be kept", maxKept, minDropped)
	}
	t.Logf("reply of %d bytes keeps %d of %d users", len(frame), len(kept), len(all))
}

func TestWebSocketReplyTrimmedToOneFrame(t *testing.T) {
	all := manyUserQuotas(5000)
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		return replyWith(r, map[string]protocol.Quotas{"front": all}), nil
	}}
	node := newReportLeader(t, reporter, nil, nil)
	report := reportFrame("edge-1", 1796411856)
	decoded, err := DecodeReport([]byte(report))
	if err != nil {
		t.Fatal(err)
	}
	if full := EncodeReply(decoded, replyWith(decoded, map[string]protocol.Quotas{"front": all}), leaderID); len(full) <= MaxFrame {
		t.Fatalf("untrimmed reply is %d bytes, want more than %d for this test", len(full), MaxFrame)
	}
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	frame := exchangeFrame(t, conn, report)

	wantTrimmedReply(t, frame, "1796411857", all)
	if got := metricValue(t, node, "throttle_reply_overflow_total", nil); got != 1 {
		t.Errorf("throttle_reply_overflow_total is %v, want 1", got)
	}
}

func TestWebSocketReplyEncodedAheadTrimmed(t *testing.T) {
	// The leader replies from quotas encoded ahead. A reply too large for a
	// frame is decoded and trimmed the same way.
	all := manyUserQuotas(5000)
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		reply := replyWith(r, nil)
		reply.Encoded = encodeAhead(map[string]protocol.Quotas{"front": all})
		return reply, nil
	}}
	node := newReportLeader(t, reporter, nil, nil)
	server := serveNode(t, node)
	conn := dialSocket(t, socketURL(server), nil)

	frame := exchangeFrame(t, conn, reportFrame("edge-1", 1796411856))

	wantTrimmedReply(t, frame, "1796411857", all)
	if got := metricValue(t, node, "throttle_reply_overflow_total", nil); got != 1 {
		t.Errorf("throttle_reply_overflow_total is %v, want 1", got)
	}
}

func TestWebSocketForwardedReplyTrimmed(t *testing.T) {
	all := manyUserQuotas(5000)
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		return replyWith(r, map[string]protocol.Quotas{"front": all}), nil
	}}
	pair := newForwardingPairWith(t, func(cfg *Config) { cfg.Reports = reporter })
	server := serveNode(t, pair.follower)
	conn := dialSocket(t, socketURL(server), nil)

	frame := exchangeFrame(t, conn, reportFrame("edge-1", 1796411856))

	wantTrimmedReply(t, frame, "1796411857", all)
	if got := metricValue(t, pair.leader, "throttle_reply_overflow_total", nil); got != 1 {
		t.Errorf("leader's throttle_reply_overflow_total is %v, want 1", got)
	}
	wantReportCount(t, pair.follower, "websocket", "forwarded", 1)
}

func TestReportOverHTTPNotTrimmed(t *testing.T) {
	// Only WebSocket frames are limited to MaxFrame; an HTTP client gets
	// every quota.
	all := manyUserQuotas(5000)
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		return replyWith(r, map[string]protocol.Quotas{"front": all}), nil
	}}
	node := newReportLeader(t, reporter, nil, nil)

	rec := node.do(t, http.MethodPost, "/v1/report", reportFrame("edge-1", 1796411856))

	wantStatus(t, rec, http.StatusOK)
	reply := decodeLuaReply(t, rec.Body.Bytes(), "front")
	if got := len(reply["front"]["1796411857"]); got != len(all) {
		t.Errorf("HTTP reply has %d users, want all %d", got, len(all))
	}
	if got := metricValue(t, node, "throttle_reply_overflow_total", nil); got != 0 {
		t.Errorf("throttle_reply_overflow_total is %v, want 0", got)
	}
}

// rawFrame is one WebSocket frame as read off the wire.
type rawFrame struct {
	fin     bool
	opcode  byte
	masked  bool
	payload []byte
}

// Opcodes of RFC 6455, section 5.2.
const (
	opcodeText  = 0x1
	opcodeClose = 0x8
	opcodePing  = 0x9
)

// rawUpgrade opens a TCP connection to addr and upgrades it the way the Lua
// client does: a GET with only Host, Upgrade, Connection, Sec-WebSocket-Key
// and Sec-WebSocket-Version, without Origin, subprotocol or extensions.
func rawUpgrade(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, socketTimeout)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(socketTimeout)); err != nil {
		t.Fatal(err)
	}

	// The key and accept value are the example of RFC 6455, section 1.3.
	request := "GET /throttle HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatalf("writing the handshake: %v", err)
	}

	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, nil)
	if err != nil {
		t.Fatalf("reading the handshake response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake status is %d, want 101", resp.StatusCode)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("Sec-WebSocket-Accept is %q, want s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", got)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Errorf("central negotiated extensions %q, want none", ext)
	}
	return conn, reader
}

// writeRawText writes payload as one masked, final text frame, as a client
// must.
func writeRawText(t *testing.T, conn net.Conn, payload []byte) {
	t.Helper()
	header := []byte{0x80 | opcodeText}
	switch {
	case len(payload) < 126:
		header = append(header, 0x80|byte(len(payload)))
	case len(payload) <= 0xFFFF:
		header = append(header, 0x80|126)
		header = binary.BigEndian.AppendUint16(header, uint16(len(payload)))
	default:
		header = append(header, 0x80|127)
		header = binary.BigEndian.AppendUint64(header, uint64(len(payload)))
	}
	mask := []byte{0x12, 0x34, 0x56, 0x78}
	masked := make([]byte, len(payload))
	for i, b := range payload {
		masked[i] = b ^ mask[i%4]
	}
	frame := append(append(header, mask...), masked...)
	if _, err := conn.Write(frame); err != nil {
		t.Fatalf("writing a frame: %v", err)
	}
}

// readRawFrame reads one frame header and payload.
func readRawFrame(reader *bufio.Reader) (rawFrame, error) {
	var head [2]byte
	if _, err := io.ReadFull(reader, head[:]); err != nil {
		return rawFrame{}, err
	}
	f := rawFrame{fin: head[0]&0x80 != 0, opcode: head[0] & 0x0F, masked: head[1]&0x80 != 0}
	length := uint64(head[1] & 0x7F)
	switch length {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(reader, ext[:]); err != nil {
			return rawFrame{}, err
		}
		length = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(reader, ext[:]); err != nil {
			return rawFrame{}, err
		}
		length = binary.BigEndian.Uint64(ext[:])
	}
	if f.masked {
		var mask [4]byte
		if _, err := io.ReadFull(reader, mask[:]); err != nil {
			return rawFrame{}, err
		}
	}
	if length > testReadLimit {
		return rawFrame{}, fmt.Errorf("frame announces %d bytes", length)
	}
	f.payload = make([]byte, length)
	_, err := io.ReadFull(reader, f.payload)
	return f, err
}

func TestWebSocketReplyIsOneUnfragmentedFrame(t *testing.T) {
	all := manyUserQuotas(5000)
	reporter := &fakeReporter{answer: func(r *protocol.Report) (ReportReply, error) {
		// Odd slots get the reply that needs trimming, so both a small and
		// the largest possible reply are checked on the wire.
		if r.Slot%2 == 1 {
			return replyWith(r, map[string]protocol.Quotas{"front": all}), nil
		}
		return replyWith(r, nil), nil
	}}
	node := newReportLeader(t, reporter, nil, nil)
	server := serveNode(t, node)
	conn, reader := rawUpgrade(t, server.Listener.Addr().String())

	for _, slot := range []int64{1796411856, 1796411857} {
		writeRawText(t, conn, []byte(reportFrame("edge-1", slot)))

		f, err := readRawFrame(reader)
		if err != nil {
			t.Fatalf("slot %d: reading the reply frame: %v", slot, err)
		}
		if !f.fin || f.opcode != opcodeText {
			t.Errorf("slot %d: reply frame has FIN %v and opcode %#x, want one final text frame (opcode %#x)", slot, f.fin, f.opcode, opcodeText)
		}
		if f.masked {
			t.Errorf("slot %d: reply frame is masked; a server must not mask", slot)
		}
		if len(f.payload) > MaxFrame {
			t.Errorf("slot %d: reply frame is %d bytes, more than %d", slot, len(f.payload), MaxFrame)
		}
		decodeLuaReply(t, f.payload, "front")
	}

	// Nothing may follow unprompted: no ping, no second frame.
	if err := conn.SetReadDeadline(time.Now().Add(quietPeriod)); err != nil {
		t.Fatal(err)
	}
	f, err := readRawFrame(reader)
	var netErr net.Error
	switch {
	case err == nil:
		t.Errorf("central sent an unprompted frame with opcode %#x (ping is %#x, close %#x): %.100q", f.opcode, opcodePing, opcodeClose, f.payload)
	case !errors.As(err, &netErr) || !netErr.Timeout():
		t.Errorf("waiting for an unprompted frame failed with %v, want the %v deadline to pass", err, quietPeriod)
	}
}

func TestWebSocketMonitorFrameOnFollower(t *testing.T) {
	monitor := &fakeMonitor{data: map[int64]any{7: []string{"edge-1"}}}
	pair := newForwardingPairWith(t, func(cfg *Config) { cfg.Monitor = monitor })
	server := serveNode(t, pair.follower)
	conn := dialSocket(t, socketURL(server), nil)

	frame := exchangeFrame(t, conn, `{"monitor":"reported","start_slot":7,"end_slot":9,"user":"alice"}`)

	if want := `{"7":["edge-1"]}`; string(frame) != want {
		t.Errorf("monitor reply through the follower is %s, want %s", frame, want)
	}
	exchange := pair.onlyExchange(t)
	if exchange.Method != http.MethodGet || !strings.HasPrefix(exchange.RequestURI, "/v1/monitor/reported?") {
		t.Errorf("leader received %s %s, want GET /v1/monitor/reported?...", exchange.Method, exchange.RequestURI)
	}
	queries := monitor.received()
	want := quota.MonitorQuery{Subject: quota.SubjectReported, Start: 7, End: 9, User: "alice"}
	if len(queries) != 1 || queries[0] != want {
		t.Errorf("leader's Monitor received %+v, want [%+v]", queries, want)
	}
}

// waitForSockets polls until nodeID has want open report sockets on n, and
// fails the test after socketTimeout.
func waitForSockets(t *testing.T, n *testNode, nodeID string, want int) {
	t.Helper()
	deadline := time.Now().Add(socketTimeout)
	for {
		got := n.api.metrics.nodeSockets.count(nodeID)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s has %d open report sockets after %v, want %d", nodeID, got, socketTimeout, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWebSocketSocketsPerNodeLimit(t *testing.T) {
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, nil)
	server := serveNode(t, node)
	const slot = 1796411856

	var open []*websocket.Conn
	for i := range MaxSocketsPerNode {
		conn := dialSocket(t, socketURL(server), nil)
		decodeLuaReply(t, exchangeFrame(t, conn, reportFrame("edge-1", slot+int64(i))), "front")
		open = append(open, conn)
	}
	extra := dialSocket(t, socketURL(server), nil)
	sendFrame(t, extra, websocket.MessageText, []byte(reportFrame("edge-1", slot+10)))

	reason := wantClosed(t, extra, websocket.StatusPolicyViolation)
	if want := fmt.Sprintf("already has %d open report sockets", MaxSocketsPerNode); !strings.Contains(reason, want) {
		t.Errorf("close reason %q does not contain %q", reason, want)
	}
	if got := len(reporter.received()); got != MaxSocketsPerNode {
		t.Errorf("Reporter received %d reports, want %d: the report on the extra socket must not count", got, MaxSocketsPerNode)
	}
	wantRejectedInput(t, node, reasonNodeSockets, 1)

	// The sockets at the limit still work, and another node is not limited.
	decodeLuaReply(t, exchangeFrame(t, open[0], reportFrame("edge-1", slot+20)), "front")
	other := dialSocket(t, socketURL(server), nil)
	decodeLuaReply(t, exchangeFrame(t, other, reportFrame("edge-2", slot)), "front")

	// A closed socket frees its place for a new one.
	if err := open[0].Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("closing a socket of edge-1: %v", err)
	}
	waitForSockets(t, node, "edge-1", MaxSocketsPerNode-1)
	replacement := dialSocket(t, socketURL(server), nil)
	decodeLuaReply(t, exchangeFrame(t, replacement, reportFrame("edge-1", slot+30)), "front")
	waitForSockets(t, node, "edge-1", MaxSocketsPerNode)
}

func TestWebSocketFrameSizeCounted(t *testing.T) {
	reporter := &fakeReporter{}
	node := newReportLeader(t, reporter, nil, nil)
	server := serveNode(t, node)
	atLimit := dialSocket(t, socketURL(server), nil)
	overLimit := dialSocket(t, socketURL(server), nil)

	sendFrame(t, atLimit, websocket.MessageText, padFrame(t, reportFrame("edge-1", 1796411856), MaxFrame))
	decodeLuaReply(t, readTextFrame(t, atLimit), "front")
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	// The central may close before it has read the whole frame, so the
	// write can fail; the close status below is what counts.
	if err := overLimit.Write(ctx, websocket.MessageText, padFrame(t, reportFrame("edge-1", 1796411857), MaxFrame+1)); err != nil {
		t.Logf("writing the oversized frame: %v", err)
	}

	wantClosed(t, overLimit, websocket.StatusMessageTooBig)
	if got := len(reporter.received()); got != 1 {
		t.Errorf("Reporter received %d reports, want only the one at the limit", got)
	}
	// The handler counts after the close frame is sent, so poll.
	deadline := time.Now().Add(socketTimeout)
	for metricValue(t, node, "throttle_rejected_input_total", map[string]string{"reason": reasonFrameSize}) != 1 {
		if time.Now().After(deadline) {
			wantRejectedInput(t, node, reasonFrameSize, 1)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
