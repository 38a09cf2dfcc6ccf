// Command throttle-agent is a sidecar for applications not written in Go.
// It runs the edge library (package edge) of one edge node behind a small
// HTTP API on the loopback interface. The application requests a throttle
// check before each request and sends what the request consumed after it.
// The agent reports to the centrals once a second and enforces their
// quotas.
//
// Every flag can also be set with an environment variable: THROTTLE_AGENT_
// and the flag name in upper case with '-' as '_', for example
// THROTTLE_AGENT_CENTRALS for --centrals. A flag on the command line wins
// over the environment.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"github.com/throttlecentral/throttle-central/internal/cli"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/throttlecentral/throttle-central/edge"
	"github.com/throttlecentral/throttle-central/membership"
	"github.com/throttlecentral/throttle-central/quota"
)

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-signals
		cancel(fmt.Errorf("received signal %v", sig))
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stderr, nil))
}

// options are the parsed flags.
type options struct {
	listen          string
	listenAny       bool
	nodeID          string
	centrals        []string
	fallback        edge.FallbackPolicy
	serviceFallback map[string]edge.FallbackPolicy
	tlsCA           string
	tlsSkipVerify   bool
	tokenFile       string
	requestTimeout  time.Duration
	gossipAddr      string
	gossipAdvertise string
	gossipJoin      []string
	gossipKey       string
	gossipKeyFile   string
	logLevel        string
	logFormat       string
	shutdown        time.Duration
}

// environment is the process state parseFlags reads: environment variables
// and the host name.
type environment struct {
	lookup   func(string) (string, bool)
	hostname func() (string, error)
	// stdout receives the help.
	stdout io.Writer
}

var processEnvironment = environment{lookup: os.LookupEnv, hostname: os.Hostname, stdout: os.Stdout}

