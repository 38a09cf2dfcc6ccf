package main

import (
	"bytes"
	"encoding/pem"
	"errors"
	"flag"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/edge"
)

// testEnvironment returns an environment with the given variables and host
// name.
func testEnvironment(variables map[string]string, hostname string) environment {
	return environment{
		lookup: func(name string) (string, bool) {
			value, ok := variables[name]
			return value, ok
		},
		hostname: func() (string, error) {
			if hostname == "" {
				return "", errors.New("no host name")
			}
			return hostname, nil
		},
	}
}

func parseTestFlags(t *testing.T, args ...string) (options, error) {
	t.Helper()
	return parseFlags(args, &bytes.Buffer{}, testEnvironment(nil, "host-1"))
}

func TestParseFlagsDefaults(t *testing.T) {
	o, err := parseTestFlags(t, "--centrals", "http://127.0.0.1:8081, http://127.0.0.1:8082")
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if o.listen != "127.0.0.1:9090" {
		t.Errorf("listen = %q, want 127.0.0.1:9090", o.listen)
	}
	if o.nodeID != "host-1" {
		t.Errorf("node ID = %q, want the host name host-1", o.nodeID)
	}
	if got := strings.Join(o.centrals, " "); got != "http://127.0.0.1:8081 http://127.0.0.1:8082" {
		t.Errorf("centrals = %q", got)
	}
	if o.fallback != edge.FallbackSafeShare {
		t.Errorf("fallback = %v, want safe-share", o.fallback)
	}
	if o.requestTimeout != edge.DefaultRequestTimeout {
		t.Errorf("request timeout = %v, want %v", o.requestTimeout, edge.DefaultRequestTimeout)
	}
	if o.gossipAddr != "" {
		t.Errorf("gossip address = %q, want none", o.gossipAddr)
	}
}

