// Command throttle-central runs one central of a throttle-central cluster.
//
// Every flag can also be set with an environment variable: THROTTLE_ and
// the flag name in upper case with '-' as '_', for example THROTTLE_NODE_ID
// for --node-id. A flag on the command line wins over the environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/throttlecentral/throttle-central/internal/cli"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/central"
	"github.com/throttlecentral/throttle-central/membership"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the parsed flags.
type options struct {
	nodeID        string
	httpAddr      string
	httpAdvertise string
	raftAddr      string
	dataDir       string
	bootstrap     bool
	join          string
	tlsCert       string
	tlsKey        string
	tlsCA         string
	tlsSkipVerify bool
	accessKeys    string
	tokenFile     string
	metricsToken  bool
	raftTLS       bool
	profiling     bool
	nodeMonitor   bool
	raftHeartbeat time.Duration
	raftElection  time.Duration
	raftSnapshot  uint64
	allocation    string
	historySlots  int
	topUsers      int
	logLevel      string
	logFormat     string
	shutdown      time.Duration

	gossipAddr          string
	gossipAdvertise     string
	gossipJoin          string
	gossipKey           string
	gossipKeyFile       string
	gossipProbeInterval time.Duration
	gossipProbeTimeout  time.Duration
	gossipSuspicionMult int
	gossipReclaimTime   time.Duration
}

