package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/throttlecentral/throttle-central/protocol"
	"io"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/quota"
)

// Limits on the number of entries one request may carry. Each bounds the
// memory and time one client can take on the leader. They are far above
// real traffic: the recorded lua-resty-throttle reports name one service
// of a few users with at most 3 resources each, and the load target is
// 1,000 users per edge node. DefaultBodyLimit and MaxFrame bound the
// bytes, and quota.MaxNameLength the names.
const (
	// MaxReportServices is the maximum number of services in a report's
	// consumption map, and again in its rejection map.
	MaxReportServices = protocol.MaxReportServices
	// MaxReportUsers is the maximum number of users of one service in
	// consumption or in rejection. A 1 MiB body cannot carry many more.
	MaxReportUsers = protocol.MaxReportUsers
	// MaxReportResources is the maximum number of resources of one user in
	// consumption or in rejection.
	MaxReportResources = protocol.MaxReportResources
	// MaxLimitResources is the maximum number of resources in the limit map
	// of one PUT /v1/limits request. It equals MaxReportResources, because
	// a report can carry no more resources of one user than that.
	MaxLimitResources = MaxReportResources
)

// Reasons of throttle_rejected_input_total: which input limit a rejected
// request exceeded.
const (
	reasonBodySize       = "body_size"
	reasonFrameSize      = "frame_size"
	reasonNameLength     = "name_length"
	reasonServices       = "services"
	reasonUsers          = "users"
	reasonResources      = "resources"
	reasonLimitResources = "limit_resources"
	reasonNodeSockets    = "node_sockets"
)

// inputLimitError is input with more entries than one of the limits above
// allows. It wraps quota.ErrInvalid, so the API rejects it with 400.
type inputLimitError struct {
	// reason is the label of throttle_rejected_input_total.
	reason  string
	message string
}

func (e *inputLimitError) Error() string { return e.message }
func (e *inputLimitError) Unwrap() error { return quota.ErrInvalid }

// newInputLimitError returns the error of field, which has count entries
// of kind (services, users, resources) where limit is the maximum.
func newInputLimitError(reason, field string, count int, kind string, limit int) *inputLimitError {
	return &inputLimitError{
		reason:  reason,
		message: fmt.Sprintf("%v: %s has %d %s; the maximum is %d", quota.ErrInvalid, field, count, kind, limit),
	}
}

// rejectedInputReason returns the input limit that err reports, as a
// reason of throttle_rejected_input_total, or "" when err is not about an
// input limit.
func rejectedInputReason(err error) string {
	var limitErr *inputLimitError
	var apiErr *Error
	switch {
	case errors.As(err, &limitErr):
		return limitErr.reason
	case errors.Is(err, quota.ErrNameTooLong):
		return reasonNameLength
	case errors.As(err, &apiErr) && apiErr.Code == CodeTooLarge && apiErr != errMonitorTooLarge:
		return reasonBodySize
	}
	return ""
}

// readBody reads the whole request body; limitBody has capped it.
func readBody(c echo.Context) ([]byte, error) {
	req := c.Request()
	var body []byte
	var err error
	if n := req.ContentLength; n > 0 && n <= DefaultBodyLimit {
		// One allocation of the announced size: io.ReadAll would grow and
		// copy its buffer about ten times for an 80 KB report. A length
		// above DefaultBodyLimit is read the plain way, so a false length
		// allocates at most 1 MiB.
		body = make([]byte, n)
		_, err = io.ReadFull(req.Body, body)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("the body ended before its Content-Length of %d bytes", n)
		}
	} else {
		body, err = io.ReadAll(req.Body)
	}
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, newError(http.StatusRequestEntityTooLarge, CodeTooLarge,
			fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit))
	case err != nil:
		return nil, newError(http.StatusBadRequest, CodeInvalid, "reading the request body failed: "+err.Error())
	}
	return body, nil
}

// inputLimitChecker is a request type with limits on its number of
// entries. decodeJSON calls checkInputLimits right after decoding, so a
// request over a limit is rejected before any of its values is parsed.
type inputLimitChecker interface {
	// checkInputLimits returns an *inputLimitError for the first limit
	// exceeded, or nil.
	checkInputLimits() error
}

// decodeJSON decodes one JSON object into v, rejecting unknown fields and
// trailing data, and then checks the input limits of v when v is an
// inputLimitChecker. Errors wrap quota.ErrInvalid and name the field.
func decodeJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return fmt.Errorf("%w: request body is empty; send a JSON object", quota.ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s", quota.ErrInvalid, describeJSONError(err))
	}
	// Decoder.More reports false before a stray '}' or ']', so it would let
	// {...}} through. Only io.EOF proves that nothing follows.
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: request body has data after the JSON object", quota.ErrInvalid)
	}
	if checker, ok := v.(inputLimitChecker); ok {
		return checker.checkInputLimits()
	}
	return nil
}

// checkInputLimits checks the number of services, users and resources in
// consumption and in rejection. The fast parser checks the same limits
// while it parses, and hands a report over them to the decoder that calls
// this.
func (w *wireReport) checkInputLimits() error {
	for _, part := range []struct {
		field  string
		counts map[string]map[string]map[string]json.RawMessage
	}{{"consumption", w.Consumption}, {"rejection", w.Rejection}} {
		if len(part.counts) > MaxReportServices {
			return newInputLimitError(reasonServices, part.field, len(part.counts), "services", MaxReportServices)
		}
		for service, users := range part.counts {
			if len(users) > MaxReportUsers {
				return newInputLimitError(reasonUsers, part.field+"."+service, len(users), "users", MaxReportUsers)
			}
			for user, resources := range users {
				if len(resources) > MaxReportResources {
					return newInputLimitError(reasonResources, part.field+"."+service+"."+user, len(resources), "resources", MaxReportResources)
				}
			}
		}
	}
	return nil
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			field = "request body"
		}
		return fmt.Sprintf("%s is a JSON %s; it must be a %s", field, typeErr.Value, jsonTypeName(typeErr.Type.Kind().String()))
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("request body is not valid JSON at byte %d: %v", syntaxErr.Offset, err)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "request body ends in the middle of the JSON object"
	}
	return "request body is not valid JSON: " + err.Error()
}

func jsonTypeName(kind string) string {
	switch kind {
	case "float64", "float32", "int64", "int", "uint64":
		return "number"
	case "map", "struct":
		return "JSON object"
	case "string":
		return "string"
	case "slice":
		return "JSON array"
	}
	return kind
}
