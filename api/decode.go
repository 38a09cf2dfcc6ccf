package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/quota"
)

// readBody reads the whole request body; limitBody has capped it.
func readBody(c echo.Context) ([]byte, error) {
	body, err := io.ReadAll(c.Request().Body)
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

// decodeJSON decodes one JSON object into v, rejecting unknown fields and
// trailing data. Errors wrap quota.ErrInvalid and name the field.
func decodeJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return fmt.Errorf("%w: request body is empty; send a JSON object", quota.ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s", quota.ErrInvalid, describeJSONError(err))
	}
	if dec.More() {
		return fmt.Errorf("%w: request body has data after the JSON object", quota.ErrInvalid)
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
