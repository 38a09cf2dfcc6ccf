package sigv4

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestVerifyRecordedHandshakes(t *testing.T) {
	handshakes := readFixture(t)

	verdicts := map[bool]int{}
	for _, handshake := range handshakes {
		verdicts[handshake.valid]++
		t.Run(fmt.Sprintf("line %d", handshake.line), func(t *testing.T) {
			target, err := url.ParseRequestURI(handshake.target)
			if err != nil {
				t.Fatalf("parse request target %q: %v", handshake.target, err)
			}
			query := target.Query()
			signedAt, err := time.Parse(amzDateLayout, query.Get(paramDate))
			if err != nil {
				t.Fatalf("parse X-Amz-Date: %v", err)
			}
			v := newTestVerifier(t, signedAt.Add(3*time.Second))

			err = v.Verify("GET", handshake.host, target.Path, query)
			if handshake.valid && err != nil {
				t.Fatalf("Verify rejected a valid handshake: %v", err)
			}
			if !handshake.valid {
				requireUnauthorized(t, err, "signature mismatch")
			}
		})
	}

	if verdicts[true] == 0 {
		t.Error("fixture has no valid handshake")
	}
	if verdicts[false] == 0 {
		t.Error("fixture has no invalid handshake")
	}
}

// TestVerifyClientSignature checks a handshake recorded from the
// lua-resty-throttle client, so that tests without the fixture file still
// run against a signature made by another implementation.
func TestVerifyClientSignature(t *testing.T) {
	const target = "/throttle?X-Amz-Algorithm=AWS4-HMAC-SHA256" +
		"&X-Amz-Credential=test-access-key%2F20261204%2Fus-east-1%2Fs3%2Faws4_request" +
		"&X-Amz-Date=20261204T191736Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host" +
		"&X-Amz-Signature=3a755cfc8ea60a606a39cc02fcbbfce8db498f875e38a9dc55ab9ec959c5f222"
	requestURL, err := url.ParseRequestURI(target)
	if err != nil {
		t.Fatalf("parse request target: %v", err)
	}
	v := newTestVerifier(t, testSignedAt.Add(3*time.Second))

	if err := v.Verify("GET", testHost, requestURL.Path, requestURL.Query()); err != nil {
		t.Errorf("Verify rejected the client signature: %v", err)
	}

	err = v.Verify("GET", "127.0.0.1", requestURL.Path, requestURL.Query())
	requireUnauthorized(t, err, "signature mismatch")
}

func TestPresignMatchesClient(t *testing.T) {
	query := presignTest(testSignedAt, 60*time.Second)

	const want = "3a755cfc8ea60a606a39cc02fcbbfce8db498f875e38a9dc55ab9ec959c5f222"
	if got := query.Get(paramSignature); got != want {
		t.Errorf("signature = %s, expected the client's %s", got, want)
	}
}

func TestPresignRoundTrip(t *testing.T) {
	// A time with a fraction of a second in another zone, which Presign must
	// convert to whole UTC seconds.
	at := time.Date(2026, 12, 4, 20, 17, 36, 500_000_000, time.FixedZone("CET", 3600))
	query := presignTest(at, 90*time.Second)

	checks := map[string]string{
		paramAlgorithm:     "AWS4-HMAC-SHA256",
		paramCredential:    "test-access-key/20261204/us-east-1/s3/aws4_request",
		paramDate:          "20261204T191736Z",
		paramExpires:       "90",
		paramSignedHeaders: "host",
	}
	for name, want := range checks {
		if got := query.Get(name); got != want {
			t.Errorf("%s = %q, expected %q", name, got, want)
		}
	}
	if got := len(query.Get(paramSignature)); got != 64 {
		t.Errorf("signature has %d characters, expected 64", got)
	}

	// Encode and parse again, as the query travels in a request target.
	received, err := url.ParseQuery(query.Encode())
	if err != nil {
		t.Fatalf("parse encoded query: %v", err)
	}
	v := newTestVerifier(t, testSignedAt.Add(time.Second))
	if err := v.Verify("GET", testHost, testPath, received); err != nil {
		t.Errorf("Verify rejected a presigned query: %v", err)
	}
}

func TestVerifyDefaultClock(t *testing.T) {
	v, err := NewVerifier(map[string]string{testAccessKey: testSecretKey}, Options{})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	query := presignTest(time.Now(), time.Minute)

	if err := v.Verify("GET", testHost, testPath, query); err != nil {
		t.Errorf("Verify with the default clock: %v", err)
	}
}

