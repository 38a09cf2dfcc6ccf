package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/throttlecentral/throttle-central/internal/cli"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// maxResponseBytes bounds a response body that the client reads. The
// largest response is GET /v1/limits with every user of every service.
const maxResponseBytes = 256 << 20

// client sends API requests to the centrals of --addr with failover: it
// tries them in order, starting with the one that responded last, and moves
// to the next on a connection error, a timeout or a 502, 503 or 504. Any
// other status is final.
type client struct {
	centrals      []string
	http          *http.Client
	authorization string
	timeout       time.Duration
	// preferred is the index of the central that responded last.
	preferred int
}

// newClient checks the global flags and builds the client. Its errors are
// usage errors; they never contain the token.
func newClient(o globalOptions) (*client, error) {
	if o.timeout <= 0 {
		return nil, usagef("--timeout %v must be positive, for example 5s", o.timeout)
	}
	if o.tlsCA != "" && o.tlsSkipVerify {
		return nil, usagef("--tls-ca and --tls-skip-verify exclude each other: verify with the CA, or do not verify at all")
	}
	useTLS := o.tlsCA != "" || o.tlsSkipVerify
	centrals, err := parseCentrals(o.addr, useTLS)
	if err != nil {
		return nil, err
	}
	token, err := readToken(o)
	if err != nil {
		return nil, err
	}
	tlsConfig, err := buildTLSConfig(o)
	if err != nil {
		return nil, err
	}

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsConfig
	c := &client{
		centrals: centrals,
		http:     &http.Client{Transport: transport},
		timeout:  o.timeout,
	}
	if token != "" {
		c.authorization = "Bearer " + token
	}
	return c, nil
}

// parseCentrals parses --addr into base URLs without a trailing slash.
func parseCentrals(list string, useTLS bool) ([]string, error) {
	entries := cli.SplitList(list)
	if len(entries) == 0 {
		return nil, usagef("--addr is empty; give at least one central, for example 127.0.0.1:8081")
	}
	centrals := make([]string, 0, len(entries))
	for _, entry := range entries {
		base, err := parseCentral(entry, useTLS)
		if err != nil {
			return nil, err
		}
		centrals = append(centrals, base)
	}
	return centrals, nil
}

func parseCentral(entry string, useTLS bool) (string, error) {
	if !strings.Contains(entry, "://") {
		host, port, err := net.SplitHostPort(entry)
		if err != nil {
			return "", usagef("--addr %q is not host:port or a URL: %v; use for example 127.0.0.1:8081 or https://central-1:8081", entry, err)
		}
		if host == "" {
			return "", usagef("--addr %q has no host; use for example 127.0.0.1%s", entry, entry)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", usagef("--addr %q has port %q; the port must be a number from 1 to 65535", entry, port)
		}
		scheme := "http://"
		if useTLS {
			scheme = "https://"
		}
		return scheme + net.JoinHostPort(host, port), nil
	}

	u, err := url.Parse(entry)
	switch {
	case err != nil:
		return "", usagef("--addr %q is not a valid URL: %v", entry, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return "", usagef("--addr %q has scheme %q; use http or https", entry, u.Scheme)
	case u.Host == "":
		return "", usagef("--addr %q has no host", entry)
	case u.User != nil:
		return "", usagef("--addr %q contains user info; give credentials with --token or --token-file", u.Redacted())
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", usagef("--addr %q must not have a query or fragment", entry)
	}
	return strings.TrimRight(entry, "/"), nil
}

// readToken returns the bearer token of --token or --token-file, or "".
func readToken(o globalOptions) (string, error) {
	if o.token != "" && o.tokenFile != "" {
		return "", usagef("--token and --token-file exclude each other; set one")
	}
	token := o.token
	if o.tokenFile != "" {
		data, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return "", usagef("--token-file: %v", err)
		}
		token = strings.TrimSpace(string(data))
		if token == "" {
			return "", usagef("--token-file %s is empty; write the token into it", o.tokenFile)
		}
	}
	if strings.ContainsAny(token, "\r\n") {
		return "", usagef("the token contains a line break, which an HTTP header cannot carry; give it on one line")
	}
	return token, nil
}

func buildTLSConfig(o globalOptions) (*tls.Config, error) {
	switch {
	case o.tlsSkipVerify:
		return &tls.Config{InsecureSkipVerify: true}, nil
	case o.tlsCA != "":
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return nil, usagef("--tls-ca: %v", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, usagef("--tls-ca %s contains no PEM certificate", o.tlsCA)
		}
		return &tls.Config{RootCAs: roots}, nil
	}
	return nil, nil
}

// response is a central's final response: a status other than 502, 503
// and 504.
type response struct {
	status  int
	body    []byte
	central string
}

// apiErrorBody is the error shape of the API: {"error": {"code", "message",
// "leader"}}.
type apiErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Leader  string `json:"leader"`
	} `json:"error"`
}

// statusError is a final error status from a central: a 4xx, or a 5xx other
// than 502, 503 and 504.
type statusError struct {
	method, path string
	central      string
	status       int
	code         string
	message      string
	// earlierAttempt, when set, notes that a previous attempt of this write
	// timed out at another central and may have been applied.
	earlierAttempt string
}

