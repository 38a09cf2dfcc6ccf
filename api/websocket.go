package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// MaxFrame is the largest WebSocket message the Lua client sends or
// accepts: one unfragmented frame of at most 65,535 bytes.
const MaxFrame = 65535

// MaxSocketsPerNode is the maximum number of open report WebSockets of one
// node ID on one central. The Lua client keeps one socket per node, and
// the other three leave room for sockets of a reconnecting client that this
// central has not yet seen close. A socket counts for the node ID of its
// first report frame. So the limit stops a client that leaks sockets, but
// not one that sends a new node ID on each.
const MaxSocketsPerNode = 4

// frameTimeout bounds the handling of one frame, forwarding included. The
// Lua client gives up after 200 ms, so anything slower is lost anyway.
const frameTimeout = 2 * time.Second

// HandshakeAuth checks the HTTP request that opens a WebSocket, for example
// its SigV4 presigned query. A non-nil error rejects the connection with
// 403.
type HandshakeAuth func(r *http.Request) error

// frameReplyHeader, on a report forwarded to the leader, makes the leader
// trim its reply to one WebSocket frame with fitFrame. A follower sets it
// when it forwards a report frame, because only the leader has the quotas
// to trim by.
const frameReplyHeader = "X-Throttle-Reply-Frame"

// monitorFrame is a monitor request sent on the report socket.
type monitorFrame struct {
	Monitor   string `json:"monitor"`
	StartSlot int64  `json:"start_slot"`
	EndSlot   int64  `json:"end_slot"`
	Service   string `json:"service"`
	User      string `json:"user"`
}