func TestVerifyExpired(t *testing.T) {
	query := presignTest(testSignedAt, 60*time.Second)

	atLimit := newTestVerifier(t, testSignedAt.Add(60*time.Second))
	if err := atLimit.Verify("GET", testHost, testPath, query); err != nil {
		t.Errorf("Verify at X-Amz-Date + X-Amz-Expires: %v", err)
	}

	pastLimit := newTestVerifier(t, testSignedAt.Add(61*time.Second))
	err := pastLimit.Verify("GET", testHost, testPath, query)
	requireUnauthorized(t, err, "expired at 2026-12-04T19:18:36Z")
}

func TestVerifyMaxExpires(t *testing.T) {
	query := presignTest(testSignedAt, MaxExpires*time.Second)
	v := newTestVerifier(t, testSignedAt.Add(MaxExpires*time.Second))

	if err := v.Verify("GET", testHost, testPath, query); err != nil {
		t.Errorf("Verify with X-Amz-Expires=%d: %v", MaxExpires, err)
	}
}

func TestVerifyFutureBeyondSkew(t *testing.T) {
	query := presignTest(testSignedAt, 60*time.Second)

	atSkew := newTestVerifier(t, testSignedAt.Add(-DefaultMaxSkew))
	if err := atSkew.Verify("GET", testHost, testPath, query); err != nil {
		t.Errorf("Verify with X-Amz-Date exactly MaxSkew ahead: %v", err)
	}

	beyondSkew := newTestVerifier(t, testSignedAt.Add(-DefaultMaxSkew-time.Second))
	err := beyondSkew.Verify("GET", testHost, testPath, query)
	requireUnauthorized(t, err, "5m1s ahead of the server time")

	shortSkew, err := NewVerifier(map[string]string{testAccessKey: testSecretKey}, Options{
		Now:     fixedClock(testSignedAt.Add(-11 * time.Second)),
		MaxSkew: 10 * time.Second,
	})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	err = shortSkew.Verify("GET", testHost, testPath, query)
	requireUnauthorized(t, err, "more than the allowed clock skew of 10s")
}

func TestVerifyUnknownAccessKey(t *testing.T) {
	query := Presign("other-access-key", testSecretKey, "GET", testHost, testPath, testSignedAt, time.Minute, DefaultRegion, DefaultService)
	v := newTestVerifier(t, testSignedAt)

	err := v.Verify("GET", testHost, testPath, query)
	requireUnauthorized(t, err, `unknown access key "other-access-key"`)
}

func TestVerifyWrongScope(t *testing.T) {
	tests := []struct {
		name    string
		region  string
		service string
		want    string
	}{
		{"region", "eu-west-1", DefaultService, `region "eu-west-1" of access key "test-access-key" does not match the expected "us-east-1"`},
		{"service", DefaultRegion, "execute-api", `service "execute-api" of access key "test-access-key" does not match the expected "s3"`},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			query := Presign(testAccessKey, testSecretKey, "GET", testHost, testPath, testSignedAt, time.Minute, test.region, test.service)
			v := newTestVerifier(t, testSignedAt)

			err := v.Verify("GET", testHost, testPath, query)
			requireUnauthorized(t, err, test.want)
		})
	}
}

func TestVerifyConfiguredScope(t *testing.T) {
	v, err := NewVerifier(map[string]string{testAccessKey: testSecretKey}, Options{
		Now:     fixedClock(testSignedAt),
		Region:  "eu-west-1",
		Service: "throttle",
	})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}

	query := Presign(testAccessKey, testSecretKey, "GET", testHost, testPath, testSignedAt, time.Minute, "eu-west-1", "throttle")
	if err := v.Verify("GET", testHost, testPath, query); err != nil {
		t.Errorf("Verify with the configured scope: %v", err)
	}

	query = presignTest(testSignedAt, time.Minute)
	err = v.Verify("GET", testHost, testPath, query)
	requireUnauthorized(t, err, `region "us-east-1"`)
}

