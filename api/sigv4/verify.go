// Package sigv4 verifies AWS Signature Version 4 presigned query strings,
// which lua-resty-throttle edge nodes attach to the WebSocket handshake.
//
// Only the presigned query form is supported, with "host" as the only signed
// header and UNSIGNED-PAYLOAD as the payload hash, because that is what the
// client sends. A Verifier is safe for concurrent use.
package sigv4

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults that NewVerifier applies to zero fields of Options.
const (
	DefaultMaxSkew = 5 * time.Minute
	DefaultRegion  = "us-east-1"
	DefaultService = "s3"
)

// MaxExpires is the largest X-Amz-Expires value that Verify accepts, in
// seconds (7 days).
const MaxExpires = 604800

// ErrUnauthorized is wrapped by every error that Verify returns.
var ErrUnauthorized = errors.New("sigv4: unauthorized")

// Options configures a Verifier. Zero fields take the Default* values.
type Options struct {
	// Now is the clock that expiry is checked against. Default time.Now.
	Now func() time.Time
	// MaxSkew is how far X-Amz-Date may lie ahead of Now, to tolerate clients
	// whose clock runs fast. Default DefaultMaxSkew.
	MaxSkew time.Duration
	// Region is the region that the credential scope must name.
	Region string
	// Service is the service that the credential scope must name.
	Service string
}

// Verifier checks SigV4 presigned queries against a fixed set of key pairs.
type Verifier struct {
	secretKeys map[string]string // access key -> secret key
	now        func() time.Time
	maxSkew    time.Duration
	region     string
	service    string
}

// NewVerifier returns a Verifier that accepts signatures made with any of
// keys, a map from access key to secret key.
//
// Both keys of a pair must be non-empty and contain only visible ASCII
// characters (no spaces or control characters). An access key must not
// contain '/', because '/' separates the fields of X-Amz-Credential. Errors
// name the access key, never the secret key.
func NewVerifier(keys map[string]string, opts Options) (*Verifier, error) {
	if len(keys) == 0 {
		return nil, errors.New("sigv4: no key pairs given, expected at least one access key with its secret key")
	}

	secretKeys := make(map[string]string, len(keys))
	// Sorted so that the same invalid input always reports the same key.
	for _, accessKey := range slices.Sorted(maps.Keys(keys)) {
		secretKey := keys[accessKey]
		if err := validateKeyPair(accessKey, secretKey); err != nil {
			return nil, err
		}
		secretKeys[accessKey] = secretKey
	}

	v := &Verifier{
		secretKeys: secretKeys,
		now:        opts.Now,
		maxSkew:    opts.MaxSkew,
		region:     opts.Region,
		service:    opts.Service,
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.maxSkew < 0 {
		return nil, fmt.Errorf("sigv4: invalid MaxSkew %s, expected zero (default %s) or more", v.maxSkew, DefaultMaxSkew)
	}
	if v.maxSkew == 0 {
		v.maxSkew = DefaultMaxSkew
	}
	if v.region == "" {
		v.region = DefaultRegion
	}
	if v.service == "" {
		v.service = DefaultService
	}
	if err := validateScopeField("Region", v.region); err != nil {
		return nil, err
	}
	if err := validateScopeField("Service", v.service); err != nil {
		return nil, err
	}
	return v, nil
}

func validateKeyPair(accessKey, secretKey string) error {
	if accessKey == "" {
		return errors.New("sigv4: empty access key in the key pairs")
	}
	if i := indexNotVisibleASCII(accessKey); i >= 0 {
		return fmt.Errorf("sigv4: access key %q contains a character that is not visible ASCII at byte %d", accessKey, i)
	}
	if strings.Contains(accessKey, "/") {
		return fmt.Errorf("sigv4: access key %q contains '/', which separates the fields of X-Amz-Credential", accessKey)
	}
	if secretKey == "" {
		return fmt.Errorf("sigv4: secret key of access key %q is empty", accessKey)
	}
	if i := indexNotVisibleASCII(secretKey); i >= 0 {
		return fmt.Errorf("sigv4: secret key of access key %q contains a character that is not visible ASCII at byte %d", accessKey, i)
	}
	return nil
}

func validateScopeField(option, value string) error {
	if i := indexNotVisibleASCII(value); i >= 0 {
		return fmt.Errorf("sigv4: invalid %s %q: character at byte %d is not visible ASCII", option, value, i)
	}
	if strings.Contains(value, "/") {
		return fmt.Errorf("sigv4: invalid %s %q: '/' separates the fields of the credential scope", option, value)
	}
	return nil
}

// indexNotVisibleASCII returns the index of the first byte outside '!'..'~',
// or -1 when there is none.
func indexNotVisibleASCII(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return i
		}
	}
	return -1
}

// presignedParams contains the X-Amz-* query parameters that Verify requires.
type presignedParams struct {
	algorithm     string
	credential    string
	date          string
	expires       string
	signedHeaders string
	signature     string
}

