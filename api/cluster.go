package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// JoinRequest is the body of POST /v1/cluster/join.
type JoinRequest struct {
	NodeID   string `json:"node_id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
	// HasState is true when the joining node already has Raft data. A node
	// that was removed from the cluster must not come back with it.
	HasState bool `json:"has_state,omitempty"`
}

func (r JoinRequest) validate() error {
	if err := quota.ValidateName("node_id", r.NodeID); err != nil {
		return err
	}
	for _, field := range []struct{ name, addr string }{{"raft_addr", r.RaftAddr}, {"http_addr", r.HTTPAddr}} {
		host, port, err := net.SplitHostPort(field.addr)
		if err != nil || host == "" || port == "" {
			return fmt.Errorf("%w: %s %q is not a host:port address", quota.ErrInvalid, field.name, field.addr)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("%w: %s %q has a wildcard host; give the address other centrals connect to", quota.ErrInvalid, field.name, field.addr)
		}
	}
	return nil
}

func (s *Server) join(c echo.Context) error {
	body, err := readBody(c)
	if err != nil {
		return err
	}
	var req JoinRequest
	if err := decodeJSON(body, &req); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	if !s.cfg.Cluster.IsLeader() {
		return s.forward(c, body)
	}

	if removedAt, ok := s.cfg.State.Tombstone(req.NodeID); ok && req.HasState {
		s.log.Warn("rejected join of a removed server that kept its data", slog.String("server_id", req.NodeID))
		return newError(http.StatusConflict, CodeConflict, fmt.Sprintf(
			"server %q was removed from the cluster at %s and still has its old Raft data; stop it, delete its data directory and start it again with --join, or start it with a new --node-id",
			req.NodeID, time.UnixMilli(removedAt).UTC().Format(time.RFC3339)))
	}
	if err := s.cfg.Cluster.Join(req.NodeID, req.RaftAddr); err != nil {
		if errors.Is(err, raftnode.ErrPeerRejected) {
			s.log.Warn("rejected the join of a server that failed the Raft TLS check", slog.String("server_id", req.NodeID),
				slog.String("raft_addr", req.RaftAddr), slog.Any("error", err))
		}
		return err
	}
	cmd := fsm.SetServerCommand{ID: req.NodeID, HTTPAddr: req.HTTPAddr, RaftAddr: req.RaftAddr}
	if err := s.apply(c.Request().Context(), cmd); err != nil {
		return err
	}
	s.log.Info("server joined", slog.String("server_id", req.NodeID),
		slog.String("raft_addr", req.RaftAddr), slog.String("http_addr", req.HTTPAddr))
	return c.JSON(http.StatusOK, map[string]any{"joined": req.NodeID, "leader": s.cfg.NodeID})
}

func (s *Server) removeServer(c echo.Context) error {
	id, err := pathName(c, "id")
	if err != nil {
		return err
	}
	if !s.cfg.Cluster.IsLeader() {
		return s.forward(c, nil)
	}
	servers, err := s.cfg.Cluster.Servers()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(servers, func(server raftnode.Server) bool { return server.ID == id }) {
		return newError(http.StatusNotFound, CodeNotFound, fmt.Sprintf("server %q is not in the cluster", id))
	}
	target, _ := s.cfg.State.Server(id)
	removedAt := s.now()
	// The tombstone is replicated before the configuration change, while
	// this node is surely still the leader: removing the leader itself
	// makes it step down, and a retry after a failed removal finds the
	// server still there and repeats both steps.
	if err := s.apply(c.Request().Context(), fsm.RemoveServerCommand{ID: id, TS: s.now().UnixMilli()}); err != nil {
		return err
	}
	if err := s.cfg.Cluster.Remove(id); err != nil {
		if errors.Is(err, raftnode.ErrUnknownServer) {
			return newError(http.StatusNotFound, CodeNotFound, fmt.Sprintf("server %q is not in the cluster", id))
		}
		return err
	}
	s.log.Info("server removed", slog.String("server_id", id))
	switch {
	case id == s.cfg.NodeID && s.cfg.Removal != nil:
		// The leader removed itself, so it is the removed central. The
		// removal is committed even when recording it fails, which
		// markRemoved logs, so the response stays 204.
		_ = s.markRemoved(RemovalNotice{NodeID: id, Leader: id, At: removedAt})
	case id != s.cfg.NodeID && target.HTTPAddr != "":
		go s.tellRemoved(id, target.HTTPAddr, removedAt)
	case id != s.cfg.NodeID:
		s.log.Warn("the removed central gets no removal notice: its HTTP address is not known", slog.String("server_id", id))
	}
	return c.NoContent(http.StatusNoContent)
}

// ServerStatus is one server in GET /v1/cluster.
type ServerStatus struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr,omitempty"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
	// Gossip is the server's gossip state in this central's view: alive,
	// dead, left, or unknown when gossip has not seen it. It is left out
	// when gossip is off.
	Gossip string `json:"gossip,omitempty"`
}

// ClusterStatus is the body of GET /v1/cluster, from this node's view.
type ClusterStatus struct {
	NodeID       string         `json:"node_id"`
	State        string         `json:"state"`
	Leader       string         `json:"leader"`
	LeaderHTTP   string         `json:"leader_http_addr,omitempty"`
	Term         uint64         `json:"term"`
	CommitIndex  uint64         `json:"commit_index"`
	AppliedIndex uint64         `json:"applied_index"`
	Servers      []ServerStatus `json:"servers"`
}

func (s *Server) clusterStatus(c echo.Context) error {
	stats, err := s.cfg.Cluster.Stats()
	if err != nil {
		return err
	}
	servers, err := s.cfg.Cluster.Servers()
	if err != nil {
		return err
	}
	leaderID, _ := s.cfg.Cluster.Leader()
	status := ClusterStatus{
		NodeID:       s.cfg.NodeID,
		State:        stats.State.String(),
		Leader:       leaderID,
		LeaderHTTP:   s.leaderHTTPAddr(),
		Term:         stats.Term,
		CommitIndex:  stats.CommitIndex,
		AppliedIndex: stats.AppliedIndex,
		Servers:      make([]ServerStatus, 0, len(servers)),
	}
	var gossip map[string]string
	if s.cfg.Members != nil {
		gossip = make(map[string]string)
		for _, m := range s.cfg.Members() {
			gossip[m.NodeID] = m.State
		}
	}
	for _, server := range servers {
		meta, _ := s.cfg.State.Server(server.ID)
		entry := ServerStatus{
			ID:       server.ID,
			RaftAddr: server.Address,
			HTTPAddr: meta.HTTPAddr,
			Suffrage: server.Suffrage,
			Leader:   server.ID == leaderID,
		}
		if gossip != nil {
			entry.Gossip = gossip[server.ID]
			if entry.Gossip == "" {
				entry.Gossip = "unknown"
			}
		}
		status.Servers = append(status.Servers, entry)
	}
	return c.JSON(http.StatusOK, status)
}