func TestParseFlagsRejectsInvalidValues(t *testing.T) {
	const centrals = "http://127.0.0.1:8081"
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "--centrals is required"},
		{[]string{"--centrals", " , "}, "--centrals is required"},
		{[]string{"--centrals", centrals, "extra"}, `unexpected argument "extra"`},
		{[]string{"--centrals", centrals, "--node-id", "a/b"}, `--node-id "a/b" contains '/'`},
		{[]string{"--centrals", centrals, "--listen", "0.0.0.0:9090"}, `--listen "0.0.0.0:9090" is not a loopback address`},
		{[]string{"--centrals", centrals, "--listen", ":9090"}, `--listen ":9090" is not a loopback address`},
		{[]string{"--centrals", centrals, "--listen", "10.1.2.3:9090"}, `--listen "10.1.2.3:9090" is not a loopback address`},
		{[]string{"--centrals", centrals, "--listen", "127.0.0.1"}, `--listen "127.0.0.1" is not host:port`},
		{[]string{"--centrals", centrals, "--fallback", "maybe"}, `--fallback: invalid fallback policy "maybe"`},
		{[]string{"--centrals", centrals, "--service-fallback", "front"}, `--service-fallback "front" is not SERVICE=POLICY`},
		{[]string{"--centrals", centrals, "--service-fallback", "front=shut"}, `--service-fallback "front=shut": invalid fallback policy "shut"`},
		{[]string{"--centrals", centrals, "--service-fallback", "front=open,front=closed"}, `names service "front" twice`},
		{[]string{"--centrals", centrals, "--service-fallback", "=open"}, "--service-fallback service is empty"},
		{[]string{"--centrals", centrals, "--tls-ca", "ca.pem", "--tls-skip-verify"}, "exclude each other"},
		{[]string{"--centrals", centrals, "--request-timeout", "0s"}, "--request-timeout 0s must be positive"},
		{[]string{"--centrals", centrals, "--shutdown-timeout", "-1s"}, "--shutdown-timeout -1s must be positive"},
		{[]string{"--centrals", centrals, "--gossip-join", "127.0.0.1:7946"}, "need --gossip-addr"},
		{[]string{"--centrals", centrals, "--gossip-key-file", "key"}, "need --gossip-addr"},
		{[]string{"--centrals", centrals, "--gossip-addr", "127.0.0.1:7946", "--gossip-key", "a", "--gossip-key-file", "key"}, "exclude each other"},
		{[]string{"--centrals", centrals, "--gossip-addr", "localhost:7946"}, "--gossip-addr"},
		{[]string{"--centrals", centrals, "--gossip-addr", "127.0.0.1:7946", "--gossip-key", "c2hvcnQ="}, "--gossip-key"},
		{[]string{"--centrals", centrals, "--gossip-addr", "127.0.0.1:7946", "--gossip-join", "no-port"}, "--gossip-join"},
	}
	for _, tc := range tests {
		_, err := parseTestFlags(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) error = %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

func TestParseFlagsAcceptsLoopbackAndListenAny(t *testing.T) {
	for _, args := range [][]string{
		{"--listen", "localhost:9090"},
		{"--listen", "[::1]:9090"},
		{"--listen", "127.0.0.2:9090"},
		{"--listen", "0.0.0.0:9090", "--listen-any"},
	} {
		if _, err := parseTestFlags(t, append(args, "--centrals", "http://127.0.0.1:8081")...); err != nil {
			t.Errorf("parseFlags(%q): %v", args, err)
		}
	}
}

func TestParseFlagsServiceFallback(t *testing.T) {
	o, err := parseTestFlags(t, "--centrals", "http://127.0.0.1:8081", "--fallback", "open", "--service-fallback", "front=closed, batch=safe-share")
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if o.fallback != edge.FallbackOpen {
		t.Errorf("fallback = %v, want open", o.fallback)
	}
	if got := o.serviceFallback["front"]; got != edge.FallbackClosed {
		t.Errorf("fallback of front = %v, want closed", got)
	}
	if got := o.serviceFallback["batch"]; got != edge.FallbackSafeShare {
		t.Errorf("fallback of batch = %v, want safe-share", got)
	}
}

func TestParseFlagsNodeIDWithoutHostname(t *testing.T) {
	_, err := parseFlags([]string{"--centrals", "http://127.0.0.1:8081"}, &bytes.Buffer{}, testEnvironment(nil, ""))
	if err == nil || !strings.Contains(err.Error(), "set --node-id") {
		t.Errorf("parseFlags without a host name: %v, want an error asking for --node-id", err)
	}
}

func TestEnvironmentFillsUnsetFlags(t *testing.T) {
	env := testEnvironment(map[string]string{
		"THROTTLE_AGENT_CENTRALS":        "http://127.0.0.1:8081",
		"THROTTLE_AGENT_NODE_ID":         "from-env",
		"THROTTLE_AGENT_FALLBACK":        "closed",
		"THROTTLE_AGENT_REQUEST_TIMEOUT": "300ms",
	}, "host-1")

	o, err := parseFlags([]string{"--node-id", "from-flag"}, &bytes.Buffer{}, env)
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if o.nodeID != "from-flag" {
		t.Errorf("node ID = %q: a flag on the command line must win over THROTTLE_AGENT_NODE_ID", o.nodeID)
	}
	if len(o.centrals) != 1 || o.centrals[0] != "http://127.0.0.1:8081" {
		t.Errorf("centrals = %q, want the value of THROTTLE_AGENT_CENTRALS", o.centrals)
	}
	if o.fallback != edge.FallbackClosed {
		t.Errorf("fallback = %v, want closed from THROTTLE_AGENT_FALLBACK", o.fallback)
	}
	if o.requestTimeout != 300*time.Millisecond {
		t.Errorf("request timeout = %v, want 300ms from THROTTLE_AGENT_REQUEST_TIMEOUT", o.requestTimeout)
	}
}

func TestEnvironmentInvalidValueNamesVariable(t *testing.T) {
	env := testEnvironment(map[string]string{"THROTTLE_AGENT_LISTEN_ANY": "maybe"}, "host-1")

	_, err := parseFlags([]string{"--centrals", "http://127.0.0.1:8081"}, &bytes.Buffer{}, env)

	if err == nil || !strings.Contains(err.Error(), `THROTTLE_AGENT_LISTEN_ANY="maybe"`) {
		t.Errorf("parseFlags error = %v, want it to name THROTTLE_AGENT_LISTEN_ANY and the value", err)
	}
}

func TestHelpExitsZero(t *testing.T) {
	var out bytes.Buffer
	_, err := parseFlags([]string{"--help"}, &out, testEnvironment(nil, "host-1"))
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"THROTTLE_AGENT_CENTRALS", "-centrals", "-listen", "-gossip-addr", "default"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help text lacks %q", want)
		}
	}
}