// parseFlags parses the command line and the settings from the environment
// and the config file. The help, when asked for, goes to help.
func parseFlags(args []string, help io.Writer, env environment) (options, error) {
	var (
		o               options
		centrals        string
		fallback        string
		serviceFallback string
		gossipJoin      string
	)
	flags := flag.NewFlagSet("throttle-agent", flag.ContinueOnError)
	flags.StringVar(&o.listen, "listen", "127.0.0.1:9090", "host:port of the local HTTP API; it must be a loopback address unless --listen-any is set")
	flags.BoolVar(&o.listenAny, "listen-any", false, "allow --listen on a non-loopback address; the API has no authentication, so anyone who reaches it can consume a user's quota")
	flags.StringVar(&o.nodeID, "node-id", "", "name of this edge node in reports and gossip, unique in the fleet (default: the host name)")
	flags.StringVar(&centrals, "centrals", "", "comma-separated base URLs of the centrals, for example http://10.0.0.1:8081,http://10.0.0.2:8081 (required)")
	flags.StringVar(&fallback, "fallback", "safe-share", "what to do for a service without quota for the current second: open (allow), closed (reject) or safe-share (hold each user to the limit divided by the live edge nodes)")
	flags.StringVar(&serviceFallback, "service-fallback", "", "comma-separated SERVICE=POLICY pairs that override --fallback for some services, for example front=closed,batch=open")
	flags.StringVar(&o.tlsCA, "tls-ca", "", "PEM CA bundle that verifies the centrals' certificates (default: the system roots)")
	flags.BoolVar(&o.tlsSkipVerify, "tls-skip-verify", false, "do not verify the centrals' certificates; for self-signed test set-ups only")
	flags.StringVar(&o.tokenFile, "token-file", "", "file with a bearer token to send to the centrals as \"Authorization: Bearer <token>\"")
	cli.DurationVar(flags, &o.requestTimeout, "request-timeout", edge.DefaultRequestTimeout, "how long one report request to one central may take before the next central is tried")
	flags.StringVar(&o.gossipAddr, "gossip-addr", "", "IP:port to gossip on as an edge member, TCP and UDP; empty disables gossip, and the centrals then count this node live while it reports")
	flags.StringVar(&o.gossipAdvertise, "gossip-advertise", "", "IP:port other members reach this node's gossip at (default: the --gossip-addr address)")
	flags.StringVar(&gossipJoin, "gossip-join", "", "comma-separated host:port gossip addresses of members to join, retried in the background")
	flags.StringVar(&o.gossipKey, "gossip-key", "", "base64 of a 16, 24 or 32-byte AES key that encrypts gossip, the same on every member; prefer --gossip-key-file or THROTTLE_AGENT_GOSSIP_KEY, because other users can read command lines")
	flags.StringVar(&o.gossipKeyFile, "gossip-key-file", "", "file that contains the --gossip-key value")
	flags.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	flags.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	cli.DurationVar(flags, &o.shutdown, "shutdown-timeout", 5*time.Second, "how long a graceful shutdown may take; it includes waiting up to about one second for the final report")
	command := cli.Command{Usage: "Usage: throttle-agent --centrals URL,... [flags]", EnvPrefix: "THROTTLE_AGENT_", EnvExample: "THROTTLE_AGENT_CENTRALS"}
	if err := cli.Parse(flags, args, command, help, env.lookup); err != nil {
		return o, err
	}

	if o.nodeID == "" {
		hostname, err := env.hostname()
		if err != nil {
			return o, fmt.Errorf("--node-id is not set and the host name is unknown (%v); set --node-id", err)
		}
		o.nodeID = hostname
	}
	if err := quota.ValidateName("--node-id", o.nodeID); err != nil {
		return o, err
	}
	o.centrals = cli.SplitList(centrals)
	if len(o.centrals) == 0 {
		return o, errors.New("--centrals is required: give the base URL of at least one central, for example http://127.0.0.1:8081")
	}
	if err := validateListen(o.listen, o.listenAny); err != nil {
		return o, err
	}
	policy, err := edge.ParseFallbackPolicy(fallback)
	if err != nil {
		return o, fmt.Errorf("--fallback: %w", err)
	}
	o.fallback = policy
	if o.serviceFallback, err = parseServiceFallback(serviceFallback); err != nil {
		return o, err
	}
	switch {
	case o.tlsCA != "" && o.tlsSkipVerify:
		return o, errors.New("--tls-ca and --tls-skip-verify exclude each other: verify with the CA, or do not verify at all")
	case o.requestTimeout <= 0:
		return o, fmt.Errorf("--request-timeout %v must be positive", o.requestTimeout)
	case o.shutdown <= 0:
		return o, fmt.Errorf("--shutdown-timeout %v must be positive", o.shutdown)
	case o.gossipAddr == "" && (gossipJoin != "" || o.gossipAdvertise != "" || o.gossipKey != "" || o.gossipKeyFile != ""):
		return o, errors.New("--gossip-join, --gossip-advertise, --gossip-key and --gossip-key-file need --gossip-addr, which turns gossip on")
	case o.gossipKey != "" && o.gossipKeyFile != "":
		return o, errors.New("--gossip-key and --gossip-key-file exclude each other; set one")
	}
	if o.gossipAddr != "" {
		if _, _, err := membership.ParseIPPort(o.gossipAddr); err != nil {
			return o, fmt.Errorf("--gossip-addr: %w", err)
		}
		o.gossipJoin = cli.SplitList(gossipJoin)
		for _, addr := range o.gossipJoin {
			if err := membership.ValidateJoinAddr(addr); err != nil {
				return o, fmt.Errorf("--gossip-join: %w", err)
			}
		}
		if _, err := membership.ParseKey(o.gossipKey); err != nil {
			return o, fmt.Errorf("--gossip-key: %w", err)
		}
	}
	return o, nil
}

// validateListen accepts a host:port whose host is a loopback IP address
// or "localhost", or any host when listenAny is set.
func validateListen(listen string, listenAny bool) error {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q is not host:port: %v", listen, err)
	}
	if port == "" {
		return fmt.Errorf("--listen %q has no port", listen)
	}
	if listenAny {
		return nil
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("--listen %q is not a loopback address: the API has no authentication, so listen on 127.0.0.1 or ::1, or set --listen-any to accept connections from other hosts", listen)
}

