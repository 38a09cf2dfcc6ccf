package membership

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Role is the kind of process a member is: a central or an edge node.
type Role string

const (
	// RoleCentral is a throttle-central server.
	RoleCentral Role = "central"
	// RoleEdge is an edge node that enforces quotas.
	RoleEdge Role = "edge"
)

// Defaults for the zero fields of Config. The probe, suspicion and gossip
// values are those of memberlist.DefaultLANConfig in memberlist v0.5.4.
const (
	DefaultProbeInterval    = 1 * time.Second
	DefaultProbeTimeout     = 500 * time.Millisecond
	DefaultSuspicionMult    = 4
	DefaultGossipInterval   = 200 * time.Millisecond
	DefaultPushPullInterval = 30 * time.Second
	// DefaultDeadNodeReclaimTime is how long a failed member's name stays
	// bound to its old address. memberlist's own default, 0, never lets a
	// failed member come back at a new address while its old entry is
	// still held, which is for at least 30 s after the failure
	// (memberlist's GossipToTheDeadTime).
	DefaultDeadNodeReclaimTime = 30 * time.Second
	// DefaultDeadRetention is how long a dead or left member stays in
	// Members and keeps Live false.
	DefaultDeadRetention = 10 * time.Minute
	// DefaultReconnectInterval is how often a member tries to rejoin
	// failed members and, when no other member is alive in its view, its
	// Join addresses.
	DefaultReconnectInterval = 30 * time.Second
	// DefaultLeaveTimeout bounds Leave in Close when the context has no
	// deadline.
	DefaultLeaveTimeout = 5 * time.Second
)