func TestVerifyMissingParameter(t *testing.T) {
	names := []string{paramAlgorithm, paramCredential, paramDate, paramExpires, paramSignedHeaders, paramSignature}
	v := newTestVerifier(t, testSignedAt)

	for _, name := range names {
		t.Run(name+" absent", func(t *testing.T) {
			query := presignTest(testSignedAt, time.Minute)
			query.Del(name)
			err := v.Verify("GET", testHost, testPath, query)
			requireUnauthorized(t, err, "missing query parameter "+name)
		})
		t.Run(name+" empty", func(t *testing.T) {
			query := presignTest(testSignedAt, time.Minute)
			query.Set(name, "")
			err := v.Verify("GET", testHost, testPath, query)
			requireUnauthorized(t, err, "query parameter "+name+" is empty")
		})
		t.Run(name+" twice", func(t *testing.T) {
			query := presignTest(testSignedAt, time.Minute)
			query.Add(name, query.Get(name))
			err := v.Verify("GET", testHost, testPath, query)
			requireUnauthorized(t, err, "query parameter "+name+" appears 2 times")
		})
	}
}

func TestVerifyMissingHost(t *testing.T) {
	query := presignTest(testSignedAt, time.Minute)
	v := newTestVerifier(t, testSignedAt)

	err := v.Verify("GET", "", testPath, query)
	requireUnauthorized(t, err, "missing Host header")
}

func TestVerifySignedHeadersNotHost(t *testing.T) {
	for _, signedHeaders := range []string{"host;x-amz-date", "content-type;host", "Host", "host;", "x-amz-date"} {
		t.Run(signedHeaders, func(t *testing.T) {
			query := presignTest(testSignedAt, time.Minute)
			query.Set(paramSignedHeaders, signedHeaders)
			v := newTestVerifier(t, testSignedAt)

			err := v.Verify("GET", testHost, testPath, query)
			requireUnauthorized(t, err, fmt.Sprintf("X-Amz-SignedHeaders is %q", signedHeaders))
		})
	}
}

func TestVerifyInvalidParameters(t *testing.T) {
	const credentialTail = "/20261204/us-east-1/s3/aws4_request"
	tests := []struct {
		name  string
		param string
		value string
		want  string
	}{
		{"algorithm", paramAlgorithm, "AWS4-HMAC-SHA1", `unsupported X-Amz-Algorithm "AWS4-HMAC-SHA1"`},
		{"algorithm lower case", paramAlgorithm, "aws4-hmac-sha256", "unsupported X-Amz-Algorithm"},
		{"credential four fields", paramCredential, "test-access-key/20261204/us-east-1/s3", "invalid X-Amz-Credential"},
		{"credential six fields", paramCredential, "test-access-key" + credentialTail + "/x", "invalid X-Amz-Credential"},
		{"credential terminator", paramCredential, "test-access-key/20261204/us-east-1/s3/aws4_requests", "invalid X-Amz-Credential"},
		{"credential empty access key", paramCredential, credentialTail, `unknown access key ""`},
		{"credential date", paramCredential, "test-access-key/20261203/us-east-1/s3/aws4_request", `credential scope date "20261203" does not match X-Amz-Date 20261204T191736Z`},
		{"date with dashes", paramDate, "2026-12-04T19:17:36Z", "invalid X-Amz-Date"},
		{"date one-digit hour", paramDate, "20261204T91736Z", "invalid X-Amz-Date"},
		{"date without zone", paramDate, "20261204T191736", "invalid X-Amz-Date"},
		{"date out of range", paramDate, "20261304T191736Z", "invalid X-Amz-Date"},
		{"expires zero", paramExpires, "0", `X-Amz-Expires "0" is out of range`},
		{"expires above maximum", paramExpires, "604801", `X-Amz-Expires "604801" is out of range`},
		{"expires overflow", paramExpires, "99999999999999999999", "is out of range"},
		{"expires negative", paramExpires, "-5", `invalid X-Amz-Expires "-5"`},
		{"expires plus sign", paramExpires, "+60", `invalid X-Amz-Expires "+60"`},
		{"expires fraction", paramExpires, "1.5", `invalid X-Amz-Expires "1.5"`},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			query := presignTest(testSignedAt, time.Minute)
			query.Set(test.param, test.value)
			v := newTestVerifier(t, testSignedAt)

			err := v.Verify("GET", testHost, testPath, query)
			requireUnauthorized(t, err, test.want)
		})
	}
}

func TestVerifyLongValueCut(t *testing.T) {
	query := presignTest(testSignedAt, time.Minute)
	query.Set(paramAlgorithm, strings.Repeat("A", 10_000))
	v := newTestVerifier(t, testSignedAt)

	err := v.Verify("GET", testHost, testPath, query)
	requireUnauthorized(t, err, `"...`)
	if len(err.Error()) > 300 {
		t.Errorf("error has %d bytes, expected the value cut to %d bytes", len(err.Error()), maxQuotedLength)
	}
}

