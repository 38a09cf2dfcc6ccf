package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// Error codes of the JSON error body.
const (
	CodeInvalid       = "invalid"
	CodeNotFound      = "not_found"
	CodeUnauthorized  = "unauthorized"
	CodeForbidden     = "forbidden"
	CodeConflict      = "conflict"
	CodeTooLarge      = "body_too_large"
	CodeNoLeader      = "no_leader"
	CodeRemoved       = "removed"
	CodeTimeout       = "timeout"
	CodeMethod        = "method_not_allowed"
	CodeUnavailable   = "unavailable"
	CodeInternal      = "internal"
	CodeLeaderUnreach = "leader_unreachable"
)

// retryAfterSeconds is sent with every 503: a new leader is normally
// elected within that time.
const retryAfterSeconds = 1

// Error is an API error with its HTTP status. Handlers return it, or a
// sentinel error that toError maps, and the error handler writes
// {"error": {"code", "message", "leader"}}.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	// Leader is the HTTP address of the leader, when known, so a client can
	// send the request there.
	Leader string `json:"leader,omitempty"`
}

func (e *Error) Error() string { return e.Message }

func newError(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message}
}

// errorBody is the JSON shape of every error response.
type errorBody struct {
	Error *Error `json:"error"`
}

// toError maps any error to an *Error. It is the one place where sentinel
// errors become HTTP statuses.
func toError(err error) *Error {
	var apiErr *Error
	var httpErr *echo.HTTPError
	switch {
	case errors.As(err, &apiErr):
		return apiErr
	case errors.Is(err, quota.ErrInvalid):
		return newError(http.StatusBadRequest, CodeInvalid, err.Error())
	case errors.Is(err, raftnode.ErrUnknownServer):
		return newError(http.StatusNotFound, CodeNotFound, err.Error())
	case errors.Is(err, raftnode.ErrPeerRejected):
		return newError(http.StatusBadRequest, CodeInvalid, err.Error()+". Give the joining central a certificate signed by the cluster's CA, and set its --tls-ca to that CA.")
	case errors.Is(err, raftnode.ErrPeerUnreachable):
		return newError(http.StatusServiceUnavailable, CodeUnavailable, err.Error()+". Check the joining central's --raft-addr, which the other centrals connect to; the join is retried.")
	case errors.Is(err, raftnode.ErrNoLeader), errors.Is(err, raftnode.ErrNotLeader):
		return newError(http.StatusServiceUnavailable, CodeNoLeader, err.Error())
	case errors.Is(err, raftnode.ErrClosed):
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "this central is shutting down; send the request to another central")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return newError(http.StatusServiceUnavailable, CodeTimeout, "the request was cancelled or timed out before it finished: "+err.Error())
	case errors.Is(err, raftnode.ErrTimeout):
		return newError(http.StatusServiceUnavailable, CodeTimeout, err.Error())
	case errors.As(err, &httpErr):
		return fromEchoError(httpErr)
	}
	return newError(http.StatusInternalServerError, CodeInternal, "internal error: "+err.Error())
}

func fromEchoError(e *echo.HTTPError) *Error {
	message := http.StatusText(e.Code)
	if m, ok := e.Message.(string); ok {
		message = m
	}
	switch e.Code {
	case http.StatusNotFound:
		return newError(e.Code, CodeNotFound, "no such endpoint; see docs/api.md for the routes")
	case http.StatusMethodNotAllowed:
		return newError(e.Code, CodeMethod, message)
	case http.StatusRequestEntityTooLarge:
		return newError(e.Code, CodeTooLarge, "request body too large")
	case http.StatusBadRequest:
		return newError(e.Code, CodeInvalid, message)
	}
	return newError(e.Code, CodeInternal, message)
}

// handleError is Echo's error handler: it writes every error in the one
// JSON shape, adds Retry-After to 503s and logs server errors.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	apiErr := toError(err)
	if apiErr.Status == http.StatusServiceUnavailable {
		c.Response().Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
		if apiErr.Leader == "" {
			apiErr.Leader = s.leaderHTTPAddr()
		}
	}
	if apiErr.Status >= 500 && apiErr.Status != http.StatusServiceUnavailable {
		s.log.Error("request failed", slog.String("method", c.Request().Method),
			slog.String("path", c.Request().URL.Path), slog.Any("error", err))
	}
	var writeErr error
	if c.Request().Method == http.MethodHead {
		writeErr = c.NoContent(apiErr.Status)
	} else {
		writeErr = c.JSON(apiErr.Status, errorBody{Error: apiErr})
	}
	if writeErr != nil {
		s.log.Debug("writing error response failed", slog.Any("error", writeErr))
	}
}
