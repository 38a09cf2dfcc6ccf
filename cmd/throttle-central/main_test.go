package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"github.com/throttlecentral/throttle-central/internal/cli"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/central"
)

func TestParseFlagsRequiresNodeIDAndDataDir(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--data-dir", "d"}, "--node-id is required"},
		{[]string{"--node-id", "c1"}, "--data-dir is required"},
		{[]string{"--node-id", "c1", "--data-dir", "d", "extra"}, `unexpected argument "extra"`},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--shutdown-timeout", "0s"}, "--shutdown-timeout"},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--allocation", "fair"}, `--allocation: invalid input: allocation mode "fair"`},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--history-slots", "0"}, "--history-slots 0"},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--metrics-top-users", "-1"}, "--metrics-top-users -1 is out of range"},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--metrics-top-users", "1001"}, "--metrics-top-users 1001 is out of range; use 0 (off) to 1000"},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--metrics-top-users", "ten"}, `invalid value "ten" for flag --metrics-top-users: must be a whole number`},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--bootstrap", "--join", "a:1"}, "--bootstrap and --join exclude each other"},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--raft-heartbeat-timeout", "1s", "--raft-election-timeout", "500ms"}, "--raft-election-timeout 500ms is below"},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--raft-heartbeat-timeout", "1"}, "such as 500ms"},
		{[]string{"--node-id", "a/b", "--data-dir", "d"}, `--node-id "a/b"`},
	} {
		_, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%v) error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

func TestHelpExitsZero(t *testing.T) {
	var out bytes.Buffer
	_, err := parseFlags([]string{"--help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"THROTTLE_NODE_ID", "--node-id", "-raft-addr", "default"} {
		if !strings.Contains(out.String(), strings.TrimPrefix(want, "-")) {
			t.Errorf("help text lacks %q", want)
		}
	}
	if code := run([]string{"--help"}, io.Discard, &bytes.Buffer{}); code != 0 {
		t.Errorf("run --help exit code %d, want 0", code)
	}
	if code := run([]string{"--node-id", "x"}, io.Discard, &bytes.Buffer{}); code != 2 {
		t.Errorf("run without --data-dir exit code %d, want 2", code)
	}
}

func TestRaftConfigShortHeartbeat(t *testing.T) {
	o := options{raftHeartbeat: 200 * time.Millisecond}
	cfg := o.raftConfig()
	if cfg.ElectionTimeout != 200*time.Millisecond || cfg.LeaderLeaseTimeout != 100*time.Millisecond {
		t.Errorf("heartbeat 200ms gives election %v and lease %v, want 200ms and 100ms", cfg.ElectionTimeout, cfg.LeaderLeaseTimeout)
	}
	if got := (options{}).raftConfig(); got.HeartbeatTimeout != 0 || got.LeaderLeaseTimeout != 0 {
		t.Errorf("no flags should keep the defaults, got %+v", got)
	}
}

func TestParseFlagsRejectsBadGossipValues(t *testing.T) {
	base := []string{"--node-id", "c1", "--data-dir", "d"}
	gossip := append(slices.Clone(base), "--gossip-addr", "127.0.0.1:7946")
	shortKey := base64.StdEncoding.EncodeToString([]byte("ten bytes!"))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(slices.Clone(base), "--gossip-join", "a:1"), "--gossip-join needs --gossip-addr"},
		{append(slices.Clone(base), "--gossip-key-file", "k"), "--gossip-key-file needs --gossip-addr"},
		{append(slices.Clone(base), "--gossip-addr", "localhost:7946"), `--gossip-addr: "localhost:7946": host "localhost" is not an IP address`},
		{append(slices.Clone(base), "--gossip-addr", "127.0.0.1"), `--gossip-addr: "127.0.0.1" is not an IP:port address`},
		{append(slices.Clone(gossip), "--gossip-advertise", "10.0.0.1:0"), `--gossip-advertise "10.0.0.1:0" has port 0`},
		{append(slices.Clone(base), "--gossip-addr", "127.0.0.1:0", "--gossip-advertise", "10.0.0.1:7946"), `needs a fixed port in --gossip-addr "127.0.0.1:0"`},
		{append(slices.Clone(gossip), "--gossip-join", "c2:7946,c3"), `--gossip-join: "c3" is not a host:port address`},
		{append(slices.Clone(gossip), "--gossip-key", shortKey), "--gossip-key: gossip key decodes to 10 bytes"},
		{append(slices.Clone(gossip), "--gossip-key", "k", "--gossip-key-file", "f"), "--gossip-key and --gossip-key-file exclude each other"},
		{append(slices.Clone(gossip), "--gossip-probe-interval", "0s"), "--gossip-probe-interval 0s must be positive"},
		{append(slices.Clone(gossip), "--gossip-probe-timeout", "2s"), "--gossip-probe-timeout 2s is longer than --gossip-probe-interval 1s"},
		{append(slices.Clone(gossip), "--gossip-suspicion-mult", "0"), "--gossip-suspicion-mult 0 must be at least 1"},
		{append(slices.Clone(gossip), "--gossip-reclaim-time", "-1s"), "--gossip-reclaim-time -1s must be positive"},
	} {
		_, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%v) error %v, want one containing %q", tc.args, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), shortKey) {
			t.Errorf("parseFlags(%v) error %q contains the key", tc.args, err)
		}
	}
}