// throttle handles GET /throttle: a WebSocket that carries one report per
// text frame and replies to each with exactly one unfragmented text frame.
// The central never pings first. When no leader responds, it closes the
// socket, so the Lua client moves on to its next central.
func (s *Server) throttle(c echo.Context) error {
	req := c.Request()
	if s.cfg.HandshakeAuth != nil {
		if err := s.cfg.HandshakeAuth(req); err != nil {
			s.metrics.reports.WithLabelValues("websocket", "unauthorized").Inc()
			s.log.Warn("rejected WebSocket handshake", slog.String("remote", req.RemoteAddr), slog.Any("error", err))
			return newError(http.StatusForbidden, CodeForbidden, err.Error())
		}
	}
	conn, err := websocket.Accept(c.Response(), req, &websocket.AcceptOptions{
		// The Lua client sends no Origin header; browsers are not clients.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		s.log.Debug("WebSocket upgrade failed", slog.String("remote", req.RemoteAddr), slog.Any("error", err))
		return nil
	}
	conn.SetReadLimit(MaxFrame)
	s.metrics.connections.Inc()
	defer s.metrics.connections.Dec()

	// The socket ends with the request or when the server shuts down:
	// http.Server.Shutdown does not close hijacked connections itself.
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	stop := context.AfterFunc(s.closing, cancel)
	defer stop()
	mayMonitor := s.socketMayMonitor(req)
	// nodeID is the node this socket counts for, set by its first report
	// frame.
	nodeID := ""
	defer func() {
		if nodeID != "" {
			s.metrics.nodeSockets.release(nodeID)
		}
	}()
	for {
		kind, data, err := conn.Read(ctx)
		if err != nil {
			switch {
			case errors.Is(err, websocket.ErrMessageTooBig):
				// The library has closed the socket with 1009 (message too big).
				s.metrics.rejectedInput.WithLabelValues(reasonFrameSize).Inc()
				s.log.Warn("closed a report WebSocket: frame larger than the maximum", slog.String("remote", req.RemoteAddr),
					slog.String("edge_node", nodeID), slog.Int("max_bytes", MaxFrame))
			case websocket.CloseStatus(err) == -1 && !errors.Is(err, io.EOF) && ctx.Err() == nil:
				s.log.Debug("WebSocket read ended", slog.String("remote", req.RemoteAddr), slog.Any("error", err))
			}
			return nil
		}
		if kind != websocket.MessageText {
			conn.Close(websocket.StatusUnsupportedData, "send reports as text frames")
			return nil
		}
		if nodeID == "" {
			id := frameNodeID(data)
			if id != "" && !s.metrics.nodeSockets.acquire(id) {
				s.metrics.rejectedInput.WithLabelValues(reasonNodeSockets).Inc()
				s.log.Warn("closed a report WebSocket: its node already has the maximum number of open sockets",
					slog.String("remote", req.RemoteAddr), slog.String("edge_node", id), slog.Int("max_sockets", MaxSocketsPerNode))
				conn.Close(websocket.StatusPolicyViolation, socketLimitReason)
				return nil
			}
			nodeID = id
		}
		if s.cfg.Removal != nil {
			if _, removed := s.cfg.Removal.Removed(); removed {
				conn.Close(websocket.StatusTryAgainLater, "this central was removed from the cluster; use another")
				return nil
			}
		}
		reply, closeReason := s.handleFrame(ctx, data, mayMonitor)
		if closeReason != "" {
			conn.Close(websocket.StatusTryAgainLater, closeReason)
			return nil
		}
		writeCtx, cancel := context.WithTimeout(ctx, frameTimeout)
		err = conn.Write(writeCtx, websocket.MessageText, reply)
		cancel()
		if err != nil {
			s.log.Debug("WebSocket write failed", slog.String("remote", req.RemoteAddr), slog.Any("error", err))
			return nil
		}
	}
}

// errNodeMonitor is the error of a monitor frame on a socket opened with a
// node credential.
const errNodeMonitor = "monitor frames need a socket opened with an admin token; this one was opened with a node token or a SigV4 signature (start the central with --node-monitor to allow them, or use GET /v1/monitor with a read token)"

// socketMayMonitor reports whether the WebSocket of req may send monitor
// frames: always without tokens, since GET /v1/monitor is open then, and
// otherwise with an admin token, or with any credential under NodeMonitor.
func (s *Server) socketMayMonitor(req *http.Request) bool {
	if s.auth.current() == nil || s.cfg.NodeMonitor {
		return true
	}
	scope, ok := req.Context().Value(authScopeKey{}).(Scope)
	return ok && scope.grants(ScopeRead)
}

// socketLimitReason is the close reason of a socket over MaxSocketsPerNode.
// A close reason has at most 123 bytes, so it leaves out the node ID.
var socketLimitReason = fmt.Sprintf("this node_id already has %d open report sockets on this central, the maximum; close one first", MaxSocketsPerNode)

// nodeSockets counts the open report WebSockets of each node ID.
type nodeSockets struct {
	mu     sync.Mutex
	byNode map[string]int
}

func newNodeSockets() *nodeSockets {
	return &nodeSockets{byNode: make(map[string]int)}
}

// acquire counts one more socket of nodeID and returns true, or returns
// false and counts nothing when nodeID has MaxSocketsPerNode already.
func (n *nodeSockets) acquire(nodeID string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byNode[nodeID] >= MaxSocketsPerNode {
		return false
	}
	n.byNode[nodeID]++
	return true
}

// release counts one socket of nodeID fewer.
func (n *nodeSockets) release(nodeID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byNode[nodeID] <= 1 {
		delete(n.byNode, nodeID)
		return
	}
	n.byNode[nodeID]--
}

// count returns the number of open sockets of nodeID.
func (n *nodeSockets) count(nodeID string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.byNode[nodeID]
}

// frameNodeID returns the node_id of a report frame, or "" when the frame
// is not a JSON object with a valid node_id, as for a monitor frame. It
// runs on a socket's frames until one names a node, on followers too, which
// forward reports without decoding them.
func frameNodeID(data []byte) string {
	var frame struct {
		NodeID string `json:"node_id"`
	}
	if json.Unmarshal(data, &frame) != nil || quota.ValidateName("node_id", frame.NodeID) != nil {
		return ""
	}
	return frame.NodeID
}

// handleFrame returns the reply to one frame. A non-empty closeReason means no leader
// responded and the socket is to be closed.
func (s *Server) handleFrame(ctx context.Context, data []byte, mayMonitor bool) (reply []byte, closeReason string) {
	start := time.Now()
	defer func() { s.metrics.reportSeconds.WithLabelValues("websocket").Observe(time.Since(start).Seconds()) }()

	if bytes.Contains(data, []byte(`"monitor"`)) {
		var m monitorFrame
		if err := decodeJSON(data, &m); err == nil && m.Monitor != "" {
			if !mayMonitor {
				s.metrics.reports.WithLabelValues("websocket", "forbidden").Inc()
				return errorFrame(newError(http.StatusForbidden, CodeForbidden, errNodeMonitor)), ""
			}
			return s.monitorReply(ctx, m), ""
		}
	}
	if s.cfg.Reports == nil || !s.cfg.Cluster.IsLeader() {
		return s.forwardFrame(ctx, data)
	}
	release := s.acquireWorker()
	defer release()
	r, err := DecodeReport(data)
	if err != nil {
		s.metrics.reports.WithLabelValues("websocket", "invalid").Inc()
		s.countRejectedInput(err)
		return errorFrame(err), ""
	}
	if s.cfg.Reports != nil && s.cfg.Cluster.IsLeader() {
		answer, err := s.cfg.Reports.Report(r)
		if err == nil {
			s.metrics.reports.WithLabelValues("websocket", outcome(answer)).Inc()
			return s.fitFrame(r, answer), ""
		}
		if !errors.Is(err, raftnode.ErrNotLeader) {
			s.metrics.reports.WithLabelValues("websocket", outcomeOf(err)).Inc()
			return errorFrame(err), ""
		}
		if s.leaderIsSelf() {
			s.metrics.reports.WithLabelValues("websocket", "starting").Inc()
			return nil, errEngineStarting
		}
	}
	release() // forwarding waits on the network, not on a core
	return s.forwardFrame(ctx, data)
}

// forwardFrame relays a report frame to the leader, which validates it.
func (s *Server) forwardFrame(ctx context.Context, data []byte) (reply []byte, closeReason string) {
	body, err := s.forwardReport(ctx, data)
	if err != nil {
		s.metrics.reports.WithLabelValues("websocket", "no_leader").Inc()
		return nil, err.Error()
	}
	s.metrics.reports.WithLabelValues("websocket", "forwarded").Inc()
	return body, ""
}

func outcome(reply ReportReply) string {
	if reply.Duplicate {
		return "duplicate"
	}
	return "ok"
}

// forwardReport posts a report frame to the leader's /v1/report and returns
// the leader's response body: the reply, trimmed to one frame, or a 4xx
// error. Any other response is an error, so the socket is closed and the
// client tries another central.
func (s *Server) forwardReport(ctx context.Context, data []byte) ([]byte, error) {
	status, body, addr, err := s.callLeader(ctx, http.MethodPost, "/v1/report", data, func(h http.Header) {
		h.Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
		h.Set(frameReplyHeader, "1")
	})
	if errors.Is(err, errNoLeaderKnown) {
		return nil, err
	}
	var unreachable *leaderUnreachableError
	if errors.As(err, &unreachable) {
		return nil, fmt.Errorf("leader at %s unreachable", addr)
	}
	// A 4xx is the leader's verdict on the report itself and goes back to
	// the node as an error frame. Anything else means no leader responded.
	answered := status == http.StatusOK || (status >= 400 && status < 500)
	switch {
	case err != nil || !answered:
		return nil, fmt.Errorf("leader at %s responded with HTTP %d", addr, status)
	case len(body) > MaxFrame:
		return nil, fmt.Errorf("leader at %s sent a reply larger than %d bytes", addr, MaxFrame)
	}
	return body, nil
}

// errNoLeaderKnown is returned by callLeader when no leader address is known.
var errNoLeaderKnown = errors.New("no leader is known")

// leaderUnreachableError is a request to the leader that failed before any
// response arrived.
type leaderUnreachableError struct{ err error }

func (e *leaderUnreachableError) Error() string { return e.err.Error() }
func (e *leaderUnreachableError) Unwrap() error { return e.err }

// callLeader sends a request for a WebSocket frame to the leader, marked as
// forwarded by this central and bounded by frameTimeout, and returns the
// status, at most MaxFrame+1 bytes of the body, and the leader's address.
// setHeaders, when not nil, adds request headers.
func (s *Server) callLeader(ctx context.Context, method, path string, body []byte, setHeaders func(http.Header)) (int, []byte, string, error) {
	addr := s.leaderHTTPAddr()
	if addr == "" {
		return 0, nil, "", errNoLeaderKnown
	}
	ctx, cancel := context.WithTimeout(ctx, frameTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, s.leaderURL(addr, path), bytes.NewReader(body))
	if err != nil {
		return 0, nil, addr, err
	}
	req.Header.Set(forwardedHeader, s.cfg.NodeID)
	if setHeaders != nil {
		setHeaders(req.Header)
	}

	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, addr, &leaderUnreachableError{err}
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, MaxFrame+1))
	return resp.StatusCode, reply, addr, err
}