// parseServiceFallback parses "front=closed,batch=open".
func parseServiceFallback(list string) (map[string]edge.FallbackPolicy, error) {
	policies := make(map[string]edge.FallbackPolicy)
	for _, pair := range cli.SplitList(list) {
		service, name, found := strings.Cut(pair, "=")
		if !found {
			return nil, fmt.Errorf("--service-fallback %q is not SERVICE=POLICY", pair)
		}
		if err := quota.ValidateName("--service-fallback service", service); err != nil {
			return nil, err
		}
		if _, duplicate := policies[service]; duplicate {
			return nil, fmt.Errorf("--service-fallback names service %q twice", service)
		}
		policy, err := edge.ParseFallbackPolicy(name)
		if err != nil {
			return nil, fmt.Errorf("--service-fallback %q: %w", pair, err)
		}
		policies[service] = policy
	}
	return policies, nil
}

// tlsConfig builds the TLS configuration for https centrals, or nil for
// Go's defaults.
func (o options) tlsConfig() (*tls.Config, error) {
	switch {
	case o.tlsSkipVerify:
		return &tls.Config{InsecureSkipVerify: true}, nil
	case o.tlsCA != "":
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s contains no PEM certificate", o.tlsCA)
		}
		return &tls.Config{RootCAs: roots}, nil
	}
	return nil, nil
}

// readToken reads the bearer token from --token-file, or returns "".
func (o options) readToken() (string, error) {
	if o.tokenFile == "" {
		return "", nil
	}
	data, err := os.ReadFile(o.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("--token-file %s is empty", o.tokenFile)
	}
	return token, nil
}

// readGossipKey returns the gossip key from --gossip-key or
// --gossip-key-file, checked as a key. Errors never contain the key.
func (o options) readGossipKey() (string, error) {
	if o.gossipKeyFile == "" {
		return o.gossipKey, nil
	}
	data, err := os.ReadFile(o.gossipKeyFile)
	if err != nil {
		return "", fmt.Errorf("--gossip-key-file: %w", err)
	}
	key := strings.TrimSpace(string(data))
	if _, err := membership.ParseKey(key); err != nil {
		return "", fmt.Errorf("--gossip-key-file %s: %w", o.gossipKeyFile, err)
	}
	return key, nil
}

// run starts the agent and serves until ctx ends, then shuts down in
// order: stop taking API requests, close the edge client (final report,
// then leaving gossip). ready, when not nil, gets the API's address once it
// listens. run returns the exit code: 0 after a clean shutdown, 1 when
// starting or shutting down failed, 2 for invalid flags, including central
// URLs that the edge client rejects.
func run(ctx context.Context, args []string, stderr io.Writer, ready func(addr string)) int {
	o, err := parseFlags(args, processEnvironment.stdout, processEnvironment)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "throttle-agent: %v\nrun throttle-agent --help for the flags\n", err)
		return 2
	}
	logger, err := cli.NewLogger(o.logLevel, o.logFormat, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "throttle-agent:", err)
		return 2
	}
	tlsConfig, err := o.tlsConfig()
	if err != nil {
		fmt.Fprintln(stderr, "throttle-agent:", err)
		return 2
	}
	token, err := o.readToken()
	if err != nil {
		fmt.Fprintln(stderr, "throttle-agent:", err)
		return 2
	}
	if o.gossipKey, err = o.readGossipKey(); err != nil {
		fmt.Fprintln(stderr, "throttle-agent:", err)
		return 2
	}
	return serve(ctx, o, tlsConfig, token, logger, ready)
}