func TestParseFlagsGossipDefaults(t *testing.T) {
	o, err := parseFlags([]string{"--node-id", "c1", "--data-dir", "d", "--gossip-addr", "127.0.0.1:7946",
		"--gossip-join", "127.0.0.1:7947, 127.0.0.1:7948"}, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	cfg := o.gossipConfig()
	if cfg.ProbeInterval != time.Second || cfg.ProbeTimeout != 500*time.Millisecond || cfg.SuspicionMult != 4 || cfg.DeadNodeReclaimTime != 30*time.Second {
		t.Errorf("default gossip timing %+v, want 1s, 500ms, 4 and 30s", cfg)
	}
	if got := cli.SplitList(o.gossipJoin); !slices.Equal(got, []string{"127.0.0.1:7947", "127.0.0.1:7948"}) {
		t.Errorf("--gossip-join split into %q", got)
	}
}

func TestGossipKeyFromFile(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{3}, 32))
	dir := t.TempDir()
	good := filepath.Join(dir, "key")
	if err := os.WriteFile(good, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := options{gossipKeyFile: good}.gossipKeyValue()
	if err != nil || got != key {
		t.Errorf("key from file: %q, %v; want the file's key without the newline", got, err)
	}

	short := base64.StdEncoding.EncodeToString([]byte("ten bytes!"))
	bad := filepath.Join(dir, "short")
	if err := os.WriteFile(bad, []byte(short), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = options{gossipKeyFile: bad}.gossipKeyValue()
	if err == nil || !strings.Contains(err.Error(), "decodes to 10 bytes") || strings.Contains(err.Error(), short) {
		t.Errorf("short key file: %v, want an error naming the length and not the key", err)
	}
	if _, err := (options{gossipKeyFile: filepath.Join(dir, "missing")}).gossipKeyValue(); err == nil || !strings.Contains(err.Error(), "--gossip-key-file") {
		t.Errorf("missing key file: %v, want an error naming --gossip-key-file", err)
	}
	if got, err := (options{gossipKey: key}).gossipKeyValue(); err != nil || got != key {
		t.Errorf("key from the flag: %q, %v", got, err)
	}
}

func TestHelpListsGossipFlags(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"gossip-addr", "gossip-join", "gossip-key-file", "gossip-probe-interval duration", "(default 1s)", "(default 500ms)", "(default 4)", "(default 30s)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help text lacks %q", want)
		}
	}
}

func TestParseFlagsMetricsTopUsers(t *testing.T) {
	base := []string{"--node-id", "c1", "--data-dir", "d"}
	o, err := parseFlags(base, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parseFlags(%v): %v", base, err)
	}
	if o.topUsers != 10 {
		t.Errorf("default --metrics-top-users %d, want 10", o.topUsers)
	}

	t.Setenv("THROTTLE_METRICS_TOP_USERS", "0")
	o, err = parseFlags(base, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parseFlags with THROTTLE_METRICS_TOP_USERS=0: %v", err)
	}
	if o.topUsers != 0 {
		t.Errorf("THROTTLE_METRICS_TOP_USERS=0 gives %d top users, want 0", o.topUsers)
	}

	args := append(slices.Clone(base), "--metrics-top-users", "25")
	o, err = parseFlags(args, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parseFlags(%v): %v", args, err)
	}
	if o.topUsers != 25 {
		t.Errorf("--metrics-top-users 25 with THROTTLE_METRICS_TOP_USERS=0 gives %d, want the flag's 25", o.topUsers)
	}
}

func TestParseFlagsRejectsBadSecurityFlags(t *testing.T) {
	base := []string{"--node-id", "c1", "--data-dir", "d"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(slices.Clone(base), "--metrics-token-required"), "--metrics-token-required needs --token-file"},
		{append(slices.Clone(base), "--raft-tls"), "--raft-tls needs --tls-cert, --tls-key and --tls-ca"},
		{append(slices.Clone(base), "--raft-tls", "--tls-cert", "c.pem", "--tls-key", "k.pem"), "--raft-tls needs --tls-cert, --tls-key and --tls-ca"},
		{append(slices.Clone(base), "--raft-tls", "--tls-cert", "c.pem", "--tls-ca", "ca.pem"), "--tls-cert and --tls-key go together"},
	} {
		_, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%v) error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