// parseFlags parses the command line and the settings from the environment
// and the config file. The help, when asked for, goes to help.
func parseFlags(args []string, help io.Writer) (options, error) {
	var o options
	flags := flag.NewFlagSet("throttle-central", flag.ContinueOnError)
	flags.StringVar(&o.nodeID, "node-id", "", "Raft server ID of this central, unique in the cluster and fixed for the life of its data directory (required)")
	flags.StringVar(&o.httpAddr, "http-addr", "127.0.0.1:8081", "host:port the HTTP API listens on")
	flags.StringVar(&o.httpAdvertise, "http-advertise", "", "host:port other centrals use to reach the HTTP API (default: the address --http-addr resolves to; required when it listens on all interfaces)")
	flags.StringVar(&o.raftAddr, "raft-addr", "127.0.0.1:7001", "host:port of the Raft transport; other centrals connect to this address, so it must not be a wildcard")
	flags.StringVar(&o.dataDir, "data-dir", "", "directory for the Raft log, stable store and snapshots (required; created if missing)")
	flags.BoolVar(&o.bootstrap, "bootstrap", false, "create a new one-server cluster when the data directory is empty (only for the first central of a new cluster); harmless on restart with the same data")
	flags.StringVar(&o.join, "join", "", "comma-separated HTTP host:port addresses of cluster members to ask for membership, retried with backoff")
	flags.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate file for the HTTP listener; with --tls-key the API and the report WebSocket (wss://) use TLS")
	flags.StringVar(&o.tlsKey, "tls-key", "", "PEM private key file for --tls-cert")
	flags.StringVar(&o.tlsCA, "tls-ca", "", "PEM CA bundle that verifies other centrals' certificates when forwarding or joining (default: the system roots)")
	flags.BoolVar(&o.tlsSkipVerify, "tls-skip-verify", false, "do not verify other centrals' certificates; for self-signed test set-ups only")
	flags.StringVar(&o.accessKeys, "access-keys-file", "", "file of SigV4 key pairs, one \"ACCESS_KEY SECRET\" per line; when set, report WebSockets without a node token must be presigned with one of them")
	flags.StringVar(&o.tokenFile, "token-file", "", "file of API bearer tokens, one \"SCOPE TOKEN\" per line with scope admin, node or read; when set, every route except /healthz, /readyz, /ui and /metrics needs a token, and SIGHUP reloads the file (default: no authentication)")
	flags.BoolVar(&o.metricsToken, "metrics-token-required", false, "make /metrics need a read or admin token from --token-file")
	flags.BoolVar(&o.nodeMonitor, "node-monitor", false, "let report WebSockets opened with a node token or a SigV4 signature send monitor frames, as the Lua protocol allows; with --token-file they need an admin token otherwise, since monitor data is for read tokens")
	flags.BoolVar(&o.raftTLS, "raft-tls", false, "secure the Raft transport with mutual TLS, using --tls-cert and --tls-key; --tls-ca must have signed every central's certificate, and each certificate must name the host of the central's --raft-addr")
	cli.DurationVar(flags, &o.raftHeartbeat, "raft-heartbeat-timeout", 0, "how long a follower waits without hearing from the leader before it starts an election (default 1s, as hashicorp/raft); lower means faster failover and more elections on a busy machine")
	cli.DurationVar(flags, &o.raftElection, "raft-election-timeout", 0, "how long a candidate waits for an election to finish, at least the heartbeat timeout (default 1s)")
	flags.Uint64Var(&o.raftSnapshot, "raft-snapshot-threshold", 0, "Raft log entries between snapshots (default 8192)")
	flags.BoolVar(&o.profiling, "debug-pprof", false, "serve Go runtime profiles under /debug/pprof/ on the HTTP listener; they expose internals, so keep it off in production")
	flags.StringVar(&o.allocation, "allocation", string(quota.DefaultMode), "how the leader splits each user's bucket among edge nodes: reserve (grants set aside and settled, close to the limit every second) or classic (the original central's rule)")
	flags.IntVar(&o.historySlots, "history-slots", quota.DefaultHistorySlots, "how many seconds of reports and quotas the leader keeps for the monitor API; memory grows with it")
	flags.IntVar(&o.topUsers, "metrics-top-users", quota.DefaultTopUsers, fmt.Sprintf("how many (service, user, resource) buckets with the highest admitted/limit ratio in the latest second the leader exports as throttle_top_user_admitted_ratio, one series each; 0 turns them off, at most %d", quota.MaxTopUsers))
	flags.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	flags.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	cli.DurationVar(flags, &o.shutdown, "shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take before the process exits anyway")
	flags.StringVar(&o.gossipAddr, "gossip-addr", "", "IP:port for gossip membership (memberlist), TCP and UDP on the same port, for example 10.0.0.1:7946; empty turns gossip off, and edge nodes then count as live while they report")
	flags.StringVar(&o.gossipAdvertise, "gossip-advertise", "", "IP:port other members reach this central's gossip at (default: the address of --gossip-addr; with 0.0.0.0 there, a private IP of this host)")
	flags.StringVar(&o.gossipJoin, "gossip-join", "", "comma-separated host:port gossip addresses of members to join, retried in the background until one responds; empty starts a new gossip pool")
	flags.StringVar(&o.gossipKey, "gossip-key", "", "gossip encryption key: the base64 of 16, 24 or 32 random bytes (openssl rand -base64 32), the same on every member; prefer --gossip-key-file or THROTTLE_GOSSIP_KEY, because other users can read command lines")
	flags.StringVar(&o.gossipKeyFile, "gossip-key-file", "", "file that holds the --gossip-key value")
	cli.DurationVar(flags, &o.gossipProbeInterval, "gossip-probe-interval", membership.DefaultProbeInterval, "time between failure probes of one random member; lower finds a dead edge node sooner for more traffic")
	cli.DurationVar(flags, &o.gossipProbeTimeout, "gossip-probe-timeout", membership.DefaultProbeTimeout, "how long a probe waits for an ack before other members are asked to probe, at most --gossip-probe-interval; about the network's 99th-percentile round trip")
	flags.IntVar(&o.gossipSuspicionMult, "gossip-suspicion-mult", membership.DefaultSuspicionMult, "a member that fails its probes stays suspect for at least this many probe intervals (times log10 of the member count when over 10, and up to 6 times longer while no other member confirms) before it is declared dead")
	cli.DurationVar(flags, &o.gossipReclaimTime, "gossip-reclaim-time", membership.DefaultDeadNodeReclaimTime, "how long after a member failed another process may take its node ID at a new gossip address")
	command := cli.Command{Usage: "Usage: throttle-central --node-id ID --data-dir DIR [--bootstrap | --join ADDR,...] [flags]", EnvPrefix: "THROTTLE_", EnvExample: "THROTTLE_NODE_ID"}
	if err := cli.Parse(flags, args, command, help, os.LookupEnv); err != nil {
		return o, err
	}
	switch {
	case o.nodeID == "":
		return o, errors.New("--node-id is required")
	case o.dataDir == "":
		return o, errors.New("--data-dir is required")
	case o.shutdown <= 0:
		return o, fmt.Errorf("--shutdown-timeout %v must be positive", o.shutdown)
	case o.bootstrap && o.join != "":
		return o, errors.New("--bootstrap and --join exclude each other: bootstrap only the first central of a new cluster, and start every other central, or one that comes back without its data, with --join")
	case (o.tlsCert == "") != (o.tlsKey == ""):
		return o, errors.New("--tls-cert and --tls-key go together; set both or neither")
	case o.metricsToken && o.tokenFile == "":
		return o, errors.New("--metrics-token-required needs --token-file, which contains the tokens")
	case o.raftTLS && (o.tlsCert == "" || o.tlsCA == ""):
		return o, errors.New("--raft-tls needs --tls-cert, --tls-key and --tls-ca: every central presents its certificate, and the CA verifies the others")
	case o.raftHeartbeat < 0 || o.raftElection < 0:
		return o, errors.New("--raft-heartbeat-timeout and --raft-election-timeout must not be negative")
	case o.raftHeartbeat > 0 && o.raftElection > 0 && o.raftElection < o.raftHeartbeat:
		return o, fmt.Errorf("--raft-election-timeout %v is below --raft-heartbeat-timeout %v; it must be at least as long", o.raftElection, o.raftHeartbeat)
	case o.historySlots < 1:
		return o, fmt.Errorf("--history-slots %d must be at least 1", o.historySlots)
	case o.topUsers < 0 || o.topUsers > quota.MaxTopUsers:
		return o, fmt.Errorf("--metrics-top-users %d is out of range; use 0 (off) to %d", o.topUsers, quota.MaxTopUsers)
	}
	if err := quota.ValidateName("--node-id", o.nodeID); err != nil {
		return o, err
	}
	if _, err := quota.ParseMode(o.allocation); err != nil {
		return o, fmt.Errorf("--allocation: %w", err)
	}
	if err := o.validateGossip(); err != nil {
		return o, err
	}
	return o, nil
}

// validateGossip checks the gossip flags. The key file is read later, in
// gossipKeyValue.
func (o options) validateGossip() error {
	if o.gossipAddr == "" {
		for _, f := range []struct{ name, value string }{
			{"--gossip-advertise", o.gossipAdvertise},
			{"--gossip-join", o.gossipJoin},
			{"--gossip-key", o.gossipKey},
			{"--gossip-key-file", o.gossipKeyFile},
		} {
			if f.value != "" {
				return fmt.Errorf("%s needs --gossip-addr, which turns gossip on", f.name)
			}
		}
		return nil
	}
	_, bindPort, err := membership.ParseIPPort(o.gossipAddr)
	if err != nil {
		return fmt.Errorf("--gossip-addr: %w", err)
	}
	if o.gossipAdvertise != "" {
		_, port, err := membership.ParseIPPort(o.gossipAdvertise)
		switch {
		case err != nil:
			return fmt.Errorf("--gossip-advertise: %w", err)
		case port == 0:
			return fmt.Errorf("--gossip-advertise %q has port 0; give the port other members connect to", o.gossipAdvertise)
		case bindPort == 0:
			return fmt.Errorf("--gossip-advertise %q needs a fixed port in --gossip-addr %q", o.gossipAdvertise, o.gossipAddr)
		}
	}
	for _, addr := range cli.SplitList(o.gossipJoin) {
		if err := membership.ValidateJoinAddr(addr); err != nil {
			return fmt.Errorf("--gossip-join: %w", err)
		}
	}
	if o.gossipKey != "" && o.gossipKeyFile != "" {
		return errors.New("--gossip-key and --gossip-key-file exclude each other; set one")
	}
	if _, err := membership.ParseKey(o.gossipKey); err != nil {
		return fmt.Errorf("--gossip-key: %w", err)
	}
	switch {
	case o.gossipProbeInterval <= 0:
		return fmt.Errorf("--gossip-probe-interval %v must be positive", o.gossipProbeInterval)
	case o.gossipProbeTimeout <= 0:
		return fmt.Errorf("--gossip-probe-timeout %v must be positive", o.gossipProbeTimeout)
	case o.gossipProbeTimeout > o.gossipProbeInterval:
		return fmt.Errorf("--gossip-probe-timeout %v is longer than --gossip-probe-interval %v; it must be at most as long", o.gossipProbeTimeout, o.gossipProbeInterval)
	case o.gossipSuspicionMult < 1:
		return fmt.Errorf("--gossip-suspicion-mult %d must be at least 1", o.gossipSuspicionMult)
	case o.gossipReclaimTime <= 0:
		return fmt.Errorf("--gossip-reclaim-time %v must be positive", o.gossipReclaimTime)
	}
	return nil
}

// gossipKeyValue returns --gossip-key, or the contents of
// --gossip-key-file checked as a key. Errors never contain the key.
func (o options) gossipKeyValue() (string, error) {
	if o.gossipKeyFile == "" {
		return o.gossipKey, nil
	}
	data, err := os.ReadFile(o.gossipKeyFile)
	if err != nil {
		return "", fmt.Errorf("--gossip-key-file: %w", err)
	}
	key := strings.TrimSpace(string(data))
	if key == "" {
		return "", fmt.Errorf("--gossip-key-file %s is empty", o.gossipKeyFile)
	}
	if _, err := membership.ParseKey(key); err != nil {
		return "", fmt.Errorf("--gossip-key-file %s: %w", o.gossipKeyFile, err)
	}
	return key, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "throttle-central: %v\nrun throttle-central --help for the flags\n", err)
		return 2
	}
	logger, err := cli.NewLogger(o.logLevel, o.logFormat, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "throttle-central:", err)
		return 2
	}

	var keys map[string]string
	if o.accessKeys != "" {
		if keys, err = central.LoadAccessKeys(o.accessKeys); err != nil {
			fmt.Fprintln(stderr, "throttle-central: --access-keys-file:", err)
			return 2
		}
	}
	tokens, err := o.loadTokens(logger)
	if err != nil {
		fmt.Fprintln(stderr, "throttle-central: --token-file:", err)
		return 2
	}
	gossipKey, err := o.gossipKeyValue()
	if err != nil {
		fmt.Fprintln(stderr, "throttle-central:", err)
		return 2
	}
	if !o.bootstrap && o.join == "" {
		logger.Warn("started without --bootstrap or --join: this central waits until a member adds it (POST /v1/cluster/join) or it finds its own Raft state in --data-dir",
			slog.String("data_dir", o.dataDir))
	}
	c, err := central.Start(central.Config{
		NodeID:        o.nodeID,
		HTTPAddr:      o.httpAddr,
		HTTPAdvertise: o.httpAdvertise,
		RaftAddr:      o.raftAddr,
		DataDir:       o.dataDir,
		Bootstrap:     o.bootstrap,
		Join:          cli.SplitList(o.join),
		Allocation:    quota.Mode(o.allocation),
		TLS:           central.TLSConfig{CertFile: o.tlsCert, KeyFile: o.tlsKey, CAFile: o.tlsCA, SkipPeerVerify: o.tlsSkipVerify},
		AccessKeys:    keys,
		Tokens:        tokens,
		RaftTLS:       o.raftTLS,
		Profiling:     o.profiling,
		Raft:          o.raftConfig(),
		HistorySlots:  o.historySlots,

		GossipAddr:      o.gossipAddr,
		GossipAdvertise: o.gossipAdvertise,
		GossipJoin:      cli.SplitList(o.gossipJoin),
		GossipKey:       gossipKey,
		Gossip:          o.gossipConfig(),

		MetricsTopUsers:      o.topUsers,
		MetricsTokenRequired: o.metricsToken,
		NodeMonitor:          o.nodeMonitor,

		Logger: logger,
	})
	if err != nil {
		logger.Error("start failed", slog.Any("error", err))
		return 1
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	code := waitForStop(signals, c, o, logger)
	ctx, cancel := context.WithTimeout(context.Background(), o.shutdown)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		logger.Error("shutdown failed", slog.Any("error", err))
		code = 1
	}
	return code
}