func (e *statusError) Error() string {
	text := fmt.Sprintf("%s %s returned %d %s from %s", e.method, e.path, e.status, e.code, e.central)
	if e.message != "" {
		text += ": " + e.message
	}
	if e.earlierAttempt != "" {
		text += " (" + e.earlierAttempt + ")"
	}
	return text
}

// unavailableError means that no central gave a final response.
type unavailableError struct {
	method, path string
	failures     []string
}

func (e *unavailableError) Error() string {
	return fmt.Sprintf("no central responded to %s %s: %s; check --addr and that the centrals run and have a leader",
		e.method, e.path, strings.Join(e.failures, "; "))
}

// do sends one request with failover and returns the first final
// response when it is a 2xx; any other final status is a *statusError.
// When no central gives a final response, the error is an
// *unavailableError. body is JSON, or nil for none.
func (c *client) do(ctx context.Context, method, path string, query url.Values, body []byte) (*response, error) {
	target := path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var failures []string
	earlierAttempt := ""
	for attempt := range c.centrals {
		index := (c.preferred + attempt) % len(c.centrals)
		central := c.centrals[index]
		resp, err := c.send(ctx, method, central+target, body)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%s %s cancelled: %w", method, path, context.Cause(ctx))
			}
			failures = append(failures, fmt.Sprintf("%s: %v", central, err))
			if method != http.MethodGet && isTimeout(err) {
				earlierAttempt = fmt.Sprintf("an earlier attempt at %s timed out and may have been applied; read the state before you retry", central)
			}
			continue
		}
		resp.central = central
		if resp.status >= 200 && resp.status < 300 {
			c.preferred = index
			return resp, nil
		}
		apiErr := decodeAPIError(resp)
		if isRetryableStatus(resp.status) {
			failure := fmt.Sprintf("%s: %d %s: %s", central, resp.status, apiErr.Error.Code, apiErr.Error.Message)
			if apiErr.Error.Leader != "" {
				failure += " (leader at " + apiErr.Error.Leader + ")"
			}
			failures = append(failures, failure)
			if method != http.MethodGet && (apiErr.Error.Code == "timeout" || apiErr.Error.Code == "leader_unreachable") {
				earlierAttempt = fmt.Sprintf("an earlier attempt at %s returned %s and may have been applied; read the state before you retry", central, apiErr.Error.Code)
			}
			continue
		}
		c.preferred = index
		return nil, &statusError{
			method: method, path: path, central: central, status: resp.status,
			code: apiErr.Error.Code, message: apiErr.Error.Message, earlierAttempt: earlierAttempt,
		}
	}
	return nil, &unavailableError{method: method, path: path, failures: failures}
}

// send makes one request to one central within the client's timeout and
// reads the whole response.
func (c *client) send(ctx context.Context, method, target string, body []byte) (*response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, reader)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.authorization != "" {
		req.Header.Set("Authorization", c.authorization)
	}

	resp, err := c.http.Do(req)
	if err != nil {
		return nil, describeTransportError(err, c.timeout)
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the response failed: %w", describeTransportError(err, c.timeout))
	}
	if len(data) > maxResponseBytes {
		return nil, fmt.Errorf("the response is larger than %d MiB", maxResponseBytes>>20)
	}
	return &response{status: resp.StatusCode, body: data}, nil
}

// timeoutError is a request that took longer than --timeout.
type timeoutError struct{ timeout time.Duration }

func (e *timeoutError) Error() string {
	return fmt.Sprintf("timed out after %v (--timeout)", e.timeout)
}

func isTimeout(err error) bool {
	var t *timeoutError
	return errors.As(err, &t)
}

// describeTransportError drops the method and URL that net/http puts in
// front of the cause, because the caller names the central already.
func describeTransportError(err error, timeout time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &timeoutError{timeout: timeout}
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return &timeoutError{timeout: timeout}
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		return urlErr.Err
	}
	return err
}

func isRetryableStatus(status int) bool {
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

// decodeAPIError reads the API's error body. A body of another shape, for
// example from a proxy, becomes the message, shortened.
func decodeAPIError(resp *response) apiErrorBody {
	var body apiErrorBody
	if err := json.Unmarshal(resp.body, &body); err == nil && body.Error.Code != "" {
		return body
	}
	body.Error.Code = strings.ToLower(strings.ReplaceAll(http.StatusText(resp.status), " ", "_"))
	text := strings.TrimSpace(string(resp.body))
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	body.Error.Message = text
	return body
}

// getJSON sends a GET request and decodes the response into v.
func (c *client) getJSON(ctx context.Context, path string, query url.Values, v any) (*response, error) {
	resp, err := c.do(ctx, http.MethodGet, path, query, nil)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(resp.body, v); err != nil {
		return nil, fmt.Errorf("the response of %s to GET %s is not the expected JSON: %v", resp.central, path, err)
	}
	return resp, nil
}

// isNotFound reports whether err is a 404 from a central.
func isNotFound(err error) bool {
	var status *statusError
	return errors.As(err, &status) && status.status == http.StatusNotFound
}

// pathSegment escapes one name for a URL path. Names may contain any
// printable character but '/'.
func pathSegment(name string) string {
	return url.PathEscape(name)
}
