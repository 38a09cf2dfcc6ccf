package central

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"github.com/throttlecentral/throttle-central/internal/testutil"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/throttlecentral/throttle-central/api/sigv4"
)

// The SigV4 key pair of the recorded lua-resty-throttle handshakes.
const (
	testAccessKey = "test-access-key"
	testSecretKey = "test-secret-key"
)

// luaReports is the file of report frames recorded from the
// lua-resty-throttle client. It lies outside the repository, so tests that
// need it skip when it is absent.
const luaReports = "../../shared/fixtures/lua-resty-throttle/reports.jsonl"

// socketTimeout bounds every WebSocket dial, write and read in these tests.
const socketTimeout = 5 * time.Second

// slotNumber matches a slot key as the Lua client parses it: decimal digits.
var slotNumber = regexp.MustCompile(`^[0-9]+$`)

// writeSelfSignedCert writes a self-signed ECDSA P-256 certificate for
// 127.0.0.1 and its key as PEM files in dir, and returns their paths.
func writeSelfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generating the key: %v", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		t.Fatalf("generating the serial number: %v", err)
	}

	now := time.Now()
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "throttle-central test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	certDER, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("creating the certificate: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("encoding the key: %v", err)
	}

	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// secureNode is a one-node cluster that serves TLS with a self-signed
// certificate and requires SigV4 presigned WebSocket handshakes.
type secureNode struct {
	node     *testNode
	registry *prometheus.Registry
	// client trusts any certificate, as the Lua client does.
	client *http.Client
}

func startSecureNode(t *testing.T) *secureNode {
	t.Helper()
	certFile, keyFile := writeSelfSignedCert(t, t.TempDir())
	registry := prometheus.NewRegistry()
	node := startNodeWith(t, "c1", true, nil, func(cfg *Config) {
		cfg.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile, CAFile: certFile}
		cfg.AccessKeys = map[string]string{testAccessKey: testSecretKey}
		cfg.Registry = registry
	})
	transport := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	t.Cleanup(transport.CloseIdleConnections)
	s := &secureNode{node: node, registry: registry, client: &http.Client{Transport: transport}}
	waitForCluster(t, []*testNode{node})
	waitForQuotaEngine(t, s.client, s.baseURL())
	return s
}

func (s *secureNode) addr() string { return s.node.c.HTTPAddr() }

func (s *secureNode) baseURL() string { return "https://" + s.addr() }

// waitForQuotaEngine waits until the central at baseURL serves monitor
// data, which only a leader with its quota engine running does. Before
// that, a report gets a 503.
func waitForQuotaEngine(t testing.TB, client *http.Client, baseURL string) {
	t.Helper()
	waitFor(t, "the leader's quota engine", func() string {
		resp, err := client.Get(baseURL + "/v1/monitor/reported")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("GET /v1/monitor/reported: %d %s", resp.StatusCode, body)
		}
		return ""
	})
}

// presignedQuery returns a SigV4 presigned query for GET /throttle on the
// central's host:port, signed now and valid for 60 s like the Lua client's.
func (s *secureNode) presignedQuery() url.Values {
	return sigv4.Presign(testAccessKey, testSecretKey, http.MethodGet, s.addr(), "/throttle",
		time.Now(), 60*time.Second, sigv4.DefaultRegion, sigv4.DefaultService)
}

// dial opens a WebSocket to socketURL. It returns the handshake response and the
// error when the central rejects the handshake.
func (s *secureNode) dial(t *testing.T, socketURL string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, socketURL, &websocket.DialOptions{HTTPClient: s.client})
	if err == nil {
		t.Cleanup(func() { conn.CloseNow() })
	}
	return conn, resp, err
}

