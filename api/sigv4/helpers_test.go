package sigv4

import (
	"bufio"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	testAccessKey = "test-access-key"
	testSecretKey = "test-secret-key"
	testHost      = "127.0.0.1:17070"
	testPath      = "/throttle"

	// fixturePath is the file of handshakes recorded from the lua-resty-throttle
	// client. It lies outside the repository, so tests that need it skip when
	// it is absent.
	fixturePath = "../../../shared/fixtures/lua-resty-throttle/handshakes.txt"
)

// testSignedAt is the X-Amz-Date of the first recorded client handshake.
var testSignedAt = time.Date(2026, 12, 4, 19, 17, 36, 0, time.UTC)

// recordedHandshake is one line of the fixture file.
type recordedHandshake struct {
	line   int
	host   string
	target string // request target: path and query
	valid  bool
}

// readFixture returns the handshakes of the fixture file and skips the test
// when the file is absent.
func readFixture(tb testing.TB) []recordedHandshake {
	tb.Helper()
	handshakes, err := loadFixture()
	if errors.Is(err, os.ErrNotExist) {
		tb.Skipf("fixture %s not found, skipping the replay of recorded handshakes", fixturePath)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return handshakes
}

// loadFixture parses the fixture file, whose lines are
// "HOST REQUEST_TARGET VALID" separated by single spaces. Lines starting with
// '#' and empty lines are skipped.
func loadFixture() ([]recordedHandshake, error) {
	file, err := os.Open(fixturePath)
	if err != nil {
		return nil, fmt.Errorf("open fixture: %w", err)
	}
	defer file.Close()

	var handshakes []recordedHandshake
	scanner := bufio.NewScanner(file)
	for lineNumber := 1; scanner.Scan(); lineNumber++ {
		line := scanner.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Split(line, " ")
		if len(fields) != 3 {
			return nil, fmt.Errorf("fixture line %d has %d fields, expected 3: %q", lineNumber, len(fields), line)
		}
		valid, err := strconv.ParseBool(fields[2])
		if err != nil {
			return nil, fmt.Errorf("fixture line %d: invalid verdict %q: %w", lineNumber, fields[2], err)
		}
		handshakes = append(handshakes, recordedHandshake{line: lineNumber, host: fields[0], target: fields[1], valid: valid})
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("read fixture: %w", err)
	}
	return handshakes, nil
}

func fixedClock(now time.Time) func() time.Time {
	return func() time.Time { return now }
}

// newTestVerifier returns a Verifier for the test key pair with the default
// region and service and a clock fixed at now.
func newTestVerifier(tb testing.TB, now time.Time) *Verifier {
	tb.Helper()
	v, err := NewVerifier(map[string]string{testAccessKey: testSecretKey}, Options{Now: fixedClock(now)})
	if err != nil {
		tb.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// presignTest presigns GET testHost testPath with the test key pair.
func presignTest(at time.Time, expires time.Duration) url.Values {
	return Presign(testAccessKey, testSecretKey, "GET", testHost, testPath, at, expires, DefaultRegion, DefaultService)
}

// requireUnauthorized fails unless err wraps ErrUnauthorized, contains want
// and does not contain the test secret key.
func requireUnauthorized(tb testing.TB, err error, want string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("Verify returned nil, expected an error containing %q", want)
	}
	if !errors.Is(err, ErrUnauthorized) {
		tb.Errorf("error %q does not wrap ErrUnauthorized", err)
	}
	if !strings.Contains(err.Error(), want) {
		tb.Errorf("error %q does not contain %q", err, want)
	}
	if strings.Contains(err.Error(), testSecretKey) {
		tb.Errorf("error %q contains the secret key", err)
	}
}
