// Package api is the HTTP API of a central, built on Echo v4: limits,
// cluster membership, health and metrics. Writes sent to a follower are
// forwarded to the leader and its response relayed. All errors leave through
// one error handler in one JSON shape.
//
// The package holds no business logic: it validates input, stamps time
// into commands, and hands them to the interfaces it declares (Cluster for
// Raft, State for the replicated state), so handlers are tested against
// fakes.
package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// Cluster is the Raft node as the API uses it.
type Cluster interface {
	Apply(ctx context.Context, data []byte) (any, error)
	Barrier(ctx context.Context) error
	IsLeader() bool
	// Leader returns the leader's server ID and Raft address, empty when
	// no leader is known.
	Leader() (id, addr string)
	Join(id, addr string) error
	Remove(id string) error
	Servers() ([]raftnode.Server, error)
	Stats() (raftnode.Stats, error)
}

// State is the replicated state as the API reads it.
type State interface {
	Limits(service, user string) (fsm.UserLimits, bool)
	ServiceLimits(service string) []fsm.LimitRecord
	Services() []string
	Server(id string) (fsm.Server, bool)
	Servers() []fsm.Server
	Tombstone(id string) (int64, bool)
}

// Readiness reports whether the node can serve, and why not.
type Readiness func() (ready bool, reason string)

// DefaultBodyLimit is the largest request body accepted, in bytes.
const DefaultBodyLimit = 1 << 20

// DefaultForwardTimeout bounds a request forwarded to the leader.
const DefaultForwardTimeout = 10 * time.Second

// Config holds what the API needs.
type Config struct {
	// NodeID is this central's Raft server ID.
	NodeID  string
	Cluster Cluster
	State   State
	// Reports ingests reports on the leader; nil forwards every report.
	Reports Reporter
	// Monitor serves monitor data on the leader; nil forwards every query.
	Monitor Monitor
	// Members lists this central's gossip members for GET /v1/members;
	// nil means gossip is off.
	Members func() []Member
	// Removal keeps the leader's notice that this central was removed;
	// nil ignores such notices.
	Removal Removal
	// HandshakeAuth, when set, checks every WebSocket handshake except
	// one that carries a node or admin token of Tokens.
	HandshakeAuth HandshakeAuth
	// Tokens, when set, makes every route need a bearer token of the
	// scope routeAccess names, except the health checks, the dashboard's
	// static files and, unless MetricsTokenRequired, /metrics. It must
	// hold an admin token, which this central sends to other centrals.
	// Nil leaves the API open.
	Tokens *Tokens
	// MetricsTokenRequired makes /metrics need a read or admin token. It
	// needs Tokens.
	MetricsTokenRequired bool
	// PeerTLS, when set, makes forwarding to the leader use https with
	// this client configuration; the centrals then serve TLS too.
	PeerTLS *tls.Config
	// NodeMonitor lets a report WebSocket opened with a node token or a
	// SigV4 signature send monitor frames. They read what GET /v1/monitor
	// gives only to read tokens, so with Tokens set such frames need an
	// admin token unless NodeMonitor is set.
	NodeMonitor bool
	// Profiling serves Go's runtime profiles under /debug/pprof/. They
	// expose internals, so it is off by default.
	Profiling bool
	Ready     Readiness
	Logger    *slog.Logger
	// Registry receives the API's metrics and is served at /metrics. Nil
	// creates a new registry.
	Registry *prometheus.Registry
	// BodyLimit is the largest request body in bytes; 0 means
	// DefaultBodyLimit.
	BodyLimit int64
	// ForwardTimeout bounds a request forwarded to the leader; 0 means
	// DefaultForwardTimeout.
	ForwardTimeout time.Duration
	// Now returns the current time; nil means time.Now. The leader stamps
	// it into commands.
	Now func() time.Time
	// ReportWorkers is how many reports the leader decodes and applies at
	// once; 0 means GOMAXPROCS. The others wait their turn, about in
	// arrival order, so a burst of reports cannot starve Raft's heartbeats.
	ReportWorkers int
}

// Server is the HTTP API of one central.
type Server struct {
	cfg  Config
	log  *slog.Logger
	echo *echo.Echo
	http *http.Server
	// closing is cancelled by Shutdown, which ends open WebSockets.
	closing context.Context
	close   context.CancelFunc
	client  *http.Client
	metrics *metrics
	auth    *authenticator
	now     func() time.Time
	// workers holds a token for each report being decoded and applied.
	workers chan struct{}
}

