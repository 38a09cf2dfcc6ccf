package api

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// Scope is the class of requests a bearer token may make. An admin token
// may make every request a node or read token may.
type Scope string

const (
	// ScopeAdmin changes limits and cluster membership, and reads
	// everything.
	ScopeAdmin Scope = "admin"
	// ScopeNode sends reports, over POST /v1/report or the /throttle
	// WebSocket, and gets quotas back.
	ScopeNode Scope = "node"
	// ScopeRead reads limits, the cluster, gossip members, monitor data
	// and, when they are protected, metrics.
	ScopeRead Scope = "read"
)

// grants reports whether a token of scope s may make a request that needs
// scope need.
func (s Scope) grants(need Scope) bool { return s == need || s == ScopeAdmin }

func parseScope(s string) (Scope, bool) {
	switch scope := Scope(s); scope {
	case ScopeAdmin, ScopeNode, ScopeRead:
		return scope, true
	}
	return "", false
}

// Token length bounds, in bytes. 16 random bytes are the least that cannot
// be guessed online; the maximum keeps the Authorization header well under
// the header size limits of proxies.
const (
	MinTokenLength = 16
	MaxTokenLength = 4096
)

// maxTokenLine is the longest line a token file may have, in bytes.
const maxTokenLine = 2 * MaxTokenLength

// Tokens is a parsed token file. It keeps the SHA-256 digest of each token
// with its scope, and in clear text only the first admin token, which the
// central sends to the other centrals (PeerToken). A Tokens is immutable.
type Tokens struct {
	entries []tokenEntry
	counts  map[Scope]int
	peer    string
}

type tokenEntry struct {
	digest [sha256.Size]byte
	scope  Scope
}

// LoadTokens reads a token file; see ParseTokens for the format.
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open token file: %w", err)
	}
	defer f.Close()
	return ParseTokens(f, path)
}

// ParseTokens reads tokens, one "SCOPE TOKEN" pair a line: the scope is
// admin, node or read, and the token 16 to 4096 bytes of visible ASCII.
// Blank lines and lines that start with # are skipped. A token may appear
// once. name is the file name for error messages, which name the line but
// never a token.
func ParseTokens(r io.Reader, name string) (*Tokens, error) {
	t := &Tokens{counts: map[Scope]int{}}
	seen := map[[sha256.Size]byte]int{}
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 0, 4096), maxTokenLine)
	line := 0
	for scanner.Scan() {
		line++
		text := strings.TrimSpace(scanner.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		scope, token, err := parseTokenLine(text)
		if err != nil {
			return nil, fmt.Errorf("token file %s, line %d: %w", name, line, err)
		}
		digest := sha256.Sum256([]byte(token))
		if first, dup := seen[digest]; dup {
			return nil, fmt.Errorf("token file %s, line %d: the same token as line %d; give every token one line and one scope", name, line, first)
		}
		seen[digest] = line
		t.entries = append(t.entries, tokenEntry{digest: digest, scope: scope})
		t.counts[scope]++
		if scope == ScopeAdmin && t.peer == "" {
			t.peer = token
		}
	}
	if err := scanner.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("token file %s, line %d: longer than %d bytes", name, line+1, maxTokenLine)
		}
		return nil, fmt.Errorf("read token file %s: %w", name, err)
	}
	if len(t.entries) == 0 {
		return nil, fmt.Errorf("token file %s contains no token; write one \"SCOPE TOKEN\" pair a line, with scope admin, node or read", name)
	}
	return t, nil
}

// parseTokenLine splits one non-comment line into its scope and token.
// Errors never contain either field, because a line with its fields
// swapped has the token first.
func parseTokenLine(text string) (Scope, string, error) {
	fields := strings.Fields(text)
	if len(fields) != 2 {
		return "", "", fmt.Errorf("want SCOPE TOKEN separated by a space, got %d fields", len(fields))
	}
	scope, ok := parseScope(fields[0])
	if !ok {
		if _, swapped := parseScope(fields[1]); swapped {
			return "", "", errors.New("the scope comes after the token; write SCOPE TOKEN")
		}
		return "", "", errors.New("unknown scope; use admin, node or read")
	}
	token := fields[1]
	switch {
	case len(token) < MinTokenLength:
		return "", "", fmt.Errorf("the token is %d bytes; the minimum is %d (openssl rand -hex 32 makes a good one)", len(token), MinTokenLength)
	case len(token) > MaxTokenLength:
		return "", "", fmt.Errorf("the token is %d bytes; the maximum is %d", len(token), MaxTokenLength)
	}
	for i := 0; i < len(token); i++ {
		if token[i] < 0x21 || token[i] > 0x7e {
			return "", "", fmt.Errorf("the token has a byte outside visible ASCII at position %d", i+1)
		}
	}
	return scope, token, nil
}

