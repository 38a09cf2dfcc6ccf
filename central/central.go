// Package central wires one throttle-central server together: the Raft
// node with the replicated state, the HTTP API, joining a cluster, and the
// ordered shutdown. cmd/throttle-central turns flags into a Config and
// calls Start.
package central

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/membership"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// Config configures one central.
type Config struct {
	// NodeID is the Raft server ID; it must stay the same for the life of
	// DataDir.
	NodeID string
	// HTTPAddr is the host:port the API listens on; port 0 picks a free one.
	HTTPAddr string
	// HTTPAdvertise is the host:port other centrals use to reach the API.
	// Empty means the address the listener resolved from HTTPAddr.
	HTTPAdvertise string
	// RaftAddr is the host:port of the Raft transport, also advertised.
	RaftAddr string
	// DataDir holds the Raft log, stable store and snapshots.
	DataDir string
	// Bootstrap creates a one-server cluster when DataDir is empty.
	Bootstrap bool
	// Join lists HTTP addresses of cluster members to ask for membership.
	// Empty with Bootstrap false means the node waits to be added.
	Join []string
	// JoinRetry is the first delay between join attempts; it doubles up to
	// MaxJoinRetry. Zero means DefaultJoinRetry.
	JoinRetry time.Duration

	// Allocation is the allocation mode; empty means quota.DefaultMode.
	Allocation quota.Mode
	// HistorySlots is how many slots of monitor data the leader keeps; zero
	// means quota.DefaultHistorySlots.
	HistorySlots int
	// CheckpointEvery is how often, in slots, the leader replicates bucket
	// levels for a successor; zero means DefaultCheckpointEvery.
	CheckpointEvery int64
	// MetricsTopUsers is how many buckets with the highest admitted/limit
	// ratio the leader exports as throttle_top_user_admitted_ratio, from 0
	// (none) to quota.MaxTopUsers. cmd/throttle-central sets it from
	// --metrics-top-users, whose default is quota.DefaultTopUsers.
	MetricsTopUsers int

	// TLS secures the HTTP listener; the zero value serves plain HTTP.
	TLS TLSConfig
	// AccessKeys maps SigV4 access keys to secrets. When set, every
	// WebSocket handshake without a node token must carry a valid
	// presigned query.
	AccessKeys map[string]string
	// Tokens, when set, makes the HTTP API require bearer tokens (see
	// api.Config.Tokens). Its first admin token is the one this central
	// sends when it joins through another central's API and when it
	// relays WebSocket reports to the leader, so every central needs the
	// same token file. Nil leaves the API open.
	Tokens *api.Tokens
	// MetricsTokenRequired makes /metrics need a read or admin token; it
	// needs Tokens.
	MetricsTokenRequired bool
	// RaftTLS secures the Raft transport with mutual TLS, with the
	// certificate and key of TLS and the CA of TLS.CAFile, which must sign
	// every central's certificate.
	RaftTLS bool

	// NodeMonitor lets report WebSockets opened with a node credential
	// send monitor frames (see api.Config.NodeMonitor).
	NodeMonitor bool

	// Profiling serves Go's runtime profiles under /debug/pprof/.
	Profiling bool

	// GossipAddr is the IP:port of gossip membership (memberlist), TCP and
	// UDP on the same port; port 0 picks a free one. Empty turns gossip
	// off: edge nodes then count as live while they report.
	GossipAddr string
	// GossipAdvertise is the IP:port other members reach this central's
	// gossip at. Empty means the bound address.
	GossipAdvertise string
	// GossipJoin lists gossip addresses of members to join, retried in the
	// background until one responds.
	GossipJoin []string
	// GossipKey is the base64 of a 16, 24 or 32-byte key that encrypts
	// gossip; empty means none.
	GossipKey string
	// Gossip holds the gossip timing (probe interval and timeout,
	// suspicion multiplier, reclaim time and the others); zero fields keep
	// membership's defaults. Name, Role, the addresses, Join, Key, Logger
	// and Registerer are filled in from the fields above.
	Gossip membership.Config

	// Raft holds the Raft timing; NodeID, RaftAddr, DataDir, Bootstrap,
	// FSM and Logger are filled in from the fields above.
	Raft raftnode.Config

	Logger   *slog.Logger
	Registry *prometheus.Registry
}

const (
	// DefaultJoinRetry is the first delay between join attempts.
	DefaultJoinRetry = 500 * time.Millisecond
	// MaxJoinRetry caps the delay between join attempts.
	MaxJoinRetry = 5 * time.Second
)

// Central is one running server.
type Central struct {
	cfg      Config
	log      *slog.Logger
	fsm      *fsm.FSM
	node     *raftnode.Node
	alloc    *allocator
	peerTLS  *tls.Config
	api      *api.Server
	listener net.Listener
	httpAddr string
	ready    *readiness
	// gossip is this central's gossip member; nil when gossip is off.
	gossip *membership.Pool

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	fatal   chan error
	closeMu sync.Mutex
	closed  bool
}

