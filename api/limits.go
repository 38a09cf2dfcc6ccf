package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/quota"
)

// limitsRequest is the body of PUT /v1/limits/{service}/{user}: tokens per
// second per resource, and optionally the bucket capacity per resource. The
// values stay raw JSON until toLimits parses them, because encoding/json
// names only "limit" in the error for a bad map value, not the resource.
type limitsRequest struct {
	Limit map[string]json.RawMessage `json:"limit"`
	Burst map[string]json.RawMessage `json:"burst"`
}

// decodeLimitsBody decodes and validates the body of PUT
// /v1/limits/{service}/{user} and returns the limit of each resource.
// Errors wrap quota.ErrInvalid and name the field.
func decodeLimitsBody(body []byte) (map[string]quota.Limit, error) {
	var req limitsRequest
	if err := decodeJSON(body, &req); err != nil {
		return nil, err
	}
	return req.toLimits()
}

// checkInputLimits checks the number of resources in limit. burst can
// have no more, because toLimits rejects a burst without a limit.
func (r *limitsRequest) checkInputLimits() error {
	if len(r.Limit) > MaxLimitResources {
		return newInputLimitError(reasonLimitResources, "limit", len(r.Limit), "resources", MaxLimitResources)
	}
	return nil
}

// toLimits validates the request and converts it. Errors wrap
// quota.ErrInvalid and name the field, for example limit.traffic_up.
func (r limitsRequest) toLimits() (map[string]quota.Limit, error) {
	if len(r.Limit) == 0 {
		return nil, fmt.Errorf("%w: limit is missing or empty; give at least one resource, for example {\"limit\": {\"traffic_up\": 1048576}}", quota.ErrInvalid)
	}
	for resource := range r.Burst {
		if _, ok := r.Limit[resource]; !ok {
			return nil, fmt.Errorf("%w: burst.%s has no limit.%s; a burst needs a limit for the same resource", quota.ErrInvalid, resource, resource)
		}
	}
	limits := make(map[string]quota.Limit, len(r.Limit))
	for resource, rawRate := range r.Limit {
		if err := quota.ValidateName("resource name in limit", resource); err != nil {
			return nil, err
		}
		rate, err := parseAmount("limit."+resource, rawRate)
		if err != nil {
			return nil, err
		}
		l := quota.Limit{Rate: rate}
		if rawBurst, ok := r.Burst[resource]; ok {
			if l.Burst, err = parseAmount("burst."+resource, rawBurst); err != nil {
				return nil, err
			}
			// quota.Limit reads a burst of 0 as the default of 10 x the
			// limit, so an explicit 0 is checked here, not by Validate.
			if l.Burst < l.Rate {
				return nil, fmt.Errorf("%w: burst.%s is %v, below limit.%s %v; give a burst of at least the limit, or leave it out for %d x the limit",
					quota.ErrInvalid, resource, l.Burst, resource, l.Rate, quota.DefaultBurstFactor)
			}
		}
		// parseAmount has checked both numbers and the burst is at least
		// the limit, so Validate finds nothing more.
		if err := l.Validate(); err != nil {
			return nil, fmt.Errorf("limit.%s: %w", resource, err)
		}
		limits[resource] = l
	}
	return limits, nil
}

// parseAmount parses one number of the request body and checks it with
// quota.CheckAmount. field names the value in errors, for example
// limit.traffic_up. A null is rejected rather than read as 0, because a
// limit of 0 allows no traffic at all.
func parseAmount(field string, raw json.RawMessage) (float64, error) {
	text := bytes.TrimSpace(raw)
	if bytes.Equal(text, []byte("null")) {
		return 0, fmt.Errorf("%w: %s is null; it must be a number", quota.ErrInvalid, field)
	}
	var v float64
	if err := json.Unmarshal(text, &v); err != nil {
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.As(err, &typeErr) && strings.HasPrefix(typeErr.Value, "number"):
			return 0, fmt.Errorf("%w: %s is %s; it must be a finite number from 0 to 2^53", quota.ErrInvalid, field, text)
		case errors.As(err, &typeErr):
			return 0, fmt.Errorf("%w: %s is a JSON %s; it must be a number", quota.ErrInvalid, field, typeErr.Value)
		}
		return 0, fmt.Errorf("%w: %s is not a valid number: %v", quota.ErrInvalid, field, err)
	}
	if v == quota.MaxAmount && exceedsMaxAmount(text) {
		// float64 rounds integers just above 2^53 down to 2^53.
		return 0, fmt.Errorf("%w: %s is %s; it must be at most 2^53", quota.ErrInvalid, field, text)
	}
	return v, quota.CheckAmount(field, v)
}

// exceedsMaxAmount reports whether the decimal number text is above 2^53,
// exactly.
func exceedsMaxAmount(text []byte) bool {
	exact, ok := new(big.Float).SetPrec(256).SetString(string(text))
	return ok && exact.Cmp(big.NewFloat(quota.MaxAmount)) > 0
}