// monitorReply answers a monitor frame from the leader's history; a
// follower fetches it from the leader's GET /v1/monitor/{subject}.
func (s *Server) monitorReply(ctx context.Context, m monitorFrame) []byte {
	data, err := s.monitorData(quota.MonitorQuery{Subject: m.Monitor, Start: m.StartSlot, End: m.EndSlot, Service: m.Service, User: m.User})
	if errors.Is(err, raftnode.ErrNotLeader) {
		return s.forwardMonitor(ctx, m)
	}
	if err != nil {
		return errorFrame(err)
	}
	out, err := json.Marshal(data)
	if err != nil {
		return errorFrame(err)
	}
	if len(out) > MaxFrame {
		return errorFrame(errMonitorTooLarge)
	}
	return out
}

func errorFrame(err error) []byte {
	out, _ := json.Marshal(errorBody{Error: toError(err)})
	return out
}

// fitFrame encodes the reply and, when it would not fit in one frame,
// keeps the users with the smallest quotas and leaves out the others. The
// Lua client admits a user it has no entry for, so the users left out are
// the ones with the most room; they are logged and counted.
func (s *Server) fitFrame(r *protocol.Report, reply ReportReply) []byte {
	out := EncodeReply(r, reply, s.cfg.NodeID)
	if len(out) <= MaxFrame {
		return out
	}
	quotas, err := reply.quotaMaps()
	if err != nil {
		s.log.Error("cannot trim a reply that does not fit in one WebSocket frame", slog.String("edge_node", r.NodeID), slog.Any("error", err))
		return errorFrame(err)
	}
	reply.Quotas, reply.Encoded = quotas, nil
	type entry struct {
		service, user string
		smallest      float64
		size          int
	}
	var entries []entry
	for service, quotas := range reply.Quotas {
		for user, resources := range quotas {
			smallest := -1.0
			for _, q := range resources {
				if smallest < 0 || q < smallest {
					smallest = q
				}
			}
			encoded, _ := json.Marshal(resources)
			entries = append(entries, entry{service, user, smallest, len(user) + len(encoded) + 8})
		}
	}
	slices.SortFunc(entries, func(a, b entry) int {
		switch {
		case a.smallest < b.smallest:
			return -1
		case a.smallest > b.smallest:
			return 1
		}
		return 0
	})
	trimmed := make(map[string]protocol.Quotas, len(reply.Quotas))
	for service := range reply.Quotas {
		trimmed[service] = protocol.Quotas{}
	}
	budget := MaxFrame - 256*len(reply.Quotas) - 64
	kept := 0
	for _, e := range entries {
		if budget-e.size < 0 {
			break
		}
		budget -= e.size
		trimmed[e.service][e.user] = reply.Quotas[e.service][e.user]
		kept++
	}
	reply.Quotas = trimmed
	out = EncodeReply(r, reply, s.cfg.NodeID)
	for len(out) > MaxFrame && kept > 0 {
		// The size estimate was short: drop the largest kept entry.
		kept--
		delete(trimmed[entries[kept].service], entries[kept].user)
		out = EncodeReply(r, reply, s.cfg.NodeID)
	}
	s.metrics.replyOverflow.Inc()
	s.log.Warn("reply too large for one WebSocket frame; left out the users with the largest quotas",
		slog.String("edge_node", r.NodeID), slog.Int("users", len(entries)), slog.Int("kept", kept),
		slog.String("slot", strconv.FormatInt(reply.NodeSlot, 10)))
	return out
}

