package api

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// Member is one gossip member in GET /v1/members.
type Member struct {
	NodeID     string `json:"node_id"`
	Role       string `json:"role"`
	GossipAddr string `json:"gossip_addr"`
	HTTPAddr   string `json:"http_addr,omitempty"`
	RaftAddr   string `json:"raft_addr,omitempty"`
	// State is alive, dead or left.
	State string `json:"state"`
	// Since is when this central saw State begin.
	Since time.Time `json:"since"`
}

// MemberList is the body of GET /v1/members: this central's own gossip
// view. Gossip is false, with no members, when gossip is off.
type MemberList struct {
	NodeID  string   `json:"node_id"`
	Gossip  bool     `json:"gossip"`
	Members []Member `json:"members"`
}

func (s *Server) listMembers(c echo.Context) error {
	list := MemberList{NodeID: s.cfg.NodeID, Members: []Member{}}
	if s.cfg.Members != nil {
		list.Gossip = true
		if members := s.cfg.Members(); members != nil {
			list.Members = members
		}
	}
	return c.JSON(http.StatusOK, list)
}