// Config configures one member of the gossip pool.
type Config struct {
	// Name is the memberlist node name, which is the node ID. It must be
	// unique in the pool.
	Name string
	// Role is RoleCentral or RoleEdge.
	Role Role
	// BindAddr is the IP:port memberlist listens on, over TCP and UDP on
	// the same port. Port 0 lets the kernel pick a port free for both;
	// Addr returns it. 0.0.0.0 listens on every interface and advertises
	// a private IP of this host unless AdvertiseAddr is set.
	BindAddr string
	// AdvertiseAddr is the IP:port other members reach this one at. Empty
	// means the bound address. It needs a fixed port in BindAddr.
	AdvertiseAddr string
	// Join lists host:port gossip addresses of members to join. They are
	// tried in the background until one responds. Empty starts a new pool.
	Join []string
	// Key is the base64 (standard encoding) of a 16, 24 or 32-byte
	// AES key that encrypts and authenticates all gossip. Members with
	// another key, or none, cannot join. Empty means no encryption.
	Key string

	// HTTPAddr and RaftAddr are a central's advertised addresses, carried
	// in its metadata; a central needs both.
	HTTPAddr string
	RaftAddr string

	// ProbeInterval is the time between probes of one random member.
	// Zero means DefaultProbeInterval.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a probe waits for an ack before probing
	// indirectly, at most ProbeInterval. Zero means DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// SuspicionMult sets how long a member stays suspect before it is
	// declared dead: at least SuspicionMult × max(1, log10(members)) ×
	// ProbeInterval, and up to 6 times that while no other member confirms
	// the suspicion. Zero means DefaultSuspicionMult.
	SuspicionMult int
	// GossipInterval is the time between gossip rounds. Zero means
	// DefaultGossipInterval.
	GossipInterval time.Duration
	// PushPullInterval is the time between full state exchanges with one
	// random member. Zero means DefaultPushPullInterval.
	PushPullInterval time.Duration
	// DeadNodeReclaimTime is how long after a member failed another
	// process may take its name at a new address. Zero means
	// DefaultDeadNodeReclaimTime.
	DeadNodeReclaimTime time.Duration
	// DeadRetention is how long dead and left members stay in Members.
	// Zero means DefaultDeadRetention.
	DeadRetention time.Duration
	// ReconnectInterval is the time between attempts to rejoin failed
	// members. It also caps the backoff of the first join. Zero means
	// DefaultReconnectInterval.
	ReconnectInterval time.Duration

	// Logger receives the pool's events and memberlist's log lines; nil
	// means slog.Default().
	Logger *slog.Logger
	// Registerer receives the pool's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// withDefaults returns cfg with every zero field set to its default.
func (cfg Config) withDefaults() Config {
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.SuspicionMult == 0 {
		cfg.SuspicionMult = DefaultSuspicionMult
	}
	if cfg.GossipInterval == 0 {
		cfg.GossipInterval = DefaultGossipInterval
	}
	if cfg.PushPullInterval == 0 {
		cfg.PushPullInterval = DefaultPushPullInterval
	}
	if cfg.DeadNodeReclaimTime == 0 {
		cfg.DeadNodeReclaimTime = DefaultDeadNodeReclaimTime
	}
	if cfg.DeadRetention == 0 {
		cfg.DeadRetention = DefaultDeadRetention
	}
	if cfg.ReconnectInterval == 0 {
		cfg.ReconnectInterval = DefaultReconnectInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// validate checks a Config after withDefaults. Every error names the
// field and its value, except for the key, whose length it names.
func (cfg Config) validate() error {
	if cfg.Name == "" {
		return errors.New("membership: Name (the node ID) is required")
	}
	if cfg.Role != RoleCentral && cfg.Role != RoleEdge {
		return fmt.Errorf("membership: role %q is invalid; use %q or %q", cfg.Role, RoleCentral, RoleEdge)
	}
	if _, port, err := ParseIPPort(cfg.BindAddr); err != nil {
		return fmt.Errorf("membership: bind address: %w", err)
	} else if port == 0 && cfg.AdvertiseAddr != "" {
		return fmt.Errorf("membership: advertise address %q needs a fixed bind port, but bind address %q has port 0", cfg.AdvertiseAddr, cfg.BindAddr)
	}
	if cfg.AdvertiseAddr != "" {
		if _, port, err := ParseIPPort(cfg.AdvertiseAddr); err != nil {
			return fmt.Errorf("membership: advertise address: %w", err)
		} else if port == 0 {
			return fmt.Errorf("membership: advertise address %q has port 0; give the port other members connect to", cfg.AdvertiseAddr)
		}
	}
	for _, addr := range cfg.Join {
		if err := ValidateJoinAddr(addr); err != nil {
			return fmt.Errorf("membership: join address: %w", err)
		}
	}
	if _, err := ParseKey(cfg.Key); err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	if cfg.Role == RoleCentral && (cfg.HTTPAddr == "" || cfg.RaftAddr == "") {
		return fmt.Errorf("membership: a central needs HTTPAddr and RaftAddr in its metadata, got %q and %q", cfg.HTTPAddr, cfg.RaftAddr)
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{
		{"ProbeInterval", cfg.ProbeInterval},
		{"ProbeTimeout", cfg.ProbeTimeout},
		{"GossipInterval", cfg.GossipInterval},
		{"PushPullInterval", cfg.PushPullInterval},
		{"DeadNodeReclaimTime", cfg.DeadNodeReclaimTime},
		{"DeadRetention", cfg.DeadRetention},
		{"ReconnectInterval", cfg.ReconnectInterval},
	} {
		if d.value < 0 {
			return fmt.Errorf("membership: %s %v is negative", d.name, d.value)
		}
	}
	if cfg.ProbeTimeout > cfg.ProbeInterval {
		return fmt.Errorf("membership: probe timeout %v is longer than the probe interval %v", cfg.ProbeTimeout, cfg.ProbeInterval)
	}
	if cfg.SuspicionMult < 1 {
		return fmt.Errorf("membership: suspicion multiplier %d must be at least 1", cfg.SuspicionMult)
	}
	return nil
}

// ParseKey decodes a gossip encryption key: the standard base64 encoding,
// with padding, of 16, 24 or 32 bytes (AES-128, AES-192 or AES-256), as
// `openssl rand -base64 32` prints it. Surrounding white space is ignored.
// An empty key returns nil. Errors name the decoded length, never the key.
func ParseKey(key string) ([]byte, error) {
	key = strings.TrimSpace(key)
	if key == "" {
		return nil, nil
	}
	raw, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		var corrupt base64.CorruptInputError
		if errors.As(err, &corrupt) {
			return nil, fmt.Errorf("gossip key of %d characters is not valid base64 (invalid character or padding at offset %d)", len(key), int64(corrupt))
		}
		return nil, fmt.Errorf("gossip key of %d characters is not valid base64", len(key))
	}
	switch len(raw) {
	case 16, 24, 32:
		return raw, nil
	}
	return nil, fmt.Errorf("gossip key decodes to %d bytes; it must decode to 16, 24 or 32 bytes (for example `openssl rand -base64 32`)", len(raw))
}

// ParseIPPort splits an IP:port address. memberlist binds and advertises
// IP addresses only, so a host name is an error.
func ParseIPPort(addr string) (net.IP, int, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, 0, fmt.Errorf("%q is not an IP:port address: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, 0, fmt.Errorf("%q: host %q is not an IP address; memberlist binds and advertises IP addresses only", addr, host)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, 0, fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, portText)
	}
	return ip, int(port), nil
}

// ValidateJoinAddr checks a host:port address to join. The host may be a
// name, which memberlist resolves.
func ValidateJoinAddr(addr string) error {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not a host:port address: %w", addr, err)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", addr)
	}
	if port, err := strconv.ParseUint(portText, 10, 16); err != nil || port == 0 {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", addr, portText)
	}
	return nil
}