// waitForStop handles signals until SIGTERM, SIGINT or a fatal error of
// the central, and returns the exit code. SIGHUP reloads --token-file.
func waitForStop(signals <-chan os.Signal, c *central.Central, o options, logger *slog.Logger) int {
	for {
		select {
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				o.reloadTokens(c, logger)
				continue
			}
			logger.Info("shutting down", slog.String("signal", sig.String()))
			return 0
		case err := <-c.Fatal():
			logger.Error("stopping after a fatal error", slog.Any("error", err))
			return 1
		}
	}
}

// loadTokens reads --token-file, or returns nil when it is not set. It
// warns when other users may read the file.
func (o options) loadTokens(logger *slog.Logger) (*api.Tokens, error) {
	if o.tokenFile == "" {
		return nil, nil
	}
	tokens, err := api.LoadTokens(o.tokenFile)
	if err != nil {
		return nil, err
	}
	if tokens.Count(api.ScopeAdmin) == 0 {
		return nil, fmt.Errorf("token file %s has no admin token; add one, because a central sends the first admin token to the other centrals when it joins and when it relays WebSocket reports", o.tokenFile)
	}
	if info, err := os.Stat(o.tokenFile); err == nil && info.Mode().Perm()&0o077 != 0 {
		logger.Warn("the token file is readable by other users; restrict it with chmod 600",
			slog.String("token_file", o.tokenFile), slog.String("mode", info.Mode().Perm().String()))
	}
	logger.Info("loaded the token file", tokenCounts(o.tokenFile, tokens)...)
	return tokens, nil
}

