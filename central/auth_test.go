package central

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/api/sigv4"
)

// Test tokens of the cluster's token file, and an admin token of another
// cluster.
const (
	clusterAdminToken = "cluster-admin-0123456789abcdef"
	clusterNodeToken  = "cluster-node-0123456789abcdef"
	clusterReadToken  = "cluster-read-0123456789abcdef"
	otherAdminToken   = "other-admin-0123456789abcdef"
)

func parseTestTokens(t testing.TB, text string) *api.Tokens {
	t.Helper()
	tokens, err := api.ParseTokens(strings.NewReader(text), "tokens")
	if err != nil {
		t.Fatalf("parsing test tokens: %v", err)
	}
	return tokens
}

func clusterTokens(t testing.TB) *api.Tokens {
	t.Helper()
	return parseTestTokens(t, "admin "+clusterAdminToken+"\nnode "+clusterNodeToken+"\nread "+clusterReadToken+"\n")
}

// tokenRequest sends a request with "Authorization: Bearer token", or none
// when token is empty, and returns the status and body.
func tokenRequest(t testing.TB, client *http.Client, method, url, body, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the response of %s %s: %v", method, url, err)
	}
	return resp.StatusCode, data
}

// errorCode returns the code of an API error body, or "" for another body.
func errorCode(body []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	return e.Error.Code
}

// startTokenCluster starts three centrals with the cluster's tokens; the
// second and third join through the first with its admin token. adjust,
// if not nil, changes every central's Config further.
func startTokenCluster(t *testing.T, adjust func(*Config)) []*testNode {
	t.Helper()
	withTokens := func(cfg *Config) {
		cfg.Tokens = clusterTokens(t)
		if adjust != nil {
			adjust(cfg)
		}
	}
	first := startNodeWith(t, "c1", true, nil, withTokens)
	nodes := []*testNode{first}
	for i := 2; i <= 3; i++ {
		nodes = append(nodes, startNodeWith(t, fmt.Sprintf("c%d", i), false, []string{first.c.HTTPAddr()}, withTokens))
	}
	waitForCluster(t, nodes)
	return nodes
}

func followerOf(t *testing.T, nodes []*testNode, leader string) *testNode {
	t.Helper()
	for _, n := range nodes {
		if n.id() != leader {
			return n
		}
	}
	t.Fatalf("no follower besides %s", leader)
	return nil
}

func TestTokenClusterJoinsAndChecksScopes(t *testing.T) {
	nodes := startTokenCluster(t, nil)
	leader := waitForCluster(t, nodes)
	follower := followerOf(t, nodes, leader)
	client := &http.Client{Timeout: socketTimeout}
	limitURL := "http://" + follower.c.HTTPAddr() + "/v1/limits/front/alice"
	body := `{"limit":{"traffic_up":2000}}`

	tests := []struct {
		name   string
		token  string
		status int
		code   string
	}{
		{"no token", "", http.StatusUnauthorized, "unauthorized"},
		{"unknown token", otherAdminToken, http.StatusUnauthorized, "unauthorized"},
		{"node token", clusterNodeToken, http.StatusForbidden, "forbidden"},
		{"read token", clusterReadToken, http.StatusForbidden, "forbidden"},
	}
	for _, tt := range tests {
		status, data := tokenRequest(t, client, http.MethodPut, limitURL, body, tt.token)
		if status != tt.status || errorCode(data) != tt.code {
			t.Errorf("PUT on follower %s with %s: %d %s, want %d with code %s", follower.id(), tt.name, status, data, tt.status, tt.code)
		}
	}

	// The follower forwards the admin's PUT to the leader with the
	// admin's token.
	if status, data := tokenRequest(t, client, http.MethodPut, limitURL, body, clusterAdminToken); status != http.StatusOK {
		t.Fatalf("PUT on follower %s with the admin token: %d %s", follower.id(), status, data)
	}
	for _, n := range nodes {
		waitForLimit(t, n, "front", "alice", 2000)
	}

	for _, n := range nodes {
		base := "http://" + n.c.HTTPAddr()
		if status, data := tokenRequest(t, client, http.MethodGet, base+"/v1/limits/front/alice", "", clusterReadToken); status != http.StatusOK {
			t.Errorf("GET limits on %s with the read token: %d %s", n.id(), status, data)
		}
		if status, _ := tokenRequest(t, client, http.MethodGet, base+"/v1/cluster", "", ""); status != http.StatusUnauthorized {
			t.Errorf("GET /v1/cluster on %s without a token: %d, want 401", n.id(), status)
		}
		for _, open := range []string{"/healthz", "/readyz", "/metrics"} {
			if status, _ := tokenRequest(t, client, http.MethodGet, base+open, "", ""); status != http.StatusOK {
				t.Errorf("GET %s on %s without a token: %d, want 200", open, n.id(), status)
			}
		}
	}
}