// Count returns how many tokens have scope.
func (t *Tokens) Count(scope Scope) int { return t.counts[scope] }

// PeerToken returns the first admin token of the file, or "" when it has
// none. A central sends it with its join request to another central, and
// when it relays a WebSocket report to the leader, because a client that
// authenticated with SigV4 has no token to pass on.
func (t *Tokens) PeerToken() string { return t.peer }

// lookup returns the scope of token. It hashes the token and compares the
// digest with every entry in constant time, so neither the time taken nor
// an early exit reveals how much of a token matched or how long the
// stored tokens are.
func (t *Tokens) lookup(token string) (Scope, bool) {
	digest := sha256.Sum256([]byte(token))
	var found Scope
	for _, entry := range t.entries {
		if subtle.ConstantTimeCompare(digest[:], entry.digest[:]) == 1 {
			found = entry.scope
		}
	}
	return found, found != ""
}

// access is the credential a route requires.
type access int

const (
	// accessOpen needs nothing: the health checks and the dashboard's
	// static files, which hold no data.
	accessOpen access = iota
	// accessMetrics is open unless Config.MetricsTokenRequired is set,
	// then it needs a read token.
	accessMetrics
	accessRead
	accessNode
	accessAdmin
	// accessReportSocket is the /throttle WebSocket: a node token, or a
	// valid SigV4 handshake when access keys are configured.
	accessReportSocket
)

// routeAccess maps "METHOD path pattern" of every route to what it
// requires. New fails when a route is missing here, so a new route cannot
// stay open by mistake.
var routeAccess = map[string]access{
	"GET /healthz":                     accessOpen,
	"GET /readyz":                      accessOpen,
	"GET /ui":                          accessOpen,
	"GET /ui/*":                        accessOpen,
	"GET /metrics":                     accessMetrics,
	"GET /throttle":                    accessReportSocket,
	"POST /v1/report":                  accessNode,
	"GET /v1/monitor/:subject":         accessRead,
	"GET /v1/limits":                   accessRead,
	"GET /v1/limits/:service":          accessRead,
	"GET /v1/limits/:service/:user":    accessRead,
	"PUT /v1/limits/:service/:user":    accessAdmin,
	"DELETE /v1/limits/:service/:user": accessAdmin,
	"GET /v1/cluster":                  accessRead,
	"POST /v1/cluster/join":            accessAdmin,
	"POST /v1/cluster/removed":         accessAdmin,
	"DELETE /v1/cluster/servers/:id":   accessAdmin,
	"GET /v1/members":                  accessRead,
	"GET /debug/pprof/*":               accessAdmin,
	"GET /debug/pprof/cmdline":         accessAdmin,
	"GET /debug/pprof/profile":         accessAdmin,
	"GET /debug/pprof/symbol":          accessAdmin,
	"GET /debug/pprof/trace":           accessAdmin,
}

// checkRouteAccess returns an error naming the first route that has no
// entry in routeAccess.
func checkRouteAccess(routes []*echo.Route) error {
	for _, route := range routes {
		if _, ok := routeAccess[route.Method+" "+route.Path]; !ok {
			return fmt.Errorf("api: route %s %s has no entry in routeAccess", route.Method, route.Path)
		}
	}
	return nil
}

// Reasons of throttle_auth_failures_total.
const (
	authMissing   = "missing"   // no Authorization header
	authMalformed = "malformed" // not "Bearer <token>"
	authInvalid   = "invalid"   // a token that is not in the token file
	authScope     = "scope"     // a valid token without the scope the route needs
	authSignature = "signature" // a WebSocket handshake without a valid SigV4 signature
)

// bearerRealm is the realm of every WWW-Authenticate challenge.
const bearerRealm = `Bearer realm="throttle-central"`

// authLogInterval is the least time between two log lines about rejected
// credentials; the lines in between are counted in the next one.
const authLogInterval = time.Second

// authenticator checks bearer tokens. tokens is nil when the API is open.
type authenticator struct {
	mu     sync.RWMutex
	tokens *Tokens

	metricsProtected bool
	// signature is the SigV4 check of WebSocket handshakes, nil without
	// access keys.
	signature HandshakeAuth

	failures *prometheus.CounterVec

	logMu      sync.Mutex
	lastLog    time.Time
	suppressed int
}

