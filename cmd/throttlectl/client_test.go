package main

import (
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// fakeCentral is an HTTP server on 127.0.0.1 that responds to every request
// with one status and body, and records the requests.
type fakeCentral struct {
	server *httptest.Server
	// requests counts the requests served.
	requests atomic.Int64

	mu            sync.Mutex
	authorization string
	lastMethod    string
	lastTarget    string
}

func startFakeCentral(t *testing.T, status int, body string) *fakeCentral {
	t.Helper()
	fake := &fakeCentral{}
	fake.server = httptest.NewServer(fake.handler(status, body))
	t.Cleanup(fake.server.Close)
	return fake
}

func (f *fakeCentral) handler(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		f.mu.Lock()
		f.authorization = r.Header.Get("Authorization")
		f.lastMethod = r.Method
		f.lastTarget = r.URL.RequestURI()
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		w.WriteHeader(status)
		w.Write([]byte(body))
	}
}

func (f *fakeCentral) addr() string {
	return strings.TrimPrefix(f.server.URL, "http://")
}

func (f *fakeCentral) lastAuthorization() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.authorization
}

// startBlockingCentral starts a server that never responds until the
// request is cancelled or the test ends.
func startBlockingCentral(t *testing.T) *fakeCentral {
	t.Helper()
	release := make(chan struct{})
	fake := &fakeCentral{}
	fake.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fake.requests.Add(1)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() {
		close(release)
		fake.server.Close()
	})
	return fake
}

const membersBody = `{"node_id":"c9","gossip":true,"members":[{"node_id":"c9","role":"central","gossip_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2","raft_addr":"127.0.0.1:3","state":"alive","since":"2026-01-02T03:04:05Z"}]}`

const noLeaderBody = `{"error":{"code":"no_leader","message":"no leader is known","leader":"10.0.0.9:8081"}}`

func TestFailoverSkipsUnavailableCentral(t *testing.T) {
	unavailable := startFakeCentral(t, http.StatusServiceUnavailable, noLeaderBody)
	healthy := startFakeCentral(t, http.StatusOK, membersBody)

	got := runCLI(t, nil, "--addr", unavailable.addr()+","+healthy.addr(), "members")
	if got.code != exitOK {
		t.Fatalf("exit code %d, stderr %q", got.code, got.stderr)
	}
	if unavailable.requests.Load() != 1 || healthy.requests.Load() != 1 {
		t.Errorf("requests: unavailable %d, healthy %d; want 1 each", unavailable.requests.Load(), healthy.requests.Load())
	}
	if !strings.Contains(got.stdout, "c9") || !strings.Contains(got.stdout, "alive") {
		t.Errorf("stdout %q, want the member c9 alive", got.stdout)
	}
}

func TestFailoverSkipsBadGatewayAndGatewayTimeout(t *testing.T) {
	badGateway := startFakeCentral(t, http.StatusBadGateway, "<html>bad gateway</html>")
	gatewayTimeout := startFakeCentral(t, http.StatusGatewayTimeout, "")
	healthy := startFakeCentral(t, http.StatusOK, membersBody)

	got := runCLI(t, nil, "--addr", badGateway.addr()+","+gatewayTimeout.addr()+","+healthy.addr(), "members")
	if got.code != exitOK {
		t.Fatalf("exit code %d, stderr %q", got.code, got.stderr)
	}
	if healthy.requests.Load() != 1 {
		t.Errorf("healthy central got %d requests, want 1", healthy.requests.Load())
	}
}

func TestClientErrorIsFinal(t *testing.T) {
	notFound := startFakeCentral(t, http.StatusNotFound, `{"error":{"code":"not_found","message":"no limits for user \"bob\" of service \"front\""}}`)
	healthy := startFakeCentral(t, http.StatusOK, `{}`)

	got := runCLI(t, nil, "--addr", notFound.addr()+","+healthy.addr(), "limits", "get", "front", "bob")
	if got.code != exitFailure {
		t.Errorf("exit code %d, want %d", got.code, exitFailure)
	}
	if healthy.requests.Load() != 0 {
		t.Errorf("the second central got %d requests; a 404 must not fail over", healthy.requests.Load())
	}
	for _, want := range []string{"404 not_found", `no limits for user "bob" of service "front"`, notFound.addr()} {
		if !strings.Contains(got.stderr, want) {
			t.Errorf("stderr %q, want it to contain %q", got.stderr, want)
		}
	}
}