// reloadTokens reads --token-file again and replaces the central's tokens.
// On any error the tokens in force stay.
func (o options) reloadTokens(c *central.Central, logger *slog.Logger) {
	if o.tokenFile == "" {
		logger.Warn("ignored SIGHUP: it reloads --token-file, which is not set")
		return
	}
	tokens, err := o.loadTokens(logger)
	if err == nil {
		err = c.ReloadTokens(tokens)
	}
	if err != nil {
		logger.Error("reloading the token file failed; the previous tokens stay in force",
			slog.String("token_file", o.tokenFile), slog.Any("error", err))
		return
	}
	logger.Info("reloaded the token file", slog.String("token_file", o.tokenFile))
}

func tokenCounts(path string, tokens *api.Tokens) []any {
	return []any{slog.String("token_file", path), slog.Int("admin", tokens.Count(api.ScopeAdmin)),
		slog.Int("node", tokens.Count(api.ScopeNode)), slog.Int("read", tokens.Count(api.ScopeRead))}
}

// gossipConfig turns the gossip timing flags into a membership.Config;
// central.Start fills in the rest.
func (o options) gossipConfig() membership.Config {
	return membership.Config{
		ProbeInterval:       o.gossipProbeInterval,
		ProbeTimeout:        o.gossipProbeTimeout,
		SuspicionMult:       o.gossipSuspicionMult,
		DeadNodeReclaimTime: o.gossipReclaimTime,
	}
}

// raftConfig turns the Raft flags into timing; zero keeps hashicorp/raft's
// defaults. A shorter heartbeat timeout also shortens the election timeout
// (unless set) and the leader lease to half of it, which hashicorp/raft
// requires to be at most the heartbeat timeout.
func (o options) raftConfig() raftnode.Config {
	cfg := raftnode.Config{
		HeartbeatTimeout:  o.raftHeartbeat,
		ElectionTimeout:   o.raftElection,
		SnapshotThreshold: o.raftSnapshot,
	}
	if o.raftHeartbeat > 0 {
		if cfg.ElectionTimeout == 0 {
			cfg.ElectionTimeout = o.raftHeartbeat
		}
		cfg.LeaderLeaseTimeout = o.raftHeartbeat / 2
	}
	return cfg
}