func TestTokenClusterRefusesJoinWithoutAdminToken(t *testing.T) {
	first := startNodeWith(t, "c1", true, nil, func(cfg *Config) { cfg.Tokens = clusterTokens(t) })
	waitForCluster(t, []*testNode{first})

	tests := []struct {
		name   string
		tokens *api.Tokens
	}{
		{"another cluster's token file", parseTestTokens(t, "admin "+otherAdminToken+"\n")},
		{"no token file", nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			joining := startNodeWith(t, fmt.Sprintf("c%d", i+2), false, []string{first.c.HTTPAddr()}, func(cfg *Config) { cfg.Tokens = tt.tokens })

			select {
			case err := <-joining.c.Fatal():
				for _, part := range []string{"HTTP 401", "--token-file"} {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("fatal error %q does not contain %q", err, part)
					}
				}
				if strings.Contains(err.Error(), otherAdminToken) {
					t.Errorf("fatal error %q contains the token", err)
				}
			case <-time.After(waitTimeout):
				t.Fatalf("the join of %s was not refused within %v", joining.id(), waitTimeout)
			}
			servers, err := first.c.Node().Servers()
			if err != nil || len(servers) != 1 {
				t.Errorf("c1 has servers %v (%v), want itself only", servers, err)
			}
		})
	}
}

func TestTokenClusterRelaysSigV4Reports(t *testing.T) {
	nodes := startTokenCluster(t, func(cfg *Config) {
		cfg.AccessKeys = map[string]string{testAccessKey: testSecretKey}
	})
	leader := waitForCluster(t, nodes)
	follower := followerOf(t, nodes, leader)
	client := &http.Client{Timeout: socketTimeout}
	leaderURL := "http://" + nodeByID(t, nodes, leader).c.HTTPAddr()
	waitFor(t, "the leader's quota engine", func() string {
		status, data := tokenRequest(t, client, http.MethodGet, leaderURL+"/v1/monitor/reported", "", clusterReadToken)
		if status != http.StatusOK {
			return fmt.Sprintf("GET /v1/monitor/reported: %d %s", status, data)
		}
		return ""
	})

	addr := follower.c.HTTPAddr()
	query := sigv4.Presign(testAccessKey, testSecretKey, http.MethodGet, addr, "/throttle",
		time.Now(), 60*time.Second, sigv4.DefaultRegion, sigv4.DefaultService)
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+addr+"/throttle?"+query.Encode(), nil)
	if err != nil {
		t.Fatalf("presigned WebSocket to follower %s: %v", follower.id(), err)
	}
	defer conn.CloseNow()

	frame := fmt.Sprintf(`{"node_id":"edge-1","slot_number":%d,"consumption":{"front":{"alice":{"traffic_up":10}}},"rejection":{}}`, time.Now().Unix())
	if err := conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		t.Fatalf("writing the report: %v", err)
	}
	_, reply, err := conn.Read(ctx)
	if err != nil {
		t.Fatalf("reading the reply relayed from leader %s: %v", leader, err)
	}
	var quotas map[string]json.RawMessage
	if err := json.Unmarshal(reply, &quotas); err != nil {
		t.Fatalf("reply %s is not JSON: %v", reply, err)
	}
	if _, isError := quotas["error"]; isError {
		t.Fatalf("the relayed report got an error frame: %s", reply)
	}
	if _, ok := quotas["front"]; !ok {
		t.Errorf("reply %s has no entry for service front", reply)
	}
}

func TestTokenClusterReloadsTokens(t *testing.T) {
	nodes := startTokenCluster(t, nil)
	client := &http.Client{Timeout: socketTimeout}
	url := "http://" + nodes[0].c.HTTPAddr() + "/v1/limits"

	if err := nodes[0].c.ReloadTokens(parseTestTokens(t, "admin "+otherAdminToken+"\n")); err != nil {
		t.Fatalf("ReloadTokens: %v", err)
	}

	if status, _ := tokenRequest(t, client, http.MethodGet, url, "", clusterReadToken); status != http.StatusUnauthorized {
		t.Errorf("GET with a token that the reload removed: %d, want 401", status)
	}
	if status, data := tokenRequest(t, client, http.MethodGet, url, "", otherAdminToken); status != http.StatusOK {
		t.Errorf("GET with the new admin token: %d %s", status, data)
	}
	if err := nodes[0].c.ReloadTokens(parseTestTokens(t, "read "+clusterReadToken+"\n")); err == nil {
		t.Errorf("ReloadTokens without an admin token succeeded, want an error")
	}
}