func TestAllCentralsDownListsEachFailure(t *testing.T) {
	unavailable := startFakeCentral(t, http.StatusServiceUnavailable, noLeaderBody)
	closed := unusedAddress(t)

	got := runCLI(t, nil, "--addr", closed+","+unavailable.addr(), "cluster", "status")
	if got.code != exitFailure {
		t.Errorf("exit code %d, want %d", got.code, exitFailure)
	}
	for _, want := range []string{"no central responded to GET /v1/cluster", closed, "connection refused", "503 no_leader: no leader is known (leader at 10.0.0.9:8081)"} {
		if !strings.Contains(got.stderr, want) {
			t.Errorf("stderr %q, want it to contain %q", got.stderr, want)
		}
	}
}

func TestTimeoutFailsOverToNextCentral(t *testing.T) {
	blocking := startBlockingCentral(t)
	healthy := startFakeCentral(t, http.StatusOK, membersBody)

	got := runCLI(t, nil, "--timeout", "200ms", "--addr", blocking.addr()+","+healthy.addr(), "members")
	if got.code != exitOK {
		t.Fatalf("exit code %d, stderr %q", got.code, got.stderr)
	}
	if healthy.requests.Load() != 1 {
		t.Errorf("healthy central got %d requests, want 1", healthy.requests.Load())
	}
}

func TestTimedOutWriteWarnsOnNotFound(t *testing.T) {
	blocking := startBlockingCentral(t)
	notFound := startFakeCentral(t, http.StatusNotFound, `{"error":{"code":"not_found","message":"no limits for user \"alice\" of service \"front\""}}`)

	got := runCLI(t, nil, "--timeout", "200ms", "--addr", blocking.addr()+","+notFound.addr(), "limits", "delete", "front", "alice")
	if got.code != exitFailure {
		t.Errorf("exit code %d, want %d", got.code, exitFailure)
	}
	for _, want := range []string{"404 not_found", "an earlier attempt at " + blocking.server.URL + " timed out and may have been applied"} {
		if !strings.Contains(got.stderr, want) {
			t.Errorf("stderr %q, want it to contain %q", got.stderr, want)
		}
	}
}

func TestTokenSentAsBearerAndNeverPrinted(t *testing.T) {
	fake := startFakeCentral(t, http.StatusBadRequest, `{"error":{"code":"invalid","message":"bad request"}}`)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("  file-s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"flag", nil, []string{"--token", "flag-s3cret"}, "flag-s3cret"},
		{"environment", map[string]string{"THROTTLECTL_TOKEN": "env-s3cret"}, nil, "env-s3cret"},
		{"file", nil, []string{"--token-file", tokenFile}, "file-s3cret"},
		{"file from environment", map[string]string{"THROTTLECTL_TOKEN_FILE": tokenFile}, nil, "file-s3cret"},
	} {
		args := append([]string{"--addr", fake.addr()}, tc.args...)
		got := runCLI(t, tc.env, append(args, "members")...)
		if got.code != exitFailure {
			t.Errorf("%s: exit code %d, want %d for the 400", tc.name, got.code, exitFailure)
		}
		if auth := fake.lastAuthorization(); auth != "Bearer "+tc.want {
			t.Errorf("%s: Authorization %q, want %q", tc.name, auth, "Bearer "+tc.want)
		}
		if strings.Contains(got.stdout+got.stderr, tc.want) {
			t.Errorf("%s: the output contains the token: stdout %q, stderr %q", tc.name, got.stdout, got.stderr)
		}
	}
}

func TestNoTokenSendsNoAuthorization(t *testing.T) {
	fake := startFakeCentral(t, http.StatusOK, membersBody)
	if got := runCLI(t, nil, "--addr", fake.addr(), "members"); got.code != exitOK {
		t.Fatalf("exit code %d, stderr %q", got.code, got.stderr)
	}
	if auth := fake.lastAuthorization(); auth != "" {
		t.Errorf("Authorization %q, want none without a token", auth)
	}
}