func newAuthenticator(cfg Config, reg prometheus.Registerer) (*authenticator, error) {
	if cfg.MetricsTokenRequired && cfg.Tokens == nil {
		return nil, errors.New("api: MetricsTokenRequired needs Tokens")
	}
	if cfg.Tokens != nil && cfg.Tokens.PeerToken() == "" {
		return nil, errNoAdminToken
	}
	a := &authenticator{
		tokens:           cfg.Tokens,
		metricsProtected: cfg.MetricsTokenRequired,
		signature:        cfg.HandshakeAuth,
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "throttle_auth_failures_total",
			Help: "Requests rejected for their credentials, by reason (missing, malformed, invalid, scope, signature).",
		}, []string{"reason"}),
	}
	for _, reason := range []string{authMissing, authMalformed, authInvalid, authScope, authSignature} {
		a.failures.WithLabelValues(reason)
	}
	if err := reg.Register(a.failures); err != nil {
		return nil, err
	}
	return a, nil
}

// errNoAdminToken rejects a token file without an admin token: every
// central needs one to join the cluster and to relay WebSocket reports.
var errNoAdminToken = errors.New("the token file has no admin token; every central needs one, because it sends the first admin token to the other centrals when it joins and when it relays WebSocket reports to the leader")

// SetTokens replaces the token set, for example after the token file
// changed. It fails when the API was started without tokens, because
// turning authentication on needs a restart that clients can prepare for,
// and when tokens has no admin token.
func (s *Server) SetTokens(tokens *Tokens) error {
	if tokens == nil {
		return errors.New("api: SetTokens needs a token set; restart without a token file to open the API")
	}
	if tokens.PeerToken() == "" {
		return errNoAdminToken
	}
	s.auth.mu.Lock()
	defer s.auth.mu.Unlock()
	if s.auth.tokens == nil {
		return errors.New("api: this API was started without tokens; restart it with a token file to turn authentication on")
	}
	s.auth.tokens = tokens
	return nil
}

// PeerToken returns the token this central sends to other centrals: the
// first admin token, or "" when the API is open.
func (s *Server) PeerToken() string {
	tokens := s.auth.current()
	if tokens == nil {
		return ""
	}
	return tokens.PeerToken()
}

func (a *authenticator) current() *Tokens {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.tokens
}

// authScopeKey is the request context key under which authenticate stores
// the scope of a bearer token it accepted.
type authScopeKey struct{}

// authenticate checks the bearer token of every request whose route needs
// one. Requests that match no route pass, so they get the router's 404 or
// 405.
func (s *Server) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		tokens := s.auth.current()
		if tokens == nil {
			return next(c)
		}
		rule, known := routeAccess[c.Request().Method+" "+c.Path()]
		if !known {
			return next(c)
		}
		var need Scope
		switch rule {
		case accessOpen:
			return next(c)
		case accessMetrics:
			if !s.auth.metricsProtected {
				return next(c)
			}
			need = ScopeRead
		case accessRead:
			need = ScopeRead
		case accessNode, accessReportSocket:
			need = ScopeNode
		default:
			need = ScopeAdmin
		}

		header := c.Request().Header.Get(echo.HeaderAuthorization)
		if header == "" && rule == accessReportSocket && s.auth.signature != nil {
			// The handler checks the SigV4 presigned query.
			return next(c)
		}
		scope, err := s.checkBearer(c, tokens, header, need, rule)
		if err != nil {
			return err
		}
		req := c.Request()
		c.SetRequest(req.WithContext(context.WithValue(req.Context(), authScopeKey{}, scope)))
		return next(c)
	}
}

