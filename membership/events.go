package membership

import (
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate receives memberlist's callbacks for a Pool. memberlist calls
// NotifyAlive, NotifyJoin, NotifyLeave and NotifyUpdate with its node lock
// held, so they only update the pool's view and log.
type delegate struct {
	pool *Pool
}

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
)

// NodeMeta returns this member's metadata, checked against limit in Start.
func (d *delegate) NodeMeta(limit int) []byte {
	return *d.pool.meta.Load()
}

// NotifyMsg, GetBroadcasts, LocalState and MergeRemoteState are unused:
// the pool sends no messages of its own.
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// NotifyAlive rejects a member whose metadata does not decode or does not
// match its name, so a foreign memberlist cluster on the same port, or a
// misconfigured member, stays out of the view. memberlist logs the error.
func (d *delegate) NotifyAlive(node *memberlist.Node) error {
	_, err := decodeMeta(node.Name, node.Meta)
	return err
}

// NotifyJoin records a member that is new or came back after it failed or
// left. A member that comes back under the same name replaces its old
// entry, so it is counted once.
func (d *delegate) NotifyJoin(node *memberlist.Node) {
	p := d.pool
	m, previous, ok := p.record(node, func(meta nodeMeta, _ *Member) State {
		if meta.Leaving {
			return StateLeft
		}
		return StateAlive
	})
	if !ok || node.Name == p.cfg.Name {
		return
	}
	attrs := []any{slog.String("member", m.Name), slog.String("role", string(m.Role)), slog.String("gossip_addr", m.Addr)}
	if previous != nil {
		attrs = append(attrs, slog.String("previous_state", string(previous.State)), slog.String("previous_gossip_addr", previous.Addr))
	}
	p.log.Info("member joined", attrs...)
}

// NotifyLeave records a member that failed or left. memberlist v0.5.4
// gives no reason, so a member counts as left when its last metadata
// marked it as leaving, and as dead otherwise.
func (d *delegate) NotifyLeave(node *memberlist.Node) {
	p := d.pool
	m, _, ok := p.record(node, func(meta nodeMeta, previous *Member) State {
		if meta.Leaving || (previous != nil && previous.State == StateLeft) {
			return StateLeft
		}
		return StateDead
	})
	if !ok || node.Name == p.cfg.Name {
		return
	}
	attrs := []any{slog.String("member", m.Name), slog.String("role", string(m.Role)), slog.String("gossip_addr", m.Addr)}
	if m.State == StateLeft {
		p.log.Info("member left", attrs...)
	} else {
		p.log.Warn("member failed", attrs...)
	}
}

// NotifyUpdate records new metadata of a member memberlist holds alive.
// Metadata marked leaving makes it left at once.
func (d *delegate) NotifyUpdate(node *memberlist.Node) {
	p := d.pool
	m, previous, ok := p.record(node, func(meta nodeMeta, _ *Member) State {
		if meta.Leaving {
			return StateLeft
		}
		return StateAlive
	})
	if !ok || node.Name == p.cfg.Name {
		return
	}
	if m.State == StateLeft && (previous == nil || previous.State != StateLeft) {
		p.log.Info("member is leaving", slog.String("member", m.Name), slog.String("role", string(m.Role)))
		return
	}
	p.log.Debug("member updated", slog.String("member", m.Name), slog.String("role", string(m.Role)),
		slog.String("gossip_addr", m.Addr), slog.String("state", string(m.State)))
}

// record stores node in the view with the state that stateOf picks from
// its metadata and previous entry. Since changes only with the state. It
// returns the new entry and a copy of the previous one, nil when there was
// none, and false when the metadata does not decode; NotifyAlive rejects
// such members, so that only happens for a member memberlist held before.
func (p *Pool) record(node *memberlist.Node, stateOf func(meta nodeMeta, previous *Member) State) (Member, *Member, bool) {
	meta, err := decodeMeta(node.Name, node.Meta)
	if err != nil {
		p.log.Warn("ignored a member event with invalid metadata", slog.String("member", node.Name), slog.Any("error", err))
		return Member{}, nil, false
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	var previous *Member
	if old, ok := p.members[node.Name]; ok {
		copied := *old
		previous = &copied
	}
	m := Member{
		Name:     node.Name,
		Role:     meta.Role,
		Addr:     net.JoinHostPort(node.Addr.String(), strconv.Itoa(int(node.Port))),
		HTTPAddr: meta.HTTPAddr,
		RaftAddr: meta.RaftAddr,
		State:    stateOf(meta, previous),
		Since:    now,
	}
	if previous != nil && previous.State == m.State {
		m.Since = previous.Since
	}
	p.members[node.Name] = &m
	return m, previous, true
}