// startEdge builds the edge client and starts gossip when --gossip-addr is
// set. The client is built first, so that options it rejects, such as a
// central URL, end the agent (exit code 2) before gossip binds its port.
// On failure it returns a nil client and the exit code.
func startEdge(o options, tlsConfig *tls.Config, token string, logger *slog.Logger, registry *prometheus.Registry) (*edge.Client, *gossipMember, int) {
	log := logger.With(slog.String("component", "agent"), slog.String("node_id", o.nodeID))
	clientOptions := edge.ClientOptions{
		NodeID:         o.nodeID,
		Centrals:       o.centrals,
		TLSConfig:      tlsConfig,
		BearerToken:    token,
		Throttler:      edge.Options{DefaultFallback: o.fallback, ServiceFallback: o.serviceFallback},
		RequestTimeout: o.requestTimeout,
		Logger:         logger,
	}
	gossip := &gossipMember{}
	if o.gossipAddr != "" {
		clientOptions.Gossip = gossip
	}
	client, err := edge.NewClient(clientOptions)
	if err != nil {
		log.Error("invalid edge client options", slog.Any("error", err))
		return nil, nil, 2
	}
	if o.gossipAddr == "" {
		return client, gossip, 0
	}

	gossip.pool, err = membership.Start(membership.Config{
		Name:          o.nodeID,
		Role:          membership.RoleEdge,
		BindAddr:      o.gossipAddr,
		AdvertiseAddr: o.gossipAdvertise,
		Join:          o.gossipJoin,
		Key:           o.gossipKey,
		Logger:        logger,
		Registerer:    registry,
	})
	if err != nil {
		log.Error("starting gossip failed", slog.String("gossip_addr", o.gossipAddr), slog.Any("error", err))
		return nil, nil, 1
	}
	return client, gossip, 0
}

// serve runs the agent with validated options.
func serve(ctx context.Context, o options, tlsConfig *tls.Config, token string, logger *slog.Logger, ready func(string)) int {
	log := logger.With(slog.String("component", "agent"), slog.String("node_id", o.nodeID))
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	client, gossip, code := startEdge(o, tlsConfig, token, logger, registry)
	if client == nil {
		return code
	}
	listener, err := net.Listen("tcp", o.listen)
	if err != nil {
		log.Error("listening failed", slog.String("listen", o.listen), slog.Any("error", err))
		gossip.shutdown(log)
		return 1
	}
	if err := client.Start(); err != nil {
		log.Error("starting the report loop failed", slog.Any("error", err))
		listener.Close()
		gossip.shutdown(log)
		return 1
	}

	api := newAPI(client, o.nodeID, logger, registry)
	server := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	gossipAddr := ""
	if gossip.pool != nil {
		gossipAddr = gossip.pool.Addr()
	}
	log.Info("throttle-agent started", slog.String("listen", listener.Addr().String()),
		slog.Any("centrals", o.centrals), slog.String("fallback", o.fallback.String()),
		slog.String("gossip_addr", gossipAddr))
	if ready != nil {
		ready(listener.Addr().String())
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down", slog.Any("reason", context.Cause(ctx)))
	case err := <-served:
		log.Error("the API server stopped", slog.Any("error", err))
		code = 1
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), o.shutdown)
	defer cancel()
	started := time.Now()
	if err := server.Shutdown(shutdownCtx); err != nil {
		log.Error("stopping the API server failed", slog.Any("error", err))
		code = 1
	}
	if err := client.Close(shutdownCtx); err != nil {
		log.Error("closing the edge client failed", slog.Any("error", err))
		code = 1
	}
	log.Info("throttle-agent stopped", slog.Duration("duration", time.Since(started)))
	return code
}

// gossipMember is the edge client's hook into gossip. It is handed to the
// client before gossip starts, and does nothing while pool is nil.
type gossipMember struct {
	pool *membership.Pool
}

func (g *gossipMember) Leave(timeout time.Duration) error {
	if g.pool == nil {
		return nil
	}
	return g.pool.Leave(timeout)
}

func (g *gossipMember) Shutdown() error {
	if g.pool == nil {
		return nil
	}
	return g.pool.Shutdown()
}

// shutdown stops gossip without leaving, when the agent fails to start
// after gossip has.
func (g *gossipMember) shutdown(log *slog.Logger) {
	if err := g.Shutdown(); err != nil {
		log.Warn("shutting gossip down failed", slog.Any("error", err))
	}
}
