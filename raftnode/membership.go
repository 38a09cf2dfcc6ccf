package raftnode

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Server is one server in the cluster configuration.
type Server struct {
	ID string
	// Address is the server's Raft address.
	Address string
	// Suffrage is "Voter", "Nonvoter" or "Staging", spelled as
	// raft.ServerSuffrage.String spells it. Join adds voters only.
	Suffrage string
}

// Servers returns the latest cluster configuration stored on this node. On
// a follower it can lag the leader's.
func (n *Node) Servers() ([]Server, error) {
	configuration, err := n.configuration()
	if err != nil {
		return nil, fmt.Errorf("raftnode: %w", err)
	}
	servers := make([]Server, 0, len(configuration.Servers))
	for _, server := range configuration.Servers {
		servers = append(servers, Server{
			ID:       string(server.ID),
			Address:  string(server.Address),
			Suffrage: server.Suffrage.String(),
		})
	}
	return servers, nil
}

// configuration returns the latest configuration, committed or not. In
// hashicorp/raft v1.7.2 GetConfiguration reads it without the main loop, and
// the future's Index is always 0.
func (n *Node) configuration() (raft.Configuration, error) {
	future := n.raft.GetConfiguration()
	if err := future.Error(); err != nil {
		return raft.Configuration{}, n.mapRaftError("read configuration", err)
	}
	return future.Configuration(), nil
}

// Join makes the server id at the Raft address addr a voter. It must run on
// the leader. Joining is idempotent, so a server can ask to join every time
// it starts:
//
//   - id is already a voter at addr: nothing changes, and no configuration
//     entry is written.
//   - id is in the configuration at another address: its address is
//     updated in place. hashicorp/raft v1.7.2's AddVoter does that for an
//     existing voter, and replication follows the new address.
//   - another server is at addr: that server is stale (the address now
//     belongs to id), so it is removed first, then id is added.
//
// For the leader's own ID, Join accepts only the address the leader listens
// on, which fixes a configuration that still lists an old address. It
// rejects a new ID at the leader's address. Each configuration change waits
// until it is committed, for at most ApplyTimeout.
func (n *Node) Join(id, addr string) error {
	if id == "" {
		return errors.New("raftnode: join: server ID is missing")
	}
	if err := validateRaftAddr(addr); err != nil {
		return fmt.Errorf("raftnode: join %q: Raft address: %w", id, err)
	}
	op := fmt.Sprintf("raftnode: join %q at %s", id, addr)

	n.membershipMu.Lock()
	defer n.membershipMu.Unlock()

	if !n.IsLeader() {
		return fmt.Errorf("%s: %w", op, n.notLeaderError(raft.ErrNotLeader))
	}
	configuration, err := n.configuration()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	var existing, atAddr *raft.Server
	for i := range configuration.Servers {
		server := &configuration.Servers[i]
		if string(server.ID) == id {
			existing = server
		}
		if string(server.Address) == addr {
			atAddr = server
		}
	}

	if existing != nil && string(existing.Address) == addr && existing.Suffrage == raft.Voter {
		n.logger.Info("join: server is already a voter at this address, configuration unchanged",
			"server_id", id, "server_addr", addr)
		return nil
	}
	if id == n.cfg.NodeID && addr != n.addr {
		return fmt.Errorf("%s: this is the leader, which listens on %s, and its address cannot change while it runs", op, n.addr)
	}
	if n.tlsLayer != nil {
		// A voter that cannot complete the TLS handshake would count
		// towards the quorum without ever responding.
		err := n.tlsLayer.checkPeer(addr, peerCheckTimeout)
		switch {
		case errors.Is(err, ErrPeerUnreachable):
			return fmt.Errorf("%s: %w", op, err)
		case err != nil:
			return fmt.Errorf("%s: %w: %w", op, ErrPeerRejected, err)
		}
	}
	if atAddr != nil && string(atAddr.ID) != id {
		if string(atAddr.ID) == n.cfg.NodeID {
			return fmt.Errorf("%s: the address belongs to the leader %q", op, n.cfg.NodeID)
		}
		if err := n.removeServer(op, string(atAddr.ID)); err != nil {
			return err
		}
		n.logger.Info("join: removed stale server at the joining address",
			"server_id", id, "server_addr", addr, "stale_server_id", atAddr.ID)
	}

	if err := n.changeConfiguration(op, func(timeout time.Duration) raft.IndexFuture {
		return n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	}); err != nil {
		return err
	}
	switch {
	case existing == nil:
		n.logger.Info("join: added voter", "server_id", id, "server_addr", addr)
	case string(existing.Address) != addr:
		n.logger.Info("join: updated server address", "server_id", id, "server_addr", addr, "old_addr", existing.Address)
	default:
		n.logger.Info("join: made server a voter", "server_id", id, "server_addr", addr, "old_suffrage", existing.Suffrage)
	}
	return nil
}

// Remove removes the server id from the cluster configuration. It must run
// on the leader. An ID that is not in the configuration returns an error
// wrapping ErrUnknownServer. A leader that removes itself steps down once
// the change is committed, and stays a follower outside the configuration
// until Close.
func (n *Node) Remove(id string) error {
	if id == "" {
		return errors.New("raftnode: remove: server ID is missing")
	}
	op := fmt.Sprintf("raftnode: remove %q", id)

	n.membershipMu.Lock()
	defer n.membershipMu.Unlock()

	if !n.IsLeader() {
		return fmt.Errorf("%s: %w", op, n.notLeaderError(raft.ErrNotLeader))
	}
	configuration, err := n.configuration()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	var found *raft.Server
	for i := range configuration.Servers {
		if string(configuration.Servers[i].ID) == id {
			found = &configuration.Servers[i]
		}
	}
	if found == nil {
		return fmt.Errorf("%s: %w", op, ErrUnknownServer)
	}

	if err := n.removeServer(op, id); err != nil {
		return err
	}
	n.logger.Info("removed server", "server_id", id, "server_addr", found.Address)
	return nil
}

func (n *Node) removeServer(op, id string) error {
	return n.changeConfiguration(op, func(timeout time.Duration) raft.IndexFuture {
		return n.raft.RemoveServer(raft.ServerID(id), 0, timeout)
	})
}

// changeConfiguration runs one configuration change and waits until it is
// committed, for at most ApplyTimeout. The previous index given to raft is
// 0 because membershipMu already keeps changes from this node apart.
func (n *Node) changeConfiguration(op string, change func(timeout time.Duration) raft.IndexFuture) error {
	ctx, cancel, remaining, err := n.withApplyTimeout(context.Background(), op)
	if err != nil {
		return err
	}
	defer cancel()

	if err := n.waitFuture(ctx, change(remaining)); err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return contextError(ctx, op)
		}
		return n.mapRaftError(op, err)
	}
	return nil
}