// Verify checks the presigned query of a request for method, host and path.
//
// host is the Host header exactly as the client sent it, including the port,
// and path is the decoded URL path (http.Request.URL.Path). Every query
// parameter except X-Amz-Signature is part of the signed canonical query, so a
// parameter added or changed after signing makes the signature invalid.
//
// Every error wraps ErrUnauthorized and names what failed. No error contains a
// secret key or the expected signature.
func (v *Verifier) Verify(method, host, path string, query url.Values) error {
	params, err := readPresignedParams(query)
	if err != nil {
		return err
	}

	if params.algorithm != Algorithm {
		return unauthorized("unsupported %s %s, expected %s", paramAlgorithm, quote(params.algorithm), Algorithm)
	}
	if params.signedHeaders != signedHeaders {
		return unauthorized("%s is %s, expected %q because only the Host header may be signed",
			paramSignedHeaders, quote(params.signedHeaders), signedHeaders)
	}
	if host == "" {
		return unauthorized("missing Host header, which is part of the signature")
	}

	accessKey, secretKey, day, err := v.checkCredential(params.credential)
	if err != nil {
		return err
	}
	if err := v.checkTime(params.date, day, params.expires); err != nil {
		return err
	}

	canonical := canonicalRequest(method, host, path, query)
	expected := signature(secretKey, params.date, day, v.region, v.service, canonical)
	// ConstantTimeCompare returns 0 at once for different lengths, which
	// reveals only the length of the expected signature (always 64).
	if subtle.ConstantTimeCompare([]byte(expected), []byte(params.signature)) != 1 {
		return unauthorized("signature mismatch for access key %q, host %s and path %s: check the secret key and that the Host header is the one the client signed",
			accessKey, quote(host), quote(path))
	}
	return nil
}

// readPresignedParams returns the required X-Amz-* parameters, each of which
// must appear exactly once with a non-empty value.
func readPresignedParams(query url.Values) (presignedParams, error) {
	var params presignedParams
	fields := []struct {
		name  string
		value *string
	}{
		{paramAlgorithm, &params.algorithm},
		{paramCredential, &params.credential},
		{paramDate, &params.date},
		{paramExpires, &params.expires},
		{paramSignedHeaders, &params.signedHeaders},
		{paramSignature, &params.signature},
	}
	for _, field := range fields {
		values := query[field.name]
		switch {
		case len(values) == 0:
			return params, unauthorized("missing query parameter %s", field.name)
		case len(values) > 1:
			return params, unauthorized("query parameter %s appears %d times, expected once", field.name, len(values))
		case values[0] == "":
			return params, unauthorized("query parameter %s is empty", field.name)
		}
		*field.value = values[0]
	}
	return params, nil
}

// checkCredential parses X-Amz-Credential, which has the form
// <access key>/<yyyymmdd>/<region>/<service>/aws4_request, and returns the
// access key, its secret key and the scope date.
func (v *Verifier) checkCredential(credential string) (accessKey, secretKey, day string, err error) {
	fields := strings.Split(credential, "/")
	if len(fields) != 5 || fields[4] != scopeTerminator {
		return "", "", "", unauthorized("invalid %s %s, expected <access key>/<yyyymmdd>/<region>/<service>/%s",
			paramCredential, quote(credential), scopeTerminator)
	}
	accessKey, day, region, service := fields[0], fields[1], fields[2], fields[3]

	secretKey, ok := v.secretKeys[accessKey]
	if !ok {
		return "", "", "", unauthorized("unknown access key %s", quote(accessKey))
	}
	if region != v.region {
		return "", "", "", unauthorized("credential scope region %s of access key %q does not match the expected %q",
			quote(region), accessKey, v.region)
	}
	if service != v.service {
		return "", "", "", unauthorized("credential scope service %s of access key %q does not match the expected %q",
			quote(service), accessKey, v.service)
	}
	return accessKey, secretKey, day, nil
}

// checkTime checks that X-Amz-Date is well formed, falls on the credential
// scope date, and that the current time lies in [date - MaxSkew, date + expires].
func (v *Verifier) checkTime(amzDate, day, expires string) error {
	signedAt, err := time.Parse(amzDateLayout, amzDate)
	// The round trip rejects forms that time.Parse tolerates, such as a
	// one-digit hour.
	if err != nil || signedAt.Format(amzDateLayout) != amzDate {
		return unauthorized("invalid %s %s, expected the form 20060102T150405Z (UTC)", paramDate, quote(amzDate))
	}
	if day != amzDate[:len(scopeDateLayout)] {
		return unauthorized("credential scope date %s does not match %s %s", quote(day), paramDate, amzDate)
	}

	seconds, err := parseExpires(expires)
	if err != nil {
		return err
	}

	now := v.now()
	expiresAt := signedAt.Add(time.Duration(seconds) * time.Second)
	if now.After(expiresAt) {
		return unauthorized("request expired at %s (%s %s plus %d s), server time is %s",
			expiresAt.Format(time.RFC3339), paramDate, amzDate, seconds, now.UTC().Format(time.RFC3339))
	}
	if ahead := signedAt.Sub(now); ahead > v.maxSkew {
		return unauthorized("%s %s is %s ahead of the server time %s, more than the allowed clock skew of %s",
			paramDate, amzDate, ahead.Round(time.Second), now.UTC().Format(time.RFC3339), v.maxSkew)
	}
	return nil
}

// parseExpires parses X-Amz-Expires, a decimal number of seconds in
// 1..MaxExpires without a sign.
func parseExpires(expires string) (int, error) {
	for i := 0; i < len(expires); i++ {
		if expires[i] < '0' || expires[i] > '9' {
			return 0, unauthorized("invalid %s %s, expected a whole number of seconds", paramExpires, quote(expires))
		}
	}
	seconds, err := strconv.Atoi(expires)
	if err != nil || seconds < 1 || seconds > MaxExpires {
		return 0, unauthorized("%s %s is out of range, expected 1 to %d seconds", paramExpires, quote(expires), MaxExpires)
	}
	return seconds, nil
}

func unauthorized(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnauthorized, fmt.Sprintf(format, args...))
}

// maxQuotedLength limits how many bytes of a client-supplied value an error
// message repeats, so that a long query cannot flood the logs.
const maxQuotedLength = 80

// quote returns s in Go quoted form, which escapes control characters, and
// cut to maxQuotedLength bytes.
func quote(s string) string {
	if len(s) > maxQuotedLength {
		return strconv.Quote(s[:maxQuotedLength]) + "..."
	}
	return strconv.Quote(s)
}