// Start opens the Raft node, starts the API and, when Join is set, requests
// membership from the cluster in the background.
func Start(cfg Config) (*Central, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.JoinRetry <= 0 {
		cfg.JoinRetry = DefaultJoinRetry
	}
	log := cfg.Logger.With(slog.String("component", "central"), slog.String("node_id", cfg.NodeID))
	hasState := hasRaftState(cfg.DataDir)
	removed, err := loadRemoval(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if notice, ok := removed.Removed(); ok {
		log.Error("this central was removed from its cluster and returns 503 to every request but health and metrics; delete its data directory and start it with --join to bring it back",
			slog.String("leader", notice.Leader), slog.Time("at", notice.At))
	}

	auth, err := handshakeAuth(cfg.AccessKeys)
	if err != nil {
		return nil, err
	}
	var serverTLS, peerTLS, raftTLS *tls.Config
	if cfg.TLS.enabled() {
		if serverTLS, err = cfg.TLS.serverConfig(); err != nil {
			return nil, err
		}
		if peerTLS, err = cfg.TLS.peerConfig(); err != nil {
			return nil, err
		}
	}
	if cfg.RaftTLS {
		if raftTLS, err = cfg.TLS.raftConfig(); err != nil {
			return nil, err
		}
	}
	warnAboutSecurity(log, cfg)

	listener, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen for HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	httpAddr := cfg.HTTPAdvertise
	if httpAddr == "" {
		httpAddr = listener.Addr().String()
		if host, _, _ := net.SplitHostPort(httpAddr); net.ParseIP(host).IsUnspecified() {
			listener.Close()
			return nil, fmt.Errorf("HTTP address %s listens on all interfaces; set the address other centrals reach it at with --http-advertise", cfg.HTTPAddr)
		}
	}

	alloc := newAllocator(cfg.Logger, quota.Config{Mode: cfg.Allocation, HistorySlots: cfg.HistorySlots, TopUsers: cfg.MetricsTopUsers}, cfg.CheckpointEvery)
	if _, err := quota.New(alloc.config); err != nil {
		listener.Close()
		return nil, err
	}
	if alloc.metrics, err = newAllocatorMetrics(cfg.Registry); err != nil {
		listener.Close()
		return nil, err
	}
	state := fsm.New(fsm.Options{Logger: cfg.Logger, Listener: alloc})
	alloc.state = state
	raftCfg := cfg.Raft
	raftCfg.NodeID, raftCfg.RaftAddr, raftCfg.DataDir = cfg.NodeID, cfg.RaftAddr, cfg.DataDir
	raftCfg.Bootstrap, raftCfg.FSM, raftCfg.Logger = cfg.Bootstrap, state, cfg.Logger
	raftCfg.TLS = raftTLS
	node, err := raftnode.Open(raftCfg)
	if err != nil {
		listener.Close()
		return nil, err
	}
	gossip, err := startGossip(cfg, httpAddr, node.Addr())
	if err != nil {
		if closeErr := node.Close(context.Background()); closeErr != nil {
			log.Error("closing Raft after gossip failed to start", slog.Any("error", closeErr))
		}
		listener.Close()
		return nil, err
	}

	alloc.node = node
	c := &Central{
		cfg:      cfg,
		log:      log,
		fsm:      state,
		node:     node,
		alloc:    alloc,
		listener: listener,
		httpAddr: httpAddr,
		ready:    &readiness{node: node, allocating: alloc.running, removal: removed},
		gossip:   gossip,
		fatal:    make(chan error, 1),
	}
	alloc.liveness = c.liveness()
	c.api, err = api.New(api.Config{
		NodeID:  cfg.NodeID,
		Cluster: node,
		State:   state,
		Reports: alloc,
		Monitor: alloc,
		Members: c.memberView(),
		Removal: removed,

		HandshakeAuth:        auth,
		Tokens:               cfg.Tokens,
		MetricsTokenRequired: cfg.MetricsTokenRequired,
		NodeMonitor:          cfg.NodeMonitor,
		PeerTLS:              peerTLS,
		Profiling:            cfg.Profiling,
		Ready:                c.ready.check,
		Logger:               cfg.Logger,
		Registry:             cfg.Registry,
	})
	if err != nil {
		if closeErr := c.closeGossip(context.Background()); closeErr != nil {
			log.Error("closing gossip after the API failed to start", slog.Any("error", closeErr))
		}
		c.closeRaft(context.Background())
		listener.Close()
		return nil, err
	}

	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.peerTLS = peerTLS
	served := listener
	if serverTLS != nil {
		served = tls.NewListener(listener, serverTLS)
	}
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		if err := c.api.Serve(served); err != nil {
			c.fail(fmt.Errorf("HTTP server on %s: %w", listener.Addr(), err))
		}
	}()
	go func() {
		defer c.wg.Done()
		c.followLeadership(ctx)
	}()
	if len(cfg.Join) > 0 {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.joinLoop(ctx, hasState)
		}()
	}
	log.Info("central started", slog.String("http_addr", httpAddr), slog.String("raft_addr", node.Addr()),
		slog.String("data_dir", cfg.DataDir), slog.Bool("bootstrap", cfg.Bootstrap), slog.Bool("has_state", hasState),
		slog.String("gossip_addr", c.GossipAddr()),
		slog.Bool("tls", serverTLS != nil), slog.Bool("raft_tls", raftTLS != nil), slog.Bool("tokens", cfg.Tokens != nil),
		slog.Int("access_keys", len(cfg.AccessKeys)), slog.String("allocation", string(alloc.config.Mode)))
	return c, nil
}

