package central

import (
	"context"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/membership"
	"github.com/throttlecentral/throttle-central/quota"
)

// startGossip starts this central's gossip member, with its HTTP and Raft
// addresses in the metadata. It returns nil when GossipAddr is empty.
func startGossip(cfg Config, httpAddr, raftAddr string) (*membership.Pool, error) {
	if cfg.GossipAddr == "" {
		return nil, nil
	}
	gossip := cfg.Gossip
	gossip.Name = cfg.NodeID
	gossip.Role = membership.RoleCentral
	gossip.BindAddr = cfg.GossipAddr
	gossip.AdvertiseAddr = cfg.GossipAdvertise
	gossip.Join = cfg.GossipJoin
	gossip.Key = cfg.GossipKey
	gossip.HTTPAddr = httpAddr
	gossip.RaftAddr = raftAddr
	gossip.Logger = cfg.Logger
	gossip.Registerer = cfg.Registry
	return membership.Start(gossip)
}

// liveness returns the gossip view the quota engine consults for which edge
// nodes are live, or nil when gossip is off. With nil, every node that
// reports counts as live.
func (c *Central) liveness() quota.Liveness {
	if c.gossip == nil {
		return nil
	}
	return c.gossip
}

// GossipAddr returns the gossip address other members reach this central
// at, or "" when gossip is off.
func (c *Central) GossipAddr() string {
	if c.gossip == nil {
		return ""
	}
	return c.gossip.Addr()
}

// memberView returns the function that lists the gossip members for
// GET /v1/members, or nil when gossip is off.
func (c *Central) memberView() func() []api.Member {
	if c.gossip == nil {
		return nil
	}
	return func() []api.Member {
		members := c.gossip.Members()
		out := make([]api.Member, 0, len(members))
		for _, m := range members {
			out = append(out, api.Member{
				NodeID:     m.Name,
				Role:       string(m.Role),
				GossipAddr: m.Addr,
				HTTPAddr:   m.HTTPAddr,
				RaftAddr:   m.RaftAddr,
				State:      string(m.State),
				Since:      m.Since.UTC(),
			})
		}
		return out
	}
}

// closeGossip leaves the gossip pool and stops gossip. An already done ctx
// skips the leave, so the others detect a failure, as after a crash.
func (c *Central) closeGossip(ctx context.Context) error {
	if c.gossip == nil {
		return nil
	}
	return c.gossip.Close(ctx)
}
