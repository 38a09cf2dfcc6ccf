package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/throttlecentral/throttle-central/quota"
)

const (
	// DefaultReportOffset is how far into each second the client sends its
	// report. The central expects reports about 50 ms into the second.
	DefaultReportOffset = 50 * time.Millisecond
	// DefaultRequestTimeout bounds one report request to one central:
	// connect, send and reply. The lua-resty-throttle client waits 200 ms too.
	DefaultRequestTimeout = 200 * time.Millisecond

	// sendWindow is how far into its slot a report may still reach a
	// central. The central derives a node's clock offset from the arrival
	// time, rounded to whole seconds, and assumes the report was sent 50 ms
	// into the slot. A report that arrives more than about 550 ms into the
	// slot is therefore mapped onto the next slot, and the node's next report
	// is then dropped as a duplicate. The window leaves a 50 ms margin.
	sendWindow = 500 * time.Millisecond
)

// GossipMember is the gossip membership of the edge node, as Close needs it.
// The membership package's edge member satisfies it.
type GossipMember interface {
	// Leave announces this node's departure to the other members and waits
	// at most timeout for the announcement to spread.
	Leave(timeout time.Duration) error
	// Shutdown stops gossip.
	Shutdown() error
}

// ClientOptions configures a Client.
type ClientOptions struct {
	// NodeID names this edge node in its reports. It must be unique in the
	// fleet and follow the central's name rules (see quota.ValidateName).
	NodeID string
	// Centrals are the base URLs of the centrals, for example
	// "http://127.0.0.1:8081" or "https://central-1.example:8443/throttle".
	// Reports go to the base URL followed by "/v1/report". At least one is
	// required.
	Centrals []string

	// HTTPClient sends the reports. Nil means a client built from TLSConfig.
	// The client's own Timeout should be unset or longer than
	// RequestTimeout, because RequestTimeout bounds each request already.
	HTTPClient *http.Client
	// TLSConfig verifies https centrals when HTTPClient is nil. Nil means
	// Go's defaults (the system roots).
	TLSConfig *tls.Config
	// BearerToken, when set, is sent as "Authorization: Bearer <token>" with
	// every report. It is never logged.
	BearerToken string

	// Throttler configures the throttle logic: fallback policies and how
	// many slots of quotas to keep.
	Throttler Options

	// ReportOffset is how far into each second the report is sent, from 0
	// to 450 ms. 0 means DefaultReportOffset.
	ReportOffset time.Duration
	// RequestTimeout bounds each report request to one central. 0 means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration

	// Clock returns the current time, whose unix second is the current slot.
	// Nil means time.Now. Tests inject a fixed or skewed clock. The report
	// loop waits on real timers for the durations this clock gives.
	Clock func() time.Time
	// Logger receives the client's logs. Nil means slog.Default().
	Logger *slog.Logger
	// Gossip, when set, is the node's gossip membership: Close leaves it
	// after the final report and shuts it down.
	Gossip GossipMember
}

// Client is the edge library: the throttle logic of one edge node with its
// report loop to the centrals.
//
// Throttle before a request and Consume after it act on the current slot,
// the clock's unix second, and never wait for the network. They take one
// lock out of 64 and read the quota cache without a lock, so they are cheap
// and safe for concurrent use.
//
// Reports: after Start, about ReportOffset into every second, the client
// sends the counts of the previous second to the central that replied
// last and stores the quotas of the reply (see report). Close stops the loop,
// sends the last report and leaves gossip.
type Client struct {
	nodeID         string
	centrals       []central
	httpClient     *http.Client
	authorization  string
	throttler      *Throttler
	reportOffset   time.Duration
	requestTimeout time.Duration
	clock          func() time.Time
	log            *slog.Logger
	gossip         GossipMember

	// reporter is the report state. Its mutex serializes reports, so the
	// loop and the final report of Close never run at once.
	reporter reporter

	lifecycle sync.Mutex
	started   bool
	closed    bool
	closeErr  error
	stopLoop  chan struct{}
	loopDone  chan struct{}
}

// central is one configured central.
type central struct {
	base      string // the base URL as configured, without a trailing '/'
	reportURL string
}

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("edge: client is closed")