func TestParseFlagsTokenFileFromEnvironment(t *testing.T) {
	t.Setenv("THROTTLE_TOKEN_FILE", "/etc/throttle/tokens")
	t.Setenv("THROTTLE_METRICS_TOKEN_REQUIRED", "true")

	o, err := parseFlags([]string{"--node-id", "c1", "--data-dir", "d"}, &bytes.Buffer{})

	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if o.tokenFile != "/etc/throttle/tokens" || !o.metricsToken {
		t.Errorf("THROTTLE_TOKEN_FILE and THROTTLE_METRICS_TOKEN_REQUIRED give %q and %v", o.tokenFile, o.metricsToken)
	}
}

func TestHelpListsSecurityFlags(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"-token-file", "-metrics-token-required", "-raft-tls", "SIGHUP"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help text lacks %q", want)
		}
	}
}

// writeTokenFile writes text to a file with mode perm and returns its path.
func writeTokenFile(t *testing.T, text string, perm os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(text), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRunRejectsBadTokenFiles(t *testing.T) {
	const secret = "secret-token-0123456789abcdef"
	for _, tc := range []struct {
		name string
		file string
		want string
	}{
		{"unknown scope", "writer " + secret + "\n", "line 1: unknown scope"},
		{"short token", "admin short\n", "line 1: the token is 5 bytes"},
		{"no admin token", "node " + secret + "\n", "has no admin token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeTokenFile(t, tc.file, 0o600)
			var stderr bytes.Buffer

			code := run([]string{"--node-id", "c1", "--data-dir", t.TempDir(), "--token-file", path}, io.Discard, &stderr)

			if code != 2 {
				t.Errorf("exit code %d, want 2; stderr: %s", code, stderr.String())
			}
			for _, part := range []string{"--token-file", path, tc.want} {
				if !strings.Contains(stderr.String(), part) {
					t.Errorf("stderr %q does not contain %q", stderr.String(), part)
				}
			}
			if strings.Contains(stderr.String(), secret) {
				t.Errorf("stderr contains the token: %s", stderr.String())
			}
		})
	}
}

func TestLoadTokensWarnsAboutReadableFile(t *testing.T) {
	path := writeTokenFile(t, "admin admin-token-0123456789abcdef\n", 0o644)
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))

	tokens, err := options{tokenFile: path}.loadTokens(logger)

	if err != nil || tokens == nil {
		t.Fatalf("loadTokens: %v", err)
	}
	if !strings.Contains(logs.String(), "chmod 600") {
		t.Errorf("log %q has no warning about the file mode", logs.String())
	}
	if strings.Contains(logs.String(), "admin-token-0123456789abcdef") {
		t.Errorf("log contains the token: %s", logs.String())
	}
}

func TestSIGHUPReloadsTokenFile(t *testing.T) {
	const first, second = "first-admin-0123456789abcdef", "second-admin-0123456789abcdef"
	path := writeTokenFile(t, "admin "+first+"\n", 0o600)
	o := options{tokenFile: path}
	logger := slog.New(slog.DiscardHandler)
	tokens, err := o.loadTokens(logger)
	if err != nil {
		t.Fatalf("loadTokens: %v", err)
	}
	c, err := central.Start(central.Config{
		NodeID: "c1", HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		Bootstrap: true, Tokens: tokens, Logger: logger,
	})
	if err != nil {
		t.Fatalf("starting a central: %v", err)
	}
	signals := make(chan os.Signal, 1)
	stopped := make(chan int, 1)
	go func() { stopped <- waitForStop(signals, c, o, logger) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	status := func(token string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+c.HTTPAddr()+"/v1/limits", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET /v1/limits: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status(first); got != http.StatusOK {
		t.Fatalf("GET with the first token: %d, want 200", got)
	}

	if err := os.WriteFile(path, []byte("admin "+second+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	signals <- syscall.SIGHUP
	deadline := time.Now().Add(10 * time.Second)
	for status(second) != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("the second token is not accepted 10 s after SIGHUP")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := status(first); got != http.StatusUnauthorized {
		t.Errorf("GET with the replaced token: %d, want 401", got)
	}

	// A broken file keeps the tokens in force.
	if err := os.WriteFile(path, []byte("admin short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	signals <- syscall.SIGHUP
	signals <- syscall.SIGTERM
	select {
	case code := <-stopped:
		if code != 0 {
			t.Errorf("waitForStop returned %d after SIGTERM, want 0", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("waitForStop did not return after SIGTERM")
	}
	if got := status(second); got != http.StatusOK {
		t.Errorf("GET with the second token after a failed reload: %d, want 200", got)
	}
}

func TestParseFlagsConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "central.conf")
	config := "# c1 of the test cluster\nnode-id = c1\ndata-dir = /var/lib/throttle/c1\nraft-heartbeat-timeout = 500ms\n"
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"--config", path, "--data-dir", "/tmp/c1"}, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if o.nodeID != "c1" || o.raftHeartbeat != 500*time.Millisecond {
		t.Errorf("from the file: node-id %q, raft-heartbeat-timeout %v", o.nodeID, o.raftHeartbeat)
	}
	if o.dataDir != "/tmp/c1" {
		t.Errorf("data-dir %q, want /tmp/c1 from the command line", o.dataDir)
	}
}
