package sigv4

import (
	"errors"
	"net/url"
	"os"
	"testing"
	"time"
)

// FuzzVerify checks that Verify never panics and that every error it returns
// wraps ErrUnauthorized.
func FuzzVerify(f *testing.F) {
	presigned := presignTest(testSignedAt, time.Minute)
	f.Add(testHost, testPath+"?"+presigned.Encode(), int64(0))
	f.Add(testHost, testPath+"?"+extraParamsQuery().Encode(), int64(30))
	f.Add("", "/?X-Amz-Credential=%2F%2F%2F%2F&X-Amz-Expires=1", int64(-400))

	// The recorded handshakes are optional seeds, because the fixture lies
	// outside the repository.
	handshakes, err := loadFixture()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		f.Fatal(err)
	}
	for _, handshake := range handshakes {
		f.Add(handshake.host, handshake.target, int64(30))
	}

	v := newTestVerifier(f, testSignedAt)
	f.Fuzz(func(t *testing.T, host, target string, offsetSeconds int64) {
		requestURL, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		// ParseQuery returns the parameters it could parse along with the
		// first error, and a server may still pass those on.
		query, _ := url.ParseQuery(requestURL.RawQuery)

		clock := testSignedAt.Add(time.Duration(offsetSeconds%(10*24*3600)) * time.Second)
		verifier := *v
		verifier.now = fixedClock(clock)

		err = verifier.Verify("GET", host, requestURL.Path, query)
		if err != nil && !errors.Is(err, ErrUnauthorized) {
			t.Errorf("Verify returned %q, which does not wrap ErrUnauthorized", err)
		}
	})
}