// NewClient validates options and returns a Client with no quotas and no
// counts. It starts no goroutine and sends nothing: call Start to begin
// reporting.
func NewClient(options ClientOptions) (*Client, error) {
	if err := quota.ValidateName("node ID", options.NodeID); err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	centrals, err := parseCentrals(options.Centrals)
	if err != nil {
		return nil, err
	}
	if options.HTTPClient != nil && options.TLSConfig != nil {
		return nil, errors.New("edge: HTTPClient and TLSConfig exclude each other: set the TLS configuration on the HTTP client's transport")
	}
	if strings.ContainsAny(options.BearerToken, "\r\n") {
		return nil, errors.New("edge: the bearer token contains a line break")
	}

	reportOffset := options.ReportOffset
	switch {
	case reportOffset == 0:
		reportOffset = DefaultReportOffset
	case reportOffset < 0 || reportOffset >= sendWindow-50*time.Millisecond:
		return nil, fmt.Errorf("edge: invalid ReportOffset %v: it must be from 0 to 450ms, because the central maps a report that arrives later than about 550ms into the second onto the next second", reportOffset)
	}
	requestTimeout := options.RequestTimeout
	switch {
	case requestTimeout == 0:
		requestTimeout = DefaultRequestTimeout
	case requestTimeout < 0:
		return nil, fmt.Errorf("edge: invalid RequestTimeout %v: it must be positive, or 0 for the default %v", requestTimeout, DefaultRequestTimeout)
	}

	throttler, err := NewThrottler(options.Throttler)
	if err != nil {
		return nil, err
	}

	httpClient := options.HTTPClient
	if httpClient == nil {
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.TLSClientConfig = options.TLSConfig
		httpClient = &http.Client{Transport: transport}
	}
	clock := options.Clock
	if clock == nil {
		clock = time.Now
	}
	logger := options.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With(slog.String("component", "edge-client"), slog.String("node_id", options.NodeID))

	c := &Client{
		nodeID:         options.NodeID,
		centrals:       centrals,
		httpClient:     httpClient,
		throttler:      throttler,
		reportOffset:   reportOffset,
		requestTimeout: requestTimeout,
		clock:          clock,
		log:            logger,
		gossip:         options.Gossip,
	}
	if options.BearerToken != "" {
		c.authorization = "Bearer " + options.BearerToken
	}
	c.reporter.shares = make(map[string]map[string]shareEntry)
	return c, nil
}

// parseCentrals validates the base URLs: http or https, a host, and no
// query, fragment or user info.
func parseCentrals(bases []string) ([]central, error) {
	if len(bases) == 0 {
		return nil, errors.New("edge: no central given: set at least one base URL such as http://127.0.0.1:8081")
	}
	centrals := make([]central, 0, len(bases))
	for _, base := range bases {
		u, err := url.Parse(base)
		switch {
		case !strings.Contains(base, "://"):
			return nil, fmt.Errorf("edge: invalid central URL %q: it has no scheme; write it as http://%s or https://%s", base, base, base)
		case err != nil:
			return nil, fmt.Errorf("edge: invalid central URL %q: %v", base, err)
		case u.Scheme != "http" && u.Scheme != "https":
			return nil, fmt.Errorf("edge: invalid central URL %q: the scheme must be http or https", base)
		case u.Host == "":
			return nil, fmt.Errorf("edge: invalid central URL %q: the host is missing", base)
		case u.User != nil:
			return nil, fmt.Errorf("edge: invalid central URL %q: user info is not supported; use BearerToken for credentials", u.Redacted())
		case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
			return nil, fmt.Errorf("edge: invalid central URL %q: it must not have a query or fragment", base)
		}
		trimmed := strings.TrimRight(base, "/")
		centrals = append(centrals, central{base: trimmed, reportURL: trimmed + "/v1/report"})
	}
	return centrals, nil
}

// Throttle decides whether a request of user to service may be served now.
// It returns nil when the request is allowed, and a *RejectedError, which
// wraps ErrRejected, when it is not. It is Decide as an error.
func (c *Client) Throttle(service, user string) error {
	decision := c.Decide(service, user)
	if decision.Allowed {
		return nil
	}
	return &RejectedError{Service: service, User: user, Decision: decision}
}

// Decide decides whether a request of user to service may be served now,
// with the rules of Throttler.Throttle for the current slot (the clock's
// unix second), and returns the whole decision. A rejection is counted in
// the next report.
func (c *Client) Decide(service, user string) Decision {
	return c.throttler.Throttle(c.clock().Unix(), service, user)
}

// Consume adds amounts (resource -> amount) to the user's consumption in
// the current slot. Call it after serving a request. Negative, NaN and
// infinite amounts are skipped. Names that the central would reject (see
// quota.ValidateName) are counted here but left out of the report, with a
// log message, so that one bad name does not make the central reject the
// whole report.
func (c *Client) Consume(service, user string, amounts map[string]float64) {
	c.throttler.Consume(c.clock().Unix(), service, user, amounts)
}

// RejectedError is the error Client.Throttle returns for a rejected
// request. It wraps ErrRejected.
type RejectedError struct {
	Service string
	User    string
	// Decision holds the exhausted resource, its quota and the consumption
	// so far in the slot.
	Decision Decision
}

// Error names the user, the service, the resource, the quota and the
// consumption.
func (e *RejectedError) Error() string {
	return fmt.Sprintf("user %q of service %q: %v", e.User, e.Service, e.Decision.Err())
}

// Unwrap returns ErrRejected.
func (e *RejectedError) Unwrap() error {
	return ErrRejected
}

