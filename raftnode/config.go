package raftnode

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// DefaultApplyTimeout is the ApplyTimeout used when Config leaves it zero.
const DefaultApplyTimeout = 5 * time.Second

// minTimeout is the smallest timing value hashicorp/raft v1.7.2 accepts for
// the heartbeat, election and leader lease timeouts and the snapshot
// interval.
const minTimeout = 5 * time.Millisecond

// Config configures a Node. Zero durations and counts take the defaults
// documented on each field. The raft defaults are those of
// raft.DefaultConfig in hashicorp/raft v1.7.2. Tests shorten them.
type Config struct {
	// NodeID is this server's Raft server ID. It must stay the same for the
	// life of the data directory.
	NodeID string

	// RaftAddr is the host:port the Raft transport listens on. The same
	// address, as the listener resolved it, is advertised to the other
	// servers, so the host must not be a wildcard such as 0.0.0.0 or [::].
	// Port 0 picks a free port, and Node.Addr returns the address in use.
	RaftAddr string

	// TLS, when set, secures the transport with mutual TLS: Certificates
	// holds this server's certificate, which it presents both when it
	// dials and when it is dialed, RootCAs verifies the servers it dials
	// and ClientCAs the servers that dial it. A peer's certificate must name
	// the host of its Raft address. Nil means plain TCP, which anyone who
	// reaches RaftAddr can use to vote and to replace the log.
	TLS *tls.Config

	// DataDir contains the Raft log and stable store (raft.db) and the
	// snapshots (snapshots/). It is created when missing.
	DataDir string

	// Bootstrap creates a one-server cluster of this node when DataDir has
	// no Raft state yet. With existing state it does nothing, so a node can
	// be restarted with the same settings.
	Bootstrap bool

	// FSM is the replicated state machine.
	FSM raft.FSM

	// Logger receives the node's log lines with component=raftnode, and
	// hashicorp/raft's with component=raft. Nil means slog.Default().
	Logger *slog.Logger

	// ApplyTimeout bounds Apply, Barrier and membership changes when the
	// context has no earlier deadline. Default DefaultApplyTimeout.
	ApplyTimeout time.Duration

	// HeartbeatTimeout is how long a follower waits without contact from
	// the leader before it starts an election. Raft picks a random wait
	// between one and two times this value. Default 1s.
	HeartbeatTimeout time.Duration

	// ElectionTimeout is how long a candidate waits for an election to
	// finish before starting another. Must be at least HeartbeatTimeout.
	// Default 1s.
	ElectionTimeout time.Duration

	// LeaderLeaseTimeout is how long a leader stays leader without contact
	// from a quorum. Must be at most HeartbeatTimeout. Default 500ms.
	LeaderLeaseTimeout time.Duration

	// CommitTimeout is how long the leader waits before sending a heartbeat
	// that carries a new commit index when there is nothing else to send.
	// Default 50ms.
	CommitTimeout time.Duration

	// SnapshotInterval is how often raft checks whether to take a snapshot.
	// Raft adds a random delay of up to the same length. Default 120s.
	SnapshotInterval time.Duration

	// SnapshotThreshold is how many log entries since the last snapshot
	// trigger a new snapshot at the next check. Default 8192.
	SnapshotThreshold uint64

	// TrailingLogs is how many log entries stay in the log after a
	// snapshot, so a follower that is slightly behind catches up from the
	// log instead of a snapshot. Default 10240.
	TrailingLogs uint64
}

// withDefaults returns cfg with every zero field that has a default set.
func (cfg Config) withDefaults() Config {
	defaults := raft.DefaultConfig()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = DefaultApplyTimeout
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = defaults.HeartbeatTimeout
	}
	if cfg.ElectionTimeout == 0 {
		cfg.ElectionTimeout = defaults.ElectionTimeout
	}
	if cfg.LeaderLeaseTimeout == 0 {
		cfg.LeaderLeaseTimeout = defaults.LeaderLeaseTimeout
	}
	if cfg.CommitTimeout == 0 {
		cfg.CommitTimeout = defaults.CommitTimeout
	}
	if cfg.SnapshotInterval == 0 {
		cfg.SnapshotInterval = defaults.SnapshotInterval
	}
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = defaults.SnapshotThreshold
	}
	if cfg.TrailingLogs == 0 {
		cfg.TrailingLogs = defaults.TrailingLogs
	}
	return cfg
}

// validate checks a Config after withDefaults. Each error names the field.
func (cfg Config) validate() error {
	var errs []error
	if cfg.NodeID == "" {
		errs = append(errs, errors.New("NodeID is missing"))
	}
	if err := validateRaftAddr(cfg.RaftAddr); err != nil {
		errs = append(errs, fmt.Errorf("RaftAddr: %w", err))
	}
	if cfg.DataDir == "" {
		errs = append(errs, errors.New("DataDir is missing"))
	}
	if cfg.TLS != nil {
		if err := validateTLS(cfg.TLS); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.FSM == nil {
		errs = append(errs, errors.New("FSM is missing"))
	}

	durations := []struct {
		field string
		value time.Duration
		min   time.Duration
	}{
		{"ApplyTimeout", cfg.ApplyTimeout, time.Millisecond},
		{"HeartbeatTimeout", cfg.HeartbeatTimeout, minTimeout},
		{"ElectionTimeout", cfg.ElectionTimeout, minTimeout},
		{"LeaderLeaseTimeout", cfg.LeaderLeaseTimeout, minTimeout},
		{"CommitTimeout", cfg.CommitTimeout, time.Millisecond},
		{"SnapshotInterval", cfg.SnapshotInterval, minTimeout},
	}
	for _, d := range durations {
		if d.value < d.min {
			errs = append(errs, fmt.Errorf("%s is %s, the minimum is %s", d.field, d.value, d.min))
		}
	}
	if cfg.ElectionTimeout < cfg.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("ElectionTimeout (%s) is less than HeartbeatTimeout (%s)", cfg.ElectionTimeout, cfg.HeartbeatTimeout))
	}
	if cfg.LeaderLeaseTimeout > cfg.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("LeaderLeaseTimeout (%s) is greater than HeartbeatTimeout (%s)", cfg.LeaderLeaseTimeout, cfg.HeartbeatTimeout))
	}

	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("raftnode: invalid config: %w", err)
	}
	return nil
}

// validateRaftAddr checks that addr is host:port with a host that other
// servers can dial.
func validateRaftAddr(addr string) error {
	if addr == "" {
		return errors.New("missing, expected host:port")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid address %q, expected host:port: %w", addr, err)
	}
	if host == "" {
		return fmt.Errorf("address %q has no host; other servers dial this address, so give an IP or a host name", addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("address %q has a wildcard host; other servers dial this address, so give the IP they can reach", addr)
	}
	if number, err := strconv.ParseUint(port, 10, 16); err != nil || (number == 0 && port != "0") {
		return fmt.Errorf("address %q has an invalid port %q", addr, port)
	}
	return nil
}

// raftConfig builds the hashicorp/raft configuration.
func (cfg Config) raftConfig(logger *hclogAdapter, notifyCh chan<- bool) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.TrailingLogs
	rc.NotifyCh = notifyCh
	rc.Logger = logger
	// A leader that removes itself steps down and stays a follower until
	// its owner calls Close, so the Node never holds a raft that stopped
	// on its own.
	rc.ShutdownOnRemove = false
	// PreVoteDisabled stays false. A server that was removed or cut off
	// then requests pre-votes, which do not raise its term, before it
	// starts a real election.
	return rc
}