func TestVerifyRequestMismatch(t *testing.T) {
	tests := []struct {
		name   string
		method string
		host   string
		path   string
	}{
		{"method", "POST", testHost, testPath},
		{"host without port", "GET", "127.0.0.1", testPath},
		{"host other port", "GET", "127.0.0.1:17071", testPath},
		{"path", "GET", testHost, "/throttle/"},
		{"empty path", "GET", testHost, ""},
	}
	query := presignTest(testSignedAt, time.Minute)
	v := newTestVerifier(t, testSignedAt)

	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			err := v.Verify(test.method, test.host, test.path, query)
			requireUnauthorized(t, err, `signature mismatch for access key "test-access-key"`)
			if strings.Contains(err.Error(), query.Get(paramSignature)) {
				t.Errorf("error %q contains the expected signature", err)
			}
		})
	}
}

func TestVerifySignatureLengths(t *testing.T) {
	valid := presignTest(testSignedAt, time.Minute).Get(paramSignature)
	signatures := map[string]string{
		"one character":   valid[:1],
		"one short":       valid[:len(valid)-1],
		"one long":        valid + "0",
		"doubled":         valid + valid,
		"upper-case hex":  strings.ToUpper(valid),
		"non-hex":         strings.Repeat("z", len(valid)),
		"raw binary size": valid[:32],
	}
	v := newTestVerifier(t, testSignedAt)

	for name, signature := range signatures {
		t.Run(name, func(t *testing.T) {
			query := presignTest(testSignedAt, time.Minute)
			query.Set(paramSignature, signature)

			err := v.Verify("GET", testHost, testPath, query)
			requireUnauthorized(t, err, "signature mismatch")
			if strings.Contains(err.Error(), valid) {
				t.Errorf("error %q contains the expected signature", err)
			}
		})
	}
}

func TestVerifyTwoKeyPairs(t *testing.T) {
	keys := map[string]string{
		"edge-a": "secret-a",
		"edge-b": "secret-b",
	}
	v, err := NewVerifier(keys, Options{Now: fixedClock(testSignedAt)})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}

	for accessKey, secretKey := range keys {
		query := Presign(accessKey, secretKey, "GET", testHost, testPath, testSignedAt, time.Minute, DefaultRegion, DefaultService)
		if err := v.Verify("GET", testHost, testPath, query); err != nil {
			t.Errorf("Verify rejected access key %s: %v", accessKey, err)
		}
	}

	crossed := Presign("edge-a", "secret-b", "GET", testHost, testPath, testSignedAt, time.Minute, DefaultRegion, DefaultService)
	err = v.Verify("GET", testHost, testPath, crossed)
	requireUnauthorized(t, err, `signature mismatch for access key "edge-a"`)
	if strings.Contains(err.Error(), "secret-a") || strings.Contains(err.Error(), "secret-b") {
		t.Errorf("error %q contains a secret key", err)
	}
}

func TestNewVerifierCopiesKeys(t *testing.T) {
	keys := map[string]string{testAccessKey: testSecretKey}
	v, err := NewVerifier(keys, Options{Now: fixedClock(testSignedAt)})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	keys[testAccessKey] = "changed-secret"

	query := presignTest(testSignedAt, time.Minute)
	if err := v.Verify("GET", testHost, testPath, query); err != nil {
		t.Errorf("Verify after changing the caller's map: %v", err)
	}
}

// extraParamsQuery returns a presigned query with parameters other than
// X-Amz-*, whose signature was computed with Python's hmac and hashlib and
// urllib.parse.quote(safe="-_.~") for GET testHost testPath.
func extraParamsQuery() url.Values {
	return url.Values{
		paramAlgorithm:     {"AWS4-HMAC-SHA256"},
		paramCredential:    {"test-access-key/20261204/us-east-1/s3/aws4_request"},
		paramDate:          {"20261204T191736Z"},
		paramExpires:       {"60"},
		paramSignedHeaders: {"host"},
		paramSignature:     {"453873d635cdc17b1aa496e1710879f58f12f07b10b93ee5beb64f7758b5b386"},
		"node":             {"edge 1/a~b+c"},
		"Action":           {"connect"},
		"tag":              {"b", "a"},
	}
}