func TestRunExitCodes(t *testing.T) {
	if code := run(t.Context(), []string{"--help"}, &bytes.Buffer{}, nil); code != 0 {
		t.Errorf("run --help exit code %d, want 0", code)
	}
	var stderr bytes.Buffer
	if code := run(t.Context(), []string{"--centrals", "http://127.0.0.1:8081", "--listen", "10.0.0.1:9090"}, &stderr, nil); code != 2 {
		t.Errorf("run with a non-loopback --listen exit code %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "throttle-agent: --listen") {
		t.Errorf("stderr = %q, want the flag error", stderr.String())
	}
	stderr.Reset()
	if code := run(t.Context(), []string{"--centrals", "ftp://127.0.0.1:8081", "--listen", "127.0.0.1:0"}, &stderr, nil); code != 2 {
		t.Errorf("run with an ftp central exit code %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), `invalid central URL \"ftp://127.0.0.1:8081\"`) {
		t.Errorf("stderr = %q, want it to name the invalid central URL", stderr.String())
	}
	if code := run(t.Context(), []string{"--centrals", "http://127.0.0.1:8081", "--log-level", "loud"}, &bytes.Buffer{}, nil); code != 2 {
		t.Errorf("run with --log-level loud exit code %d, want 2", code)
	}
}

func TestTLSConfigFromCA(t *testing.T) {
	dir := t.TempDir()
	server := httptest.NewTLSServer(nil)
	defer server.Close()
	caFile := filepath.Join(dir, "ca.pem")
	certificate := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate().Raw})
	if err := os.WriteFile(caFile, certificate, 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}

	config, err := options{tlsCA: caFile}.tlsConfig()
	if err != nil || config == nil || config.RootCAs == nil {
		t.Errorf("tlsConfig with a CA file = %v, %v; want a configuration with root CAs", config, err)
	}
	if _, err := (options{tlsCA: notPEM}).tlsConfig(); err == nil || !strings.Contains(err.Error(), "contains no PEM certificate") {
		t.Errorf("tlsConfig with a file without PEM = %v, want an error", err)
	}
	if _, err := (options{tlsCA: filepath.Join(dir, "missing.pem")}).tlsConfig(); err == nil || !strings.Contains(err.Error(), "--tls-ca") {
		t.Errorf("tlsConfig with a missing file = %v, want an error naming --tls-ca", err)
	}
	config, err = options{tlsSkipVerify: true}.tlsConfig()
	if err != nil || config == nil || !config.InsecureSkipVerify {
		t.Errorf("tlsConfig with --tls-skip-verify = %v, %v; want InsecureSkipVerify", config, err)
	}
	if config, err := (options{}).tlsConfig(); config != nil || err != nil {
		t.Errorf("tlsConfig without flags = %v, %v; want nil for Go's defaults", config, err)
	}
}

func TestReadGossipKey(t *testing.T) {
	dir := t.TempDir()
	const key = "MDEyMzQ1Njc4OWFiY2RlZg==" // base64 of 16 bytes
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badFile := filepath.Join(dir, "bad")
	if err := os.WriteFile(badFile, []byte("secret-but-short"), 0o600); err != nil {
		t.Fatal(err)
	}

	if got, err := (options{gossipKeyFile: keyFile}).readGossipKey(); err != nil || got != key {
		t.Errorf("readGossipKey from a file = %q, %v; want the key without the line break", got, err)
	}
	_, err := (options{gossipKeyFile: badFile}).readGossipKey()
	if err == nil || !strings.Contains(err.Error(), "--gossip-key-file") {
		t.Errorf("readGossipKey of an invalid key = %v, want an error naming --gossip-key-file", err)
	}
	if err != nil && strings.Contains(err.Error(), "secret-but-short") {
		t.Errorf("readGossipKey error %q contains the key", err)
	}
	if got, err := (options{gossipKey: key}).readGossipKey(); err != nil || got != key {
		t.Errorf("readGossipKey from --gossip-key = %q, %v; want the flag's value", got, err)
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("  token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	if token, err := (options{tokenFile: tokenFile}).readToken(); err != nil || token != "token-1" {
		t.Errorf("readToken = %q, %v; want token-1 without the spaces", token, err)
	}
	if _, err := (options{tokenFile: emptyFile}).readToken(); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("readToken of an empty file = %v, want an error", err)
	}
	if token, err := (options{}).readToken(); token != "" || err != nil {
		t.Errorf("readToken without --token-file = %q, %v; want no token", token, err)
	}
}

func TestParseFlagsConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.conf")
	config := "# the edge node's settings\ncentrals = http://127.0.0.1:8081\nnode-id = edge-7\nfallback = closed\n"
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	env := testEnvironment(map[string]string{"THROTTLE_AGENT_FALLBACK": "open"}, "host-1")
	o, err := parseFlags([]string{"--config", path, "--node-id", "edge-8"}, &bytes.Buffer{}, env)
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if got := strings.Join(o.centrals, " "); got != "http://127.0.0.1:8081" {
		t.Errorf("centrals = %q, want the file's", got)
	}
	if o.nodeID != "edge-8" {
		t.Errorf("node ID = %q, want edge-8 from the command line", o.nodeID)
	}
	if o.fallback != edge.FallbackOpen {
		t.Errorf("fallback = %v, want open from the environment", o.fallback)
	}

	if err := os.WriteFile(path, []byte("centrals = http://127.0.0.1:8081\nlisten-port = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := parseFlags([]string{"--config", path}, &bytes.Buffer{}, env); err == nil || !strings.Contains(err.Error(), `line 2: unknown setting "listen-port"`) {
		t.Errorf("unknown setting: error %v, want one naming line 2", err)
	}
}