// checkBearer returns the scope of the bearer token in header, or the 401
// or 403 error for the request, which it counts and logs.
func (s *Server) checkBearer(c echo.Context, tokens *Tokens, header string, need Scope, rule access) (Scope, error) {
	challenge := c.Response().Header()
	if header == "" {
		message := fmt.Sprintf("this request needs a token with scope %s; send it as Authorization: Bearer <token>", need)
		if rule == accessReportSocket {
			message = "the /throttle WebSocket needs a token with scope node, sent as Authorization: Bearer <token>; " +
				"SigV4 presigned handshakes work only on centrals started with --access-keys-file"
		}
		challenge.Set(echo.HeaderWWWAuthenticate, bearerRealm)
		return "", s.rejectAuth(c, authMissing, need, http.StatusUnauthorized, CodeUnauthorized, message)
	}
	token, ok := bearerToken(header)
	if !ok {
		challenge.Set(echo.HeaderWWWAuthenticate, bearerRealm+`, error="invalid_request"`)
		return "", s.rejectAuth(c, authMalformed, need, http.StatusUnauthorized, CodeUnauthorized,
			`the Authorization header is not of the form "Bearer <token>"`)
	}
	scope, ok := tokens.lookup(token)
	if !ok {
		challenge.Set(echo.HeaderWWWAuthenticate, bearerRealm+`, error="invalid_token"`)
		return "", s.rejectAuth(c, authInvalid, need, http.StatusUnauthorized, CodeUnauthorized,
			"the bearer token is not valid on this central; check that it is in the central's --token-file")
	}
	if !scope.grants(need) {
		challenge.Set(echo.HeaderWWWAuthenticate, fmt.Sprintf(`%s, error="insufficient_scope", scope="%s"`, bearerRealm, need))
		return "", s.rejectAuth(c, authScope, need, http.StatusForbidden, CodeForbidden,
			fmt.Sprintf("this request needs a token with scope %s; this token has scope %s", need, scope))
	}
	return scope, nil
}

// bearerToken returns the token of an Authorization header of the form
// "Bearer <token>", with the scheme in any case (RFC 7235).
func bearerToken(header string) (string, bool) {
	scheme, token, found := strings.Cut(header, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// rejectAuth counts and logs a rejected request and returns its error. The
// log line names the remote address, the method and route and the reason,
// never the header.
func (s *Server) rejectAuth(c echo.Context, reason string, need Scope, status int, code, message string) error {
	s.auth.failures.WithLabelValues(reason).Inc()
	req := c.Request()
	s.logAuthFailure("rejected a request: "+message, slog.String("remote", req.RemoteAddr), slog.String("method", req.Method),
		slog.String("route", c.Path()), slog.String("reason", reason), slog.String("scope_needed", string(need)))
	return newError(status, code, message)
}

// logAuthFailure logs at most one line per authLogInterval, so a client
// that retries with a bad token cannot flood the log. The next line that
// is logged carries the count of those left out.
func (s *Server) logAuthFailure(message string, attrs ...any) {
	s.auth.logMu.Lock()
	now := time.Now()
	if now.Sub(s.auth.lastLog) < authLogInterval {
		s.auth.suppressed++
		s.auth.logMu.Unlock()
		return
	}
	suppressed := s.auth.suppressed
	s.auth.lastLog, s.auth.suppressed = now, 0
	s.auth.logMu.Unlock()

	if suppressed > 0 {
		attrs = append(attrs, slog.Int("not_logged_since_last", suppressed))
	}
	s.log.Warn(message, attrs...)
}

// checkHandshake is the WebSocket handshake check the handler runs: a
// request that authenticate accepted with a bearer token passes, and any
// other needs a valid SigV4 signature. A failed signature is counted.
func (s *Server) checkHandshake(r *http.Request) error {
	if _, ok := r.Context().Value(authScopeKey{}).(Scope); ok {
		return nil
	}
	if err := s.auth.signature(r); err != nil {
		s.auth.failures.WithLabelValues(authSignature).Inc()
		return err
	}
	return nil
}

// noPeerTokenKey marks the context of a request that must carry only its
// client's credentials.
type noPeerTokenKey struct{}

// withoutPeerToken returns ctx marked so that peerAuthTransport leaves the
// request's Authorization header as it is.
func withoutPeerToken(ctx context.Context) context.Context {
	return context.WithValue(ctx, noPeerTokenKey{}, true)
}

// peerAuthTransport adds this central's peer token to requests to other
// centrals that carry no Authorization header and are not marked by
// withoutPeerToken. Forwarded HTTP requests are marked and carry their
// client's header. So only the requests this central makes on its own
// behalf get the token: relayed WebSocket reports and monitor frames, whose
// client authenticated on this central with SigV4 or a node token, and the
// leader's removal notices.
type peerAuthTransport struct {
	next  http.RoundTripper
	token func() string
}

func (t *peerAuthTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	token := t.token()
	marked, _ := req.Context().Value(noPeerTokenKey{}).(bool)
	if token == "" || marked || req.Header.Get(echo.HeaderAuthorization) != "" {
		return t.next.RoundTrip(req)
	}
	// A RoundTripper must not change the request it was given.
	out := req.Clone(req.Context())
	out.Header.Set(echo.HeaderAuthorization, "Bearer "+token)
	return t.next.RoundTrip(out)
}

func (t *peerAuthTransport) CloseIdleConnections() {
	if closer, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		closer.CloseIdleConnections()
	}
}