// counterValue returns the counter name whose labels are exactly labels,
// or 0 when no such series exists yet.
func (s *secureNode) counterValue(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := s.registry.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	for _, family := range families {
		if family.GetName() != name {
			continue
		}
		for _, m := range family.GetMetric() {
			matched := len(m.GetLabel()) == len(labels)
			for _, pair := range m.GetLabel() {
				if labels[pair.GetName()] != pair.GetValue() {
					matched = false
				}
			}
			if matched {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// readLuaReports returns the lines of luaReports and skips the test when
// the file is absent.
// The recorded slot numbers are moved to the present, keeping their
// spacing, because the leader rejects a report more than a day off its
// clock. Every other byte stays as recorded.
func readLuaReports(t *testing.T) [][]byte {
	t.Helper()
	lines := testutil.ReadLines(t, luaReports)
	return moveSlotsToPresent(t, lines, time.Now().Unix())
}

// recordedSlot matches the slot_number field of a recorded report.
var recordedSlot = regexp.MustCompile(`"slot_number":\s*([0-9]+)`)

// moveSlotsToPresent rewrites the slot_number of every line so that the
// first becomes now and the others keep their distance from it.
func moveSlotsToPresent(t *testing.T, lines [][]byte, now int64) [][]byte {
	t.Helper()
	base := int64(0)
	out := make([][]byte, len(lines))
	for i, line := range lines {
		match := recordedSlot.FindSubmatchIndex(line)
		if match == nil {
			out[i] = line
			continue
		}
		slot, err := strconv.ParseInt(string(line[match[2]:match[3]]), 10, 64)
		if err != nil {
			t.Fatalf("fixture line %d: slot_number %s: %v", i+1, line[match[2]:match[3]], err)
		}
		if base == 0 {
			base = slot
		}
		moved := append(bytes.Clone(line[:match[2]]), strconv.FormatInt(now+slot-base, 10)...)
		out[i] = append(moved, line[match[3]:]...)
	}
	return out
}

// checkLuaReply returns what in reply the Lua client would reject, or ""
// when it accepts it: the reply must be a JSON object whose keys are
// services the report named, each holding only decimal slot keys, each
// holding user -> resource -> quota. The slot must be the report's slot + 1.
func checkLuaReply(reply []byte, services map[string]bool, slot int64) string {
	var byService map[string]json.RawMessage
	if err := json.Unmarshal(reply, &byService); err != nil || byService == nil {
		return fmt.Sprintf("reply %s is not a JSON object: %v", reply, err)
	}
	for service, raw := range byService {
		if !services[service] {
			return fmt.Sprintf("reply names service %q, which the report did not", service)
		}
		var bySlot map[string]json.RawMessage
		if err := json.Unmarshal(raw, &bySlot); err != nil || bySlot == nil {
			return fmt.Sprintf("service %q holds %s, not a JSON object: %v", service, raw, err)
		}
		for key, raw := range bySlot {
			if !slotNumber.MatchString(key) {
				return fmt.Sprintf("key %q inside service %q is not a decimal slot number", key, service)
			}
			if key != strconv.FormatInt(slot+1, 10) {
				return fmt.Sprintf("slot key %s inside service %q is not the report's slot %d + 1", key, service, slot)
			}
			var quotas map[string]map[string]float64
			if err := json.Unmarshal(raw, &quotas); err != nil {
				return fmt.Sprintf("slot %s of service %q holds %s, not user -> resource -> quota: %v", key, service, raw, err)
			}
			for user, resources := range quotas {
				for resource, q := range resources {
					if math.IsNaN(q) || math.IsInf(q, 0) || q < 0 {
						return fmt.Sprintf("quota of %s/%s/%s is %v", service, user, resource, q)
					}
				}
			}
		}
	}
	return ""
}

func TestWebSocketOverTLSWithSigV4(t *testing.T) {
	lines := readLuaReports(t)
	s := startSecureNode(t)

	status, body := secureRequest(t, s.client, http.MethodPut, s.baseURL()+"/v1/limits/front/user_foo",
		`{"limit": {"traffic_up": 1048576}}`)
	if status != http.StatusOK {
		t.Fatalf("PUT /v1/limits/front/user_foo over https: %d %s", status, body)
	}
	waitForLimit(t, s.node, "front", "user_foo", 1048576)

	conn, resp, err := s.dial(t, "wss://"+s.addr()+"/throttle?"+s.presignedQuery().Encode())
	if err != nil {
		t.Fatalf("presigned handshake: %v (response %+v)", err, resp)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Errorf("handshake status is %d, want 101", resp.StatusCode)
	}

	for i, line := range lines {
		var report struct {
			Slot        int64                      `json:"slot_number"`
			Consumption map[string]json.RawMessage `json:"consumption"`
			Rejection   map[string]json.RawMessage `json:"rejection"`
		}
		if err := json.Unmarshal(line, &report); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		services := map[string]bool{}
		for service := range report.Consumption {
			services[service] = true
		}
		for service := range report.Rejection {
			services[service] = true
		}

		ctx, cancel := context.WithTimeout(context.Background(), socketTimeout)
		if err := conn.Write(ctx, websocket.MessageText, line); err != nil {
			cancel()
			t.Fatalf("line %d: writing the report: %v", i+1, err)
		}
		kind, reply, err := conn.Read(ctx)
		cancel()
		if err != nil {
			t.Fatalf("line %d: reading the reply: %v", i+1, err)
		}
		if kind != websocket.MessageText {
			t.Errorf("line %d: reply is a %v message, want text", i+1, kind)
		}
		if problem := checkLuaReply(reply, services, report.Slot); problem != "" {
			t.Errorf("line %d: %s", i+1, problem)
		}
	}

	t.Run("wrong signature", func(t *testing.T) {
		query := s.presignedQuery()
		signature := []byte(query.Get("X-Amz-Signature"))
		if len(signature) != 64 {
			t.Fatalf("X-Amz-Signature is %q, want 64 hex digits", signature)
		}
		// Change one hex digit.
		if signature[10] == '0' {
			signature[10] = '1'
		} else {
			signature[10] = '0'
		}
		query.Set("X-Amz-Signature", string(signature))

		wantHandshakeRejected(t, s, "wss://"+s.addr()+"/throttle?"+query.Encode())
	})
	t.Run("no X-Amz parameters", func(t *testing.T) {
		wantHandshakeRejected(t, s, "wss://"+s.addr()+"/throttle")
	})

	labels := map[string]string{"transport": "websocket", "outcome": "unauthorized"}
	if got := s.counterValue(t, "throttle_reports_total", labels); got != 2 {
		t.Errorf(`throttle_reports_total{transport="websocket",outcome="unauthorized"} is %v, want 2`, got)
	}
}

// wantHandshakeRejected fails the test unless the central rejects the
// handshake at socketURL with 403 and does not upgrade the connection.
func wantHandshakeRejected(t *testing.T, s *secureNode, socketURL string) {
	t.Helper()
	conn, resp, err := s.dial(t, socketURL)
	if err == nil {
		t.Fatalf("handshake was accepted with status %d, want 403", resp.StatusCode)
	}
	if resp == nil {
		t.Fatalf("handshake failed without a response: %v", err)
	}
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("handshake status is %d, want 403", resp.StatusCode)
	}
	if upgrade := resp.Header.Get("Upgrade"); upgrade != "" {
		t.Errorf("403 response carries Upgrade: %q", upgrade)
	}
	if conn != nil {
		t.Error("Dial returned a connection for a rejected handshake")
	}
	data, _ := io.ReadAll(resp.Body)
	var body struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(data, &body); err != nil || body.Error.Code != "forbidden" {
		t.Errorf("403 body is %s, want the JSON error with code forbidden", data)
	}
}

// secureRequest sends body as JSON to target with client and returns the status and
// the response body.
func secureRequest(t *testing.T, client *http.Client, method, target, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, target, bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the response of %s %s: %v", method, target, err)
	}
	return resp.StatusCode, data
}