// ReloadTokens replaces the API's token set, for a changed token file.
// It fails when the central was started without tokens or when tokens has
// no admin token; the old set then stays in force.
func (c *Central) ReloadTokens(tokens *api.Tokens) error {
	return c.api.SetTokens(tokens)
}

// HTTPAddr returns the advertised HTTP address.
func (c *Central) HTTPAddr() string { return c.httpAddr }

// RaftAddr returns the advertised Raft address.
func (c *Central) RaftAddr() string { return c.node.Addr() }

// Node returns the Raft node.
func (c *Central) Node() *raftnode.Node { return c.node }

// State returns the replicated state.
func (c *Central) State() *fsm.FSM { return c.fsm }

// Fatal returns a channel that receives an error when the central cannot go
// on, for example when the cluster refuses to let it join.
func (c *Central) Fatal() <-chan error { return c.fatal }

func (c *Central) fail(err error) {
	select {
	case c.fatal <- err:
	default:
	}
}

// followLeadership reacts to every leadership change in order. On gaining
// leadership it runs a barrier, so the state holds every committed entry,
// then makes sure the cluster records this server's HTTP address.
func (c *Central) followLeadership(ctx context.Context) {
	changes := c.node.LeadershipChanges()
	for {
		select {
		case <-ctx.Done():
			return
		case leader, ok := <-changes:
			if !ok {
				return
			}
			if !leader {
				c.alloc.stop()
				c.log.Info("leadership lost; stopped assigning quotas")
				continue
			}
			start := time.Now()
			if err := c.node.Barrier(ctx); err != nil {
				c.log.Warn("barrier after gaining leadership failed", slog.Any("error", err))
				continue
			}
			c.log.Info("leadership gained", slog.Duration("barrier", time.Since(start)))
			c.recordOwnAddress(ctx)
			if err := c.alloc.start(); err != nil {
				c.log.Error("starting the quota allocator failed", slog.Any("error", err))
			}
		}
	}
}

// recordOwnAddress replicates this server's addresses when the state does
// not hold them yet, so followers can forward to it.
func (c *Central) recordOwnAddress(ctx context.Context) {
	own := fsm.Server{ID: c.cfg.NodeID, HTTPAddr: c.httpAddr, RaftAddr: c.node.Addr()}
	if got, ok := c.fsm.Server(own.ID); ok && got == own {
		return
	}
	data, err := fsm.Encode(fsm.SetServerCommand(own))
	if err == nil {
		_, err = c.node.Apply(ctx, data)
	}
	if err != nil {
		c.log.Warn("recording this server's addresses failed", slog.Any("error", err))
		return
	}
	c.log.Info("recorded this server's addresses", slog.String("http_addr", own.HTTPAddr), slog.String("raft_addr", own.RaftAddr))
}

// Close shuts the central down in order: stop taking requests, leave the
// gossip pool, stop the background work, hand leadership over and shut
// Raft down, then close the stores. It is idempotent.
func (c *Central) Close(ctx context.Context) error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	start := time.Now()

	var errs []error
	if err := c.api.Shutdown(ctx); err != nil {
		errs = append(errs, err)
	}
	c.cancel()
	c.alloc.stop()
	// Raft first: a leader hands leadership over in milliseconds, while
	// leaving the gossip pool takes most of a second, during which writes
	// forwarded to a leader whose API has stopped would fail.
	if err := c.closeRaft(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := c.closeGossip(ctx); err != nil {
		errs = append(errs, err)
	}
	c.wg.Wait()
	// followLeadership may have started the allocator after the stop
	// above and before it saw the cancelled context.
	c.alloc.stop()
	err := errors.Join(errs...)
	if err != nil {
		c.log.Warn("central stopped, with errors during the shutdown", slog.Duration("duration", time.Since(start)), slog.Any("error", err))
	} else {
		c.log.Info("central stopped", slog.Duration("duration", time.Since(start)))
	}
	return err
}

func (c *Central) closeRaft(ctx context.Context) error {
	return c.node.Close(ctx)
}

// hasRaftState reports whether dir already holds a Raft store.
func hasRaftState(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "raft.db"))
	return err == nil
}
