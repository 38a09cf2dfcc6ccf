package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/quota"
)

// Removal keeps the notice that the leader removed this central from the
// cluster. A removed central no longer receives log entries, so without the
// notice it would keep serving reads of limits that are no longer updated.
type Removal interface {
	// MarkRemoved records the notice. The record must survive a restart.
	MarkRemoved(notice RemovalNotice) error
	// Removed returns the notice, if there is one.
	Removed() (RemovalNotice, bool)
}

// RemovalNotice is the body of POST /v1/cluster/removed, which the leader
// sends to a central it has removed.
type RemovalNotice struct {
	// NodeID is the removed central. A notice for another ID is rejected.
	NodeID string `json:"node_id"`
	// Leader is the ID of the leader that removed it.
	Leader string `json:"leader"`
	// At is the leader's time of the removal.
	At time.Time `json:"at"`
}

// removalNoticeTimeout bounds the leader's notice to a removed central.
const removalNoticeTimeout = 5 * time.Second

// removedNotice handles POST /v1/cluster/removed.
func (s *Server) removedNotice(c echo.Context) error {
	body, err := readBody(c)
	if err != nil {
		return err
	}
	var notice RemovalNotice
	if err := decodeJSON(body, &notice); err != nil {
		return err
	}
	switch {
	case notice.NodeID != s.cfg.NodeID:
		return fmt.Errorf("%w: node_id is %q, but this central is %q", quota.ErrInvalid, notice.NodeID, s.cfg.NodeID)
	case notice.Leader == "":
		return fmt.Errorf("%w: leader is missing", quota.ErrInvalid)
	case s.cfg.Removal == nil:
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "this central cannot record a removal")
	case s.cfg.Cluster.IsLeader():
		// A leader that is removed marks itself. A notice from elsewhere
		// would stop the quotas of the whole cluster.
		s.log.Warn("rejected a removal notice: this central is the leader", slog.String("from_leader", notice.Leader))
		return newError(http.StatusConflict, CodeConflict, fmt.Sprintf("this central is the leader; only the leader %q can remove it, with DELETE /v1/cluster/servers/{id}", s.cfg.NodeID))
	}
	if notice.At.IsZero() {
		notice.At = s.now()
	}
	if err := s.markRemoved(notice); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// markRemoved records the removal notice and logs it.
func (s *Server) markRemoved(notice RemovalNotice) error {
	if err := s.cfg.Removal.MarkRemoved(notice); err != nil {
		s.log.Error("recording the removal notice failed", slog.String("leader", notice.Leader), slog.Any("error", err))
		return err
	}
	s.log.Error("this central was removed from the cluster and now returns 503 to every request but health and metrics; stop it, or delete its data directory and start it again with --join",
		slog.String("leader", notice.Leader), slog.Time("at", notice.At))
	return nil
}

// refuseIfRemoved returns 503 for requests that would read or change the
// cluster's state on a central that the leader removed, so clients move
// on to a member. Health, metrics and the dashboard's files stay open.
func (s *Server) refuseIfRemoved(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.cfg.Removal == nil {
			return next(c)
		}
		path := c.Request().URL.Path
		if (!strings.HasPrefix(path, "/v1/") && path != "/throttle") || path == "/v1/cluster/removed" {
			return next(c)
		}
		notice, removed := s.cfg.Removal.Removed()
		if !removed {
			return next(c)
		}
		return newError(http.StatusServiceUnavailable, CodeRemoved, removedMessage(notice))
	}
}

// removedMessage returns the error message of a removed central, with what
// its clients and its operator should do.
func removedMessage(n RemovalNotice) string {
	return fmt.Sprintf("this central was removed from the cluster by leader %q at %s; send requests to another central. To bring it back, stop it, delete its data directory and start it again with --join",
		n.Leader, n.At.UTC().Format(time.RFC3339))
}

// RemovedReason is the /readyz reason of a removed central, or "" when it
// has no removal notice.
func RemovedReason(r Removal) string {
	if r == nil {
		return ""
	}
	if notice, removed := r.Removed(); removed {
		return removedMessage(notice)
	}
	return ""
}

// tellRemoved sends the removal notice to the central id at httpAddr, the
// address it had before its removal. It is best-effort: a central that is
// down gets no notice.
func (s *Server) tellRemoved(id, httpAddr string, at time.Time) {
	ctx, cancel := context.WithTimeout(s.closing, removalNoticeTimeout)
	defer cancel()
	body, _ := json.Marshal(RemovalNotice{NodeID: id, Leader: s.cfg.NodeID, At: at})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.leaderURL(httpAddr, "/v1/cluster/removed"), bytes.NewReader(body))
	if err != nil {
		s.log.Warn("sending the removal notice failed", slog.String("server_id", id), slog.Any("error", err))
		return
	}
	req.Header.Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
	resp, err := s.client.Do(req) // peerAuthTransport adds the peer token
	if err != nil {
		s.log.Warn("sending the removal notice failed; the removed central keeps serving its last state until it is stopped", slog.String("server_id", id), slog.String("http_addr", httpAddr), slog.Any("error", err))
		return
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusNoContent {
		s.log.Warn("the removed central rejected the removal notice", slog.String("server_id", id), slog.String("http_addr", httpAddr),
			slog.Int("status", resp.StatusCode), slog.String("response", string(answer)))
		return
	}
	s.log.Info("sent the removal notice", slog.String("server_id", id), slog.String("http_addr", httpAddr))
}
