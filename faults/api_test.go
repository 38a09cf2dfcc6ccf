//go:build linux

package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"
)

// response is what a central returned for one request.
type response struct {
	status int
	header http.Header
	body   []byte
}

// apiError is the JSON error body of every central error.
type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Leader  string `json:"leader"`
	} `json:"error"`
}

// errorCode returns the error code of a JSON error body, or "" when the
// body is not one.
func (r response) errorCode() string {
	var e apiError
	if json.Unmarshal(r.body, &e) != nil {
		return ""
	}
	return e.Error.Code
}

func (r response) String() string {
	return fmt.Sprintf("HTTP %d %s", r.status, bytes.TrimSpace(r.body))
}

// retryableCodes are the error codes of the 503s that docs/api.md lists:
// no leader known, the leader did not respond, the write did not commit
// in time, or the central is shutting down. A client retries each of them.
var retryableCodes = []string{"no_leader", "leader_unreachable", "timeout", "unavailable"}

// checkRetryable returns "" when r is a retryable error as docs/api.md
// describes it (503, a retryable code and Retry-After), or what differs.
func checkRetryable(r response) string {
	switch {
	case r.status != http.StatusServiceUnavailable:
		return fmt.Sprintf("status %d, want 503: %s", r.status, r)
	case !slices.Contains(retryableCodes, r.errorCode()):
		return fmt.Sprintf("error code %q, want one of %v: %s", r.errorCode(), retryableCodes, r)
	case r.header.Get("Retry-After") == "":
		return fmt.Sprintf("503 without Retry-After: %s", r)
	}
	return ""
}

// transport sends one HTTP request to a central. The centrals on
// 127.0.0.1 are reached directly, and those in network namespaces through
// curl run inside the namespace.
type transport interface {
	do(ctx context.Context, node *centralNode, method, path string, body []byte) (response, error)
}

// loopbackTransport reaches centrals on 127.0.0.1 with one shared client.
type loopbackTransport struct {
	client *http.Client
}

func newLoopbackTransport() loopbackTransport {
	return loopbackTransport{client: &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     30 * time.Second,
	}}}
}

func (l loopbackTransport) do(ctx context.Context, node *centralNode, method, path string, body []byte) (response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+node.clientAddr+path, bytes.NewReader(body))
	if err != nil {
		return response{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return response{}, fmt.Errorf("reading the response of %s %s on %s: %w", method, path, node.id, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

// clusterView is the part of GET /v1/cluster that the tests read.
type clusterView struct {
	NodeID       string `json:"node_id"`
	State        string `json:"state"`
	Leader       string `json:"leader"`
	Term         uint64 `json:"term"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	Servers      []struct {
		ID       string `json:"id"`
		Suffrage string `json:"suffrage"`
		Leader   bool   `json:"leader"`
		Gossip   string `json:"gossip"`
	} `json:"servers"`
}

// limitRecord is one record of GET /v1/limits and the body of PUT
// /v1/limits/{service}/{user}.
type limitRecord struct {
	Service  string             `json:"service"`
	Username string             `json:"username"`
	Limit    map[string]float64 `json:"limit"`
	Burst    map[string]float64 `json:"burst"`
}

// member is one entry of GET /v1/members.
type member struct {
	NodeID string `json:"node_id"`
	Role   string `json:"role"`
	State  string `json:"state"`
}

// membersView is the body of GET /v1/members.
type membersView struct {
	NodeID  string   `json:"node_id"`
	Gossip  bool     `json:"gossip"`
	Members []member `json:"members"`
}

// reportReply is the version 2 reply to POST /v1/report.
type reportReply struct {
	Version     int    `json:"version"`
	Slot        int64  `json:"slot"`
	CentralSlot int64  `json:"central_slot"`
	Offset      int64  `json:"offset"`
	Leader      string `json:"leader"`
	Duplicate   bool   `json:"duplicate"`
	// Quotas is service -> slot (the node's numbering) -> user ->
	// resource -> quota.
	Quotas map[string]map[string]map[string]map[string]float64 `json:"quotas"`
	// Shares is service -> user -> resource -> safe share.
	Shares map[string]map[string]map[string]float64 `json:"shares"`
}

// reportBody is a version 2 report of the counts of one user and
// resource.
type reportBody struct {
	Version     int                                      `json:"version"`
	NodeID      string                                   `json:"node_id"`
	Slot        int64                                    `json:"slot_number"`
	Consumption map[string]map[string]map[string]float64 `json:"consumption"`
	Rejection   map[string]map[string]map[string]float64 `json:"rejection"`
}

func newReport(node string, slot int64, service, user, resource string, consumption, rejection float64) reportBody {
	r := reportBody{
		Version:     2,
		NodeID:      node,
		Slot:        slot,
		Consumption: map[string]map[string]map[string]float64{service: {user: {resource: consumption}}},
		Rejection:   map[string]map[string]map[string]float64{service: {}},
	}
	if rejection > 0 {
		r.Rejection[service][user] = map[string]float64{resource: rejection}
	}
	return r
}

// decodeJSON decodes a 200 response body into v.
func decodeJSON(r response, v any) error {
	if r.status != http.StatusOK {
		return fmt.Errorf("%s", r)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		return fmt.Errorf("invalid JSON: %v: %s", err, r.body)
	}
	return nil
}

// limitBody is the body of a PUT of one resource's limit, with a burst
// when burst is positive.
func limitBody(resource string, limit, burst float64) []byte {
	if burst > 0 {
		return fmt.Appendf(nil, `{"limit":{%q:%v},"burst":{%q:%v}}`, resource, limit, resource, burst)
	}
	return fmt.Appendf(nil, `{"limit":{%q:%v}}`, resource, limit)
}