func TestVerifyExtraQueryParameter(t *testing.T) {
	v := newTestVerifier(t, testSignedAt)

	wantCanonical := "Action=connect&X-Amz-Algorithm=AWS4-HMAC-SHA256" +
		"&X-Amz-Credential=test-access-key%2F20261204%2Fus-east-1%2Fs3%2Faws4_request" +
		"&X-Amz-Date=20261204T191736Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host" +
		"&node=edge%201%2Fa~b%2Bc&tag=a&tag=b"
	if got := canonicalQuery(extraParamsQuery()); got != wantCanonical {
		t.Errorf("canonical query\n got %s\nwant %s", got, wantCanonical)
	}

	received, err := url.ParseQuery(extraParamsQuery().Encode())
	if err != nil {
		t.Fatalf("parse encoded query: %v", err)
	}
	if err := v.Verify("GET", testHost, testPath, received); err != nil {
		t.Errorf("Verify rejected a query with extra parameters: %v", err)
	}

	changes := map[string]func(url.Values){
		"removed":       func(q url.Values) { q.Del("Action") },
		"changed":       func(q url.Values) { q.Set("node", "edge 2") },
		"added":         func(q url.Values) { q.Set("extra", "1") },
		"value dropped": func(q url.Values) { q["tag"] = []string{"a"} },
	}
	for name, change := range changes {
		t.Run(name, func(t *testing.T) {
			query := extraParamsQuery()
			change(query)
			err := v.Verify("GET", testHost, testPath, query)
			requireUnauthorized(t, err, "signature mismatch")
		})
	}
}

func TestURIEncode(t *testing.T) {
	tests := []struct {
		in        string
		keepSlash bool
		want      string
	}{
		{"", false, ""},
		{"AZaz09-_.~", false, "AZaz09-_.~"},
		{" ", false, "%20"},
		{"+", false, "%2B"},
		{"*", false, "%2A"},
		{"=&%", false, "%3D%26%25"},
		{"a/b", false, "a%2Fb"},
		{"/a b/c", true, "/a%20b/c"},
		{"é", false, "%C3%A9"},
		{"\x00\xff", false, "%00%FF"},
	}
	for _, test := range tests {
		if got := uriEncode(test.in, test.keepSlash); got != test.want {
			t.Errorf("uriEncode(%q, %t) = %q, expected %q", test.in, test.keepSlash, got, test.want)
		}
	}
}

func TestNewVerifierInvalidKeys(t *testing.T) {
	const secret = "s3cr3t-value"
	tests := []struct {
		name string
		keys map[string]string
		want string
	}{
		{"nil map", nil, "no key pairs given"},
		{"empty map", map[string]string{}, "no key pairs given"},
		{"empty access key", map[string]string{"": secret}, "empty access key"},
		{"access key with space", map[string]string{"edge a": secret}, `access key "edge a" contains a character that is not visible ASCII at byte 4`},
		{"access key with newline", map[string]string{"edge\n": secret}, `access key "edge\n" contains`},
		{"access key with slash", map[string]string{"edge/a": secret}, `access key "edge/a" contains '/'`},
		{"empty secret key", map[string]string{"edge-a": ""}, `secret key of access key "edge-a" is empty`},
		{"secret key with tab", map[string]string{"edge-a": "s3cr3t\tvalue"}, `secret key of access key "edge-a" contains a character that is not visible ASCII at byte 6`},
		{"secret key non-ASCII", map[string]string{"edge-a": "s3cr3té"}, `secret key of access key "edge-a" contains`},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			v, err := NewVerifier(test.keys, Options{})
			if err == nil {
				t.Fatalf("NewVerifier returned %v, expected an error", v)
			}
			if !strings.Contains(err.Error(), test.want) {
				t.Errorf("error %q does not contain %q", err, test.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error %q contains the secret key", err)
			}
		})
	}
}

func TestNewVerifierInvalidOptions(t *testing.T) {
	keys := map[string]string{testAccessKey: testSecretKey}
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"negative skew", Options{MaxSkew: -time.Second}, "invalid MaxSkew -1s"},
		{"region with slash", Options{Region: "us/east"}, `invalid Region "us/east"`},
		{"service with space", Options{Service: "s 3"}, `invalid Service "s 3"`},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			_, err := NewVerifier(keys, test.opts)
			if err == nil {
				t.Fatal("NewVerifier returned nil error")
			}
			if !strings.Contains(err.Error(), test.want) {
				t.Errorf("error %q does not contain %q", err, test.want)
			}
			if errors.Is(err, ErrUnauthorized) {
				t.Errorf("configuration error %q wraps ErrUnauthorized", err)
			}
		})
	}
}