// lineCapture keeps log lines, so a test can wait for one that shows an
// event happened.
type lineCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *lineCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *lineCapture) contains(part string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Contains(c.buf.String(), part)
}

// httpsClient trusts the certificate in caFile.
func httpsClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", caFile)
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport, Timeout: socketTimeout}
}

func TestRaftTLSClusterReplicatesAndKeepsIntruderOut(t *testing.T) {
	// Every central presents the same self-signed certificate, which is
	// also the cluster CA.
	certFile, keyFile := writeSelfSignedCert(t, t.TempDir())
	clusterLog := &lineCapture{}
	secure := func(cfg *Config) {
		cfg.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile, CAFile: certFile}
		cfg.RaftTLS = true
		cfg.Tokens = clusterTokens(t)
		cfg.Logger = slog.New(slog.NewTextHandler(clusterLog, nil)).With("test_node", cfg.NodeID)
	}
	first := startNodeWith(t, "c1", true, nil, secure)
	nodes := []*testNode{first}
	for i := 2; i <= 3; i++ {
		nodes = append(nodes, startNodeWith(t, fmt.Sprintf("c%d", i), false, []string{first.c.HTTPAddr()}, secure))
	}
	leader := waitForCluster(t, nodes)
	client := httpsClient(t, certFile)

	url := "https://" + followerOf(t, nodes, leader).c.HTTPAddr() + "/v1/limits/front/alice"
	if status, data := tokenRequest(t, client, http.MethodPut, url, `{"limit":{"traffic_up":500}}`, clusterAdminToken); status != http.StatusOK {
		t.Fatalf("PUT over HTTPS: %d %s", status, data)
	}
	for _, n := range nodes {
		waitForLimit(t, n, "front", "alice", 500)
	}

	// The intruder holds the admin token and trusts the cluster CA, but
	// its own certificate comes from another CA: the leader's Raft TLS
	// check refuses the join, and the intruder stops with the reason.
	intruderCert, intruderKey := writeSelfSignedCert(t, t.TempDir())
	intruder := startNodeWith(t, "intruder", false, []string{first.c.HTTPAddr()}, func(cfg *Config) {
		cfg.TLS = TLSConfig{CertFile: intruderCert, KeyFile: intruderKey, CAFile: certFile}
		cfg.RaftTLS = true
		cfg.Tokens = clusterTokens(t)
	})
	select {
	case err := <-intruder.c.Fatal():
		if !clusterLog.contains("rejected the join of a server that failed the Raft TLS check") {
			t.Errorf("the leader logged no line about the rejected join")
		}
		for _, want := range []string{"HTTP 400", "Raft TLS check", "--tls-ca"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("the intruder stopped with %q, want it to contain %q", err, want)
			}
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the intruder did not stop within 20 s after its join was refused")
	}
	servers, err := nodeByID(t, nodes, leader).c.Node().Servers()
	if err != nil {
		t.Fatalf("Servers: %v", err)
	}
	if len(servers) != len(nodes) {
		t.Errorf("the configuration has %d servers (%+v), want the %d centrals without the intruder", len(servers), servers, len(nodes))
	}
	if status, data := tokenRequest(t, client, http.MethodPut, url, `{"limit":{"traffic_up":600}}`, clusterAdminToken); status != http.StatusOK {
		t.Fatalf("PUT after the refused join: %d %s", status, data)
	}
	for _, n := range nodes {
		waitForLimit(t, n, "front", "alice", 600)
	}

	if _, ok := intruder.c.State().Limits("front", "alice"); ok {
		t.Errorf("the intruder holds alice's limits; it must receive no log entries")
	}
	if id, _ := intruder.c.Node().Leader(); id != "" {
		t.Errorf("the intruder follows leader %q, want none", id)
	}
}

func TestStartRejectsRaftTLSWithoutCA(t *testing.T) {
	certFile, keyFile := writeSelfSignedCert(t, t.TempDir())
	_, err := Start(Config{
		NodeID:   "c1",
		HTTPAddr: "127.0.0.1:0",
		RaftAddr: "127.0.0.1:0",
		DataDir:  filepath.Join(t.TempDir(), "c1"),
		TLS:      TLSConfig{CertFile: certFile, KeyFile: keyFile},
		RaftTLS:  true,
		Logger:   testLogger(t),
	})

	if err == nil || !strings.Contains(err.Error(), "--tls-ca") {
		t.Errorf("Start returned %v, want an error naming --tls-ca", err)
	}
}