// forwardMonitor fetches monitor data from the leader for a frame that
// reached a follower, and returns the leader's JSON, error or not.
func (s *Server) forwardMonitor(ctx context.Context, m monitorFrame) []byte {
	if s.leaderIsSelf() {
		return errorFrame(errNoMonitorLeader)
	}
	query := url.Values{}
	for key, value := range map[string]string{"service": m.Service, "user": m.User} {
		if value != "" {
			query.Set(key, value)
		}
	}
	if m.StartSlot != 0 {
		query.Set("start_slot", strconv.FormatInt(m.StartSlot, 10))
	}
	if m.EndSlot != 0 {
		query.Set("end_slot", strconv.FormatInt(m.EndSlot, 10))
	}
	path := "/v1/monitor/" + url.PathEscape(m.Monitor) + "?" + query.Encode()
	_, body, addr, err := s.callLeader(ctx, http.MethodGet, path, nil, nil)
	var unreachable *leaderUnreachableError
	switch {
	case errors.Is(err, errNoLeaderKnown):
		return errorFrame(errNoMonitorLeader)
	case errors.As(err, &unreachable):
		e := newError(http.StatusServiceUnavailable, CodeLeaderUnreach, fmt.Sprintf("fetching monitor data from the leader at %s failed: %v", addr, unreachable.err))
		e.Leader = addr
		return errorFrame(e)
	case err != nil:
		return errorFrame(err)
	case len(body) > MaxFrame:
		return errorFrame(errMonitorTooLarge)
	}
	return bytes.TrimSpace(body)
}

// errNoMonitorLeader is sent for a monitor frame when no other central is
// known to lead.
var errNoMonitorLeader = newError(http.StatusServiceUnavailable, CodeNoLeader, "no leader with monitor data is known; retry after an election")

// errMonitorTooLarge is sent when monitor data would not fit in one frame.
var errMonitorTooLarge = newError(http.StatusRequestEntityTooLarge, CodeTooLarge,
	"monitor data does not fit in one frame; narrow start_slot, end_slot, service or user")