func TestEnvironmentSetsFlagsAndCommandLineWins(t *testing.T) {
	fake := startFakeCentral(t, http.StatusOK, membersBody)

	got := runCLI(t, map[string]string{"THROTTLECTL_ADDR": fake.addr(), "THROTTLECTL_OUTPUT": "json"}, "members")
	if got.code != exitOK || !strings.HasPrefix(got.stdout, "{") {
		t.Errorf("THROTTLECTL_OUTPUT=json: exit code %d, stdout %q, want JSON", got.code, got.stdout)
	}
	got = runCLI(t, map[string]string{"THROTTLECTL_ADDR": fake.addr(), "THROTTLECTL_OUTPUT": "json"}, "members", "-o", "table")
	if got.code != exitOK || !strings.HasPrefix(got.stdout, "NODE") {
		t.Errorf("-o table over THROTTLECTL_OUTPUT=json: exit code %d, stdout %q, want the table", got.code, got.stdout)
	}
	got = runCLI(t, map[string]string{"THROTTLECTL_ADDR": unusedAddress(t)}, "--addr", fake.addr(), "members")
	if got.code != exitOK {
		t.Errorf("--addr over THROTTLECTL_ADDR: exit code %d, stderr %q", got.code, got.stderr)
	}
}

func TestConsistentFlagFromEnvironmentReachesQuery(t *testing.T) {
	fake := startFakeCentral(t, http.StatusOK, `{"service":"front","username":"alice","limit":{"a":1},"ts":0}`)
	got := runCLI(t, map[string]string{"THROTTLECTL_ADDR": fake.addr(), "THROTTLECTL_CONSISTENT": "true"}, "limits", "get", "front", "alice")
	if got.code != exitOK {
		t.Fatalf("exit code %d, stderr %q", got.code, got.stderr)
	}
	fake.mu.Lock()
	target := fake.lastTarget
	fake.mu.Unlock()
	if target != "/v1/limits/front/alice?consistent=true" {
		t.Errorf("request target %q, want /v1/limits/front/alice?consistent=true", target)
	}
}

func TestNamesAreEscapedInPath(t *testing.T) {
	fake := startFakeCentral(t, http.StatusNoContent, "")
	got := runCLI(t, nil, "--addr", fake.addr(), "limits", "delete", "front", "al ice?%#")
	if got.code != exitOK {
		t.Fatalf("exit code %d, stderr %q", got.code, got.stderr)
	}
	fake.mu.Lock()
	method, target := fake.lastMethod, fake.lastTarget
	fake.mu.Unlock()
	if method != http.MethodDelete || target != "/v1/limits/front/al%20ice%3F%25%23" {
		t.Errorf("request %s %s, want DELETE /v1/limits/front/al%%20ice%%3F%%25%%23", method, target)
	}
}

func TestTLSWithCAAndSkipVerify(t *testing.T) {
	server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(membersBody))
	}))
	// The request without a CA fails its handshake on purpose.
	server.Config.ErrorLog = log.New(io.Discard, "", 0)
	server.StartTLS()
	t.Cleanup(server.Close)
	hostPort := strings.TrimPrefix(server.URL, "https://")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate().Raw})
	if err := os.WriteFile(caFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{
		{"--addr", hostPort, "--tls-ca", caFile, "members"},
		{"--addr", hostPort, "--tls-skip-verify", "members"},
		{"--addr", server.URL, "--tls-ca", caFile, "members"},
	} {
		if got := runCLI(t, nil, args...); got.code != exitOK {
			t.Errorf("throttlectl %q: exit code %d, stderr %q", args, got.code, got.stderr)
		}
	}

	got := runCLI(t, nil, "--addr", server.URL, "members")
	if got.code != exitFailure || !strings.Contains(got.stderr, "certificate") {
		t.Errorf("https without a CA: exit code %d, stderr %q; want exit 1 naming the certificate", got.code, got.stderr)
	}
}
