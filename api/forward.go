package api

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"
)

// forwardedHeader marks a request a follower forwarded to the leader, with
// the follower's node ID. A node that is not the leader responds to such a
// request with 503 instead of forwarding it again, so a leadership change
// in flight cannot make requests bounce between followers.
const forwardedHeader = "X-Throttle-Forwarded-By"

// leaderHTTPAddr returns the HTTP address of the leader from the server
// metadata the cluster replicates, or "" when no leader or no address is
// known.
func (s *Server) leaderHTTPAddr() string {
	id, _ := s.cfg.Cluster.Leader()
	if id == "" {
		return ""
	}
	server, ok := s.cfg.State.Server(id)
	if !ok {
		return ""
	}
	return server.HTTPAddr
}

// forward sends the request to the leader and relays its response: status,
// Content-Type and body. The request keeps its Authorization header. body
// is the request body already read, or nil.
func (s *Server) forward(c echo.Context, body []byte) error {
	req := c.Request()
	if from := req.Header.Get(forwardedHeader); from != "" {
		return newError(http.StatusServiceUnavailable, CodeNoLeader,
			fmt.Sprintf("request forwarded by %s reached %s, which is not the leader; leadership is changing, retry", from, s.cfg.NodeID))
	}
	addr := s.leaderHTTPAddr()
	if addr == "" {
		return newError(http.StatusServiceUnavailable, CodeNoLeader, "no leader is known; retry after an election")
	}

	target := s.leaderURL(addr, req.URL.RequestURI())
	out, err := http.NewRequestWithContext(withoutPeerToken(req.Context()), req.Method, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the request to the leader: %w", err)
	}
	if ct := req.Header.Get(echo.HeaderContentType); ct != "" {
		out.Header.Set(echo.HeaderContentType, ct)
	}
	// The leader checks the client's token again. withoutPeerToken above
	// keeps this central's own token off a request without one.
	if authorization := req.Header.Get(echo.HeaderAuthorization); authorization != "" {
		out.Header.Set(echo.HeaderAuthorization, authorization)
	}
	out.Header.Set(forwardedHeader, s.cfg.NodeID)

	resp, err := s.client.Do(out)
	if err != nil {
		s.metrics.forwarded.WithLabelValues("error").Inc()
		s.log.Warn("forwarding to the leader failed", slog.String("leader", addr),
			slog.String("method", req.Method), slog.String("path", req.URL.Path), slog.Any("error", err))
		e := newError(http.StatusServiceUnavailable, CodeLeaderUnreach,
			fmt.Sprintf("forwarding to the leader at %s failed: %v", addr, err))
		e.Leader = addr
		return e
	}
	defer resp.Body.Close()
	s.metrics.forwarded.WithLabelValues("ok").Inc()

	if ct := resp.Header.Get(echo.HeaderContentType); ct != "" {
		c.Response().Header().Set(echo.HeaderContentType, ct)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		c.Response().Header().Set("Retry-After", ra)
	}
	c.Response().WriteHeader(resp.StatusCode)
	if _, err := io.Copy(c.Response(), resp.Body); err != nil {
		s.log.Warn("relaying the leader's response failed", slog.String("leader", addr), slog.Any("error", err))
	}
	return nil
}

// leaderURL returns the URL of path on the central at addr, with https when
// the centrals serve TLS.
func (s *Server) leaderURL(addr, path string) string {
	scheme := "http"
	if s.cfg.PeerTLS != nil {
		scheme = "https"
	}
	return scheme + "://" + addr + path
}
