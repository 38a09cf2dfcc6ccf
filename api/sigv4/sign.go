package sigv4

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Algorithm is the only X-Amz-Algorithm that Verify accepts.
const Algorithm = "AWS4-HMAC-SHA256"

// Names of the query parameters of a presigned request.
const (
	paramAlgorithm     = "X-Amz-Algorithm"
	paramCredential    = "X-Amz-Credential"
	paramDate          = "X-Amz-Date"
	paramExpires       = "X-Amz-Expires"
	paramSignedHeaders = "X-Amz-SignedHeaders"
	paramSignature     = "X-Amz-Signature"
)

const (
	amzDateLayout   = "20060102T150405Z"
	scopeDateLayout = "20060102"
	scopeTerminator = "aws4_request"
	signedHeaders   = "host"
	unsignedPayload = "UNSIGNED-PAYLOAD"
)

// Presign returns the query parameters that presign a request for method,
// host and path at the time at, valid for expires. The result contains
// X-Amz-Algorithm, X-Amz-Credential, X-Amz-Date, X-Amz-Expires,
// X-Amz-SignedHeaders and X-Amz-Signature. Verify accepts it with the same key
// pair, region and service. Encode it with url.Values.Encode.
//
// host must be the Host header that the request will carry, including the
// port. expires is cut to whole seconds, and Verify rejects values outside
// 1 s to MaxExpires seconds. Presign does not validate its arguments. Adding a
// parameter to the result makes the signature invalid, because Verify signs
// every parameter.
func Presign(accessKey, secret, method, host, path string, at time.Time, expires time.Duration, region, service string) url.Values {
	at = at.UTC()
	amzDate := at.Format(amzDateLayout)
	day := at.Format(scopeDateLayout)

	query := url.Values{}
	query.Set(paramAlgorithm, Algorithm)
	query.Set(paramCredential, strings.Join([]string{accessKey, day, region, service, scopeTerminator}, "/"))
	query.Set(paramDate, amzDate)
	query.Set(paramExpires, strconv.FormatInt(int64(expires/time.Second), 10))
	query.Set(paramSignedHeaders, signedHeaders)

	canonical := canonicalRequest(method, host, path, query)
	query.Set(paramSignature, signature(secret, amzDate, day, region, service, canonical))
	return query
}

// canonicalRequest builds the SigV4 canonical request of a presigned request
// whose only signed header is host.
func canonicalRequest(method, host, path string, query url.Values) string {
	return strings.Join([]string{
		method,
		canonicalURI(path),
		canonicalQuery(query),
		"host:" + host,
		"", // the canonical headers end with a newline
		signedHeaders,
		unsignedPayload,
	}, "\n")
}

// canonicalURI URI-encodes path once, keeping '/'.
func canonicalURI(path string) string {
	if path == "" {
		return "/"
	}
	return uriEncode(path, true)
}

// canonicalQuery encodes every query parameter except X-Amz-Signature as
// key=value, sorted by encoded key and then by encoded value, joined by '&'.
func canonicalQuery(query url.Values) string {
	type pair struct{ key, value string }
	var pairs []pair
	for key, values := range query {
		if key == paramSignature {
			continue
		}
		encodedKey := uriEncode(key, false)
		for _, value := range values {
			pairs = append(pairs, pair{encodedKey, uriEncode(value, false)})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		if c := strings.Compare(a.key, b.key); c != 0 {
			return c
		}
		return strings.Compare(a.value, b.value)
	})

	var b strings.Builder
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.key)
		b.WriteByte('=')
		b.WriteString(p.value)
	}
	return b.String()
}

// uriEncode applies the SigV4 URI encoding: the RFC 3986 unreserved
// characters A-Z, a-z, 0-9, '-', '_', '.' and '~' stay, and every other byte
// becomes %XX with upper-case hex. keepSlash keeps '/' for paths.
func uriEncode(s string, keepSlash bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isUnreserved(c) || (keepSlash && c == '/') {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0x0F])
	}
	return b.String()
}

func isUnreserved(c byte) bool {
	switch {
	case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		return true
	case c == '-', c == '_', c == '.', c == '~':
		return true
	}
	return false
}

// signature returns the hex HMAC-SHA256 signature of the string to sign
// built from amzDate, the credential scope and the canonical request.
func signature(secret, amzDate, day, region, service, canonical string) string {
	scope := strings.Join([]string{day, region, service, scopeTerminator}, "/")
	canonicalHash := sha256.Sum256([]byte(canonical))
	stringToSign := strings.Join([]string{Algorithm, amzDate, scope, hex.EncodeToString(canonicalHash[:])}, "\n")

	key := signingKey(secret, day, region, service)
	return hex.EncodeToString(hmacSHA256(key, stringToSign))
}

// signingKey derives the SigV4 signing key by the HMAC chain
// "AWS4"+secret -> day -> region -> service -> "aws4_request".
func signingKey(secret, day, region, service string) []byte {
	key := hmacSHA256([]byte("AWS4"+secret), day)
	key = hmacSHA256(key, region)
	key = hmacSHA256(key, service)
	return hmacSHA256(key, scopeTerminator)
}

func hmacSHA256(key []byte, data string) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(data))
	return mac.Sum(nil)
}