// Start starts the report loop in a goroutine. It returns an error when the
// loop already runs or the client is closed.
func (c *Client) Start() error {
	c.lifecycle.Lock()
	defer c.lifecycle.Unlock()
	if c.closed {
		return ErrClosed
	}
	if c.started {
		return errors.New("edge: the report loop has already started")
	}
	c.started = true
	c.stopLoop = make(chan struct{})
	c.loopDone = make(chan struct{})
	go c.runLoop(c.stopLoop, c.loopDone)
	c.log.Info("report loop started",
		slog.Any("centrals", c.centralBases()),
		slog.Duration("report_offset", c.reportOffset),
		slog.Duration("request_timeout", c.requestTimeout))
	return nil
}

// runLoop sends one report about reportOffset after the start of every
// second until stop is closed.
func (c *Client) runLoop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		timer := time.NewTimer(c.untilReportTime(c.clock()))
		select {
		case <-stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		// report logs and counts its own failures.
		_ = c.report(c.clock().Unix())
	}
}

// untilReportTime returns how long to wait from now until the next report
// time: reportOffset after the start of a second.
func (c *Client) untilReportTime(now time.Time) time.Duration {
	next := now.Truncate(time.Second).Add(c.reportOffset)
	if !next.After(now) {
		next = next.Add(time.Second)
	}
	return next.Sub(now)
}

// Close stops the report loop and then sends a final report so that the
// last counts are billed. It waits for the next report time, at most one
// second plus ReportOffset, because the central counts a report sent
// earlier in the second as a repeat of the one already sent. The final
// report carries the counts of the current slot, so call Close after the
// application has stopped serving: counts added after the final report are
// not sent. Then Close leaves gossip, when a GossipMember is set, and shuts
// it down.
//
// When ctx ends before the final report time, the report is not sent and
// its counts are dropped with a log message. Close returns an error when
// the final report reached no central or leaving gossip failed. Later calls
// return the first call's result.
func (c *Client) Close(ctx context.Context) error {
	c.lifecycle.Lock()
	defer c.lifecycle.Unlock()
	if c.closed {
		return c.closeErr
	}
	c.closed = true
	started := time.Now()

	// The loop finishes a report in progress first. Its last request
	// starts within sendWindow of the slot and ends within RequestTimeout.
	if c.started {
		close(c.stopLoop)
		<-c.loopDone
	}

	var errs []error
	if err := c.sendFinalReport(ctx); err != nil {
		errs = append(errs, err)
	}
	if c.gossip != nil {
		if err := c.leaveGossip(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	c.closeErr = errors.Join(errs...)

	c.log.Info("edge client closed", slog.Duration("duration", time.Since(started)), slog.Any("error", c.closeErr))
	return c.closeErr
}

// sendFinalReport waits for the next report time and sends the report of
// the slot in progress.
func (c *Client) sendFinalReport(ctx context.Context) error {
	now := c.clock()
	wait := c.untilReportTime(now)
	slot := now.Add(wait).Unix()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		dropped := c.throttler.TakeReport(c.nodeID, slot)
		c.log.Warn("final report not sent: the close deadline came before the report time; its counts are dropped",
			slog.Int64("counted_slot", slot-1), slog.Int("users", countUsers(dropped)), slog.Any("error", ctx.Err()))
		return fmt.Errorf("edge: final report of the counts of slot %d not sent: %w", slot-1, ctx.Err())
	case <-timer.C:
	}
	// A timer that fired too late for slot's report window (a starved
	// process) moves the report to a second whose window is still open.
	if fired := c.clock(); fired.Sub(time.Unix(slot, 0)) > sendWindow {
		slot = fired.Unix()
		if fired.Sub(time.Unix(slot, 0)) > sendWindow {
			slot++
		}
	}
	if err := c.sendReport(slot, true); err != nil {
		return fmt.Errorf("edge: final report of the counts of slot %d: %w", slot-1, err)
	}
	return nil
}

// leaveGossip leaves the gossip pool, waiting at most until ctx's deadline
// or one second, and shuts gossip down.
func (c *Client) leaveGossip(ctx context.Context) error {
	timeout := time.Second
	if deadline, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(deadline), 0)
	}
	var errs []error
	if err := c.gossip.Leave(timeout); err != nil {
		errs = append(errs, fmt.Errorf("edge: leaving gossip: %w", err))
		c.log.Warn("leaving gossip failed; the other members will find this node dead instead", slog.Any("error", err))
	}
	if err := c.gossip.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("edge: shutting gossip down: %w", err))
		c.log.Warn("shutting gossip down failed", slog.Any("error", err))
	}
	return errors.Join(errs...)
}

func (c *Client) centralBases() []string {
	bases := make([]string, len(c.centrals))
	for i, central := range c.centrals {
		bases[i] = central.base
	}
	return bases
}