// pathNames returns the service and user of the path, validated.
func pathNames(c echo.Context) (service, user string, err error) {
	if service, err = pathName(c, "service"); err != nil {
		return "", "", err
	}
	if user, err = pathName(c, "user"); err != nil {
		return "", "", err
	}
	return service, user, nil
}

// pathName returns the path parameter param, percent-decoded and validated
// with quota.ValidateName. Go's net/url sets URL.RawPath when the client's
// escaping differs from the default one, for example %2F or %2B. Echo v4
// then matches routes on RawPath and returns parameters still escaped, so
// without decoding, "a%2Fb" would be stored as the name "a%2Fb" instead of
// being rejected as "a/b".
func pathName(c echo.Context, param string) (string, error) {
	name := c.Param(param)
	if c.Request().URL.RawPath != "" {
		decoded, err := url.PathUnescape(name)
		if err != nil {
			return "", fmt.Errorf("%w: %s %q is not a valid escaped path segment: %v", quota.ErrInvalid, param, name, err)
		}
		name = decoded
	}
	if err := quota.ValidateName(param, name); err != nil {
		return "", err
	}
	return name, nil
}

func (s *Server) putLimits(c echo.Context) error {
	service, user, err := pathNames(c)
	if err != nil {
		return err
	}
	body, err := readBody(c)
	if err != nil {
		return err
	}
	limits, err := decodeLimitsBody(body)
	if err != nil {
		return err
	}
	if !s.cfg.Cluster.IsLeader() {
		return s.forward(c, body)
	}

	now := s.now()
	cmd := fsm.SetLimitsCommand{Service: service, User: user, Limits: limits, TS: now.UnixMilli(), Slot: now.Unix()}
	if err := s.apply(c.Request().Context(), cmd); err != nil {
		s.metrics.limitWrites.WithLabelValues("put", "error").Inc()
		return err
	}
	s.metrics.limitWrites.WithLabelValues("put", "ok").Inc()
	stored, ok := s.cfg.State.Limits(service, user)
	if !ok {
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "the limits were committed but are not readable on this node yet; read them again")
	}
	return c.JSON(http.StatusOK, stored.Record())
}

func (s *Server) deleteLimits(c echo.Context) error {
	service, user, err := pathNames(c)
	if err != nil {
		return err
	}
	if !s.cfg.Cluster.IsLeader() {
		return s.forward(c, nil)
	}
	if _, ok := s.cfg.State.Limits(service, user); !ok {
		return newError(http.StatusNotFound, CodeNotFound, fmt.Sprintf("no limits for user %q of service %q", user, service))
	}
	cmd := fsm.DeleteLimitsCommand{Service: service, User: user, TS: s.now().UnixMilli()}
	if err := s.apply(c.Request().Context(), cmd); err != nil {
		s.metrics.limitWrites.WithLabelValues("delete", "error").Inc()
		return err
	}
	s.metrics.limitWrites.WithLabelValues("delete", "ok").Inc()
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) getLimits(c echo.Context) error {
	service, user, err := pathNames(c)
	if err != nil {
		return err
	}
	if done, err := s.consistentRead(c); done || err != nil {
		return err
	}
	stored, ok := s.cfg.State.Limits(service, user)
	if !ok {
		return newError(http.StatusNotFound, CodeNotFound, fmt.Sprintf("no limits for user %q of service %q", user, service))
	}
	return c.JSON(http.StatusOK, stored.Record())
}

func (s *Server) listServiceLimits(c echo.Context) error {
	service, err := pathName(c, "service")
	if err != nil {
		return err
	}
	if done, err := s.consistentRead(c); done || err != nil {
		return err
	}
	records := s.cfg.State.ServiceLimits(service)
	if records == nil {
		records = []fsm.LimitRecord{}
	}
	return c.JSON(http.StatusOK, records)
}

func (s *Server) listAllLimits(c echo.Context) error {
	if done, err := s.consistentRead(c); done || err != nil {
		return err
	}
	records := []fsm.LimitRecord{}
	for _, service := range s.cfg.State.Services() {
		records = append(records, s.cfg.State.ServiceLimits(service)...)
	}
	return c.JSON(http.StatusOK, records)
}

// consistentRead handles ?consistent=true: a follower forwards the read to
// the leader (done is true), the leader first runs a barrier so its state
// holds every committed write. Without the parameter reads are local.
func (s *Server) consistentRead(c echo.Context) (done bool, err error) {
	switch v := c.QueryParam("consistent"); v {
	case "", "false":
		return false, nil
	case "true":
	default:
		return true, fmt.Errorf("%w: consistent is %q; use true or false", quota.ErrInvalid, v)
	}
	if !s.cfg.Cluster.IsLeader() {
		return true, s.forward(c, nil)
	}
	return false, s.cfg.Cluster.Barrier(c.Request().Context())
}

// apply encodes cmd and replicates it through Raft.
func (s *Server) apply(ctx context.Context, cmd fsm.Command) error {
	data, err := fsm.Encode(cmd)
	if err != nil {
		return err
	}
	_, err = s.cfg.Cluster.Apply(ctx, data)
	return err
}