// New builds the API. Call Serve to start it.
func New(cfg Config) (*Server, error) {
	if cfg.NodeID == "" || cfg.Cluster == nil || cfg.State == nil {
		return nil, errors.New("api: NodeID, Cluster and State are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.BodyLimit <= 0 {
		cfg.BodyLimit = DefaultBodyLimit
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = DefaultForwardTimeout
	}
	if cfg.Ready == nil {
		cfg.Ready = func() (bool, string) { return true, "" }
	}
	if cfg.ReportWorkers <= 0 {
		cfg.ReportWorkers = runtime.GOMAXPROCS(0)
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With(slog.String("component", "api")),
		now:     cfg.Now,
		workers: make(chan struct{}, cfg.ReportWorkers),
	}
	// Requests to the leader carry the client's Authorization header, or
	// this central's peer token when they have none.
	s.client = &http.Client{Timeout: cfg.ForwardTimeout, Transport: &peerAuthTransport{
		next: &http.Transport{
			TLSClientConfig:     cfg.PeerTLS,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
		token: s.PeerToken,
	}}
	if s.now == nil {
		s.now = time.Now
	}
	var err error
	if s.metrics, err = newMetrics(cfg.Registry, cfg.Cluster); err != nil {
		return nil, err
	}
	if s.auth, err = newAuthenticator(cfg, cfg.Registry); err != nil {
		return nil, err
	}
	if cfg.HandshakeAuth != nil {
		s.cfg.HandshakeAuth = s.checkHandshake
	}

	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = s.handleError
	// instrument is outermost, so it also counts the 500 that
	// recoverPanics returns for a panic, and the 401 and 403 of
	// authenticate, which runs before any handler reads the body.
	e.Use(s.instrument, s.recoverPanics, s.authenticate, s.refuseIfRemoved, s.limitBody)
	s.routes(e)
	if err := checkRouteAccess(e.Routes()); err != nil {
		return nil, err
	}
	s.echo = e
	s.closing, s.close = context.WithCancel(context.Background())
	s.http = &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

func (s *Server) routes(e *echo.Echo) {
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{})))

	e.GET("/throttle", s.throttle)
	e.GET("/ui", s.serveUI)
	e.GET("/ui/*", s.serveUI)
	if s.cfg.Profiling {
		e.GET("/debug/pprof/*", echo.WrapHandler(http.HandlerFunc(pprof.Index)))
		e.GET("/debug/pprof/cmdline", echo.WrapHandler(http.HandlerFunc(pprof.Cmdline)))
		e.GET("/debug/pprof/profile", echo.WrapHandler(http.HandlerFunc(pprof.Profile)))
		e.GET("/debug/pprof/symbol", echo.WrapHandler(http.HandlerFunc(pprof.Symbol)))
		e.GET("/debug/pprof/trace", echo.WrapHandler(http.HandlerFunc(pprof.Trace)))
	}

	v1 := e.Group("/v1")
	v1.POST("/report", s.report)
	v1.GET("/monitor/:subject", s.monitor)
	v1.GET("/limits", s.listAllLimits)
	v1.GET("/limits/:service", s.listServiceLimits)
	v1.GET("/limits/:service/:user", s.getLimits)
	v1.PUT("/limits/:service/:user", s.putLimits)
	v1.DELETE("/limits/:service/:user", s.deleteLimits)

	v1.GET("/cluster", s.clusterStatus)
	v1.POST("/cluster/join", s.join)
	v1.POST("/cluster/removed", s.removedNotice)
	v1.DELETE("/cluster/servers/:id", s.removeServer)
	v1.GET("/members", s.listMembers)
}

// Handler returns the API as an http.Handler, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.echo }

// Serve serves the API on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting requests and waits for the ones in flight until
// ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.close()
	if err := s.http.Shutdown(ctx); err != nil {
		return fmt.Errorf("api: shutdown: %w", err)
	}
	return nil
}

// recoverPanics turns a panic in a handler into a 500 and a log line, so
// one bad request never takes the central down.
func (s *Server) recoverPanics(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if r := recover(); r != nil {
				s.log.Error("handler panicked", slog.String("path", c.Request().URL.Path), slog.Any("panic", r))
				err = newError(http.StatusInternalServerError, CodeInternal, "internal error")
			}
		}()
		return next(c)
	}
}

// limitBody rejects bodies over BodyLimit with 413, whether or not the
// client sent a Content-Length: the body reader stops at the limit.
func (s *Server) limitBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		if req.ContentLength > s.cfg.BodyLimit {
			return newError(http.StatusRequestEntityTooLarge, CodeTooLarge,
				fmt.Sprintf("request body is %d bytes; the maximum is %d", req.ContentLength, s.cfg.BodyLimit))
		}
		req.Body = http.MaxBytesReader(c.Response(), req.Body, s.cfg.BodyLimit)
		return next(c)
	}
}

func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok", "node_id": s.cfg.NodeID})
}

func (s *Server) readyz(c echo.Context) error {
	ready, reason := s.cfg.Ready()
	if !ready {
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": reason})
	}
	return c.JSON(http.StatusOK, map[string]any{"ready": true})
}
