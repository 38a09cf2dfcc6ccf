package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// cliTimeout bounds one run of the CLI in a test.
const cliTimeout = 30 * time.Second

// result is the outcome of one CLI run.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs throttlectl with args and env as its environment. Unless env
// or args set the address, it points --addr at a closed port, so that no
// test sends a request to the default 127.0.0.1:8081.
func runCLI(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	environment := map[string]string{"THROTTLECTL_ADDR": unusedAddress(t)}
	for name, value := range env {
		environment[name] = value
	}
	lookup := func(name string) (string, bool) {
		value, ok := environment[name]
		return value, ok
	}
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := runContext(ctx, args, &stdout, &stderr, lookup)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// unusedAddress returns a 127.0.0.1 address with no listener.
func unusedAddress(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := listener.Addr().String()
	if err := listener.Close(); err != nil {
		t.Fatalf("close listener: %v", err)
	}
	return addr
}

func TestParseAmountAcceptsUnits(t *testing.T) {
	for _, tc := range []struct {
		text string
		want float64
	}{
		{"100", 100},
		{"0", 0},
		{"2.5", 2.5},
		{"1e6", 1e6},
		{"1k", 1000},
		{"1.5k", 1500},
		{"1kB", 1000},
		{"100MB", 100e6},
		{"100M", 100e6},
		{"2G", 2e9},
		{"3TB", 3e12},
		{"9P", 9e15},
		{"1Ki", 1024},
		{"1KiB", 1024},
		{"100MiB", 100 << 20},
		{"1GiB", 1 << 30},
		{"2Ti", 2 << 40},
		{"8Pi", 8 << 50},
		{"512B", 512},
	} {
		got, err := parseAmount(tc.text)
		if err != nil {
			t.Errorf("parseAmount(%q): %v", tc.text, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parseAmount(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
}

func TestParseAmountRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		text string
		want string
	}{
		{"", `"" has no number`},
		{"MB", `"MB" has no number`},
		{"abc", `"abc" is not a number`},
		{"1 MB", `"1 MB" is not a number`},
		{"1K", `"1K" has the unit K, which is ambiguous`},
		{"1KB", `"1KB" has the unit K, which is ambiguous`},
		{"5m", `"5m" has the unit m`},
		{"1mb", `"1mb" is not a number`},
		{"1EB", `"1EB" is not a number`},
		{"-1", `"-1" is -1; it must not be negative`},
		{"NaN", `"NaN" is NaN; it must be a finite number`},
		{"inf", `"inf" is +Inf; it must be a finite number`},
		{"10PB", `it must be at most 2^53`},
		{"9Pi", `it must be at most 2^53`},
	} {
		_, err := parseAmount(tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseAmount(%q) error %v, want one containing %q", tc.text, err, tc.want)
		}
	}
}

func TestParseAmountMaxIsTwoToThe53(t *testing.T) {
	got, err := parseAmount("9007199254740992")
	if err != nil || got != math.Exp2(53) {
		t.Errorf("parseAmount(2^53) = %v, %v; want 2^53 accepted", got, err)
	}
}

func TestParseLimitArgumentsBuildsRequest(t *testing.T) {
	request, err := parseLimitArguments([]string{"traffic_up=100MB", "traffic_down=1GiB/2GiB", "a=b=5"})
	if err != nil {
		t.Fatalf("parseLimitArguments: %v", err)
	}
	wantLimit := map[string]float64{"traffic_up": 100e6, "traffic_down": 1 << 30, "a=b": 5}
	if len(request.Limit) != len(wantLimit) {
		t.Errorf("limit %v, want %v", request.Limit, wantLimit)
	}
	for resource, want := range wantLimit {
		if request.Limit[resource] != want {
			t.Errorf("limit of %q = %v, want %v", resource, request.Limit[resource], want)
		}
	}
	if len(request.Burst) != 1 || request.Burst["traffic_down"] != 2<<30 {
		t.Errorf("burst %v, want only traffic_down = 2GiB", request.Burst)
	}
	body, err := json.Marshal(request)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `"traffic_up":100000000`) {
		t.Errorf("body %s, want traffic_up as the plain number 100000000", body)
	}
}

func TestParseLimitArgumentsWithoutBurstOmitsIt(t *testing.T) {
	request, err := parseLimitArguments([]string{"traffic_up=100"})
	if err != nil {
		t.Fatalf("parseLimitArguments: %v", err)
	}
	body, err := json.Marshal(request)
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != `{"limit":{"traffic_up":100}}` {
		t.Errorf("body %s, want only the limit", body)
	}
}

func TestParseInterleavedFlagsAndArguments(t *testing.T) {
	for _, tc := range []struct {
		args           []string
		wantPositional []string
		wantConsistent bool
	}{
		{[]string{"front", "alice", "--consistent"}, []string{"front", "alice"}, true},
		{[]string{"--consistent", "front", "alice"}, []string{"front", "alice"}, true},
		{[]string{"front", "--consistent", "alice"}, []string{"front", "alice"}, true},
		{[]string{"front", "alice"}, []string{"front", "alice"}, false},
		{[]string{"front", "--", "-alice", "--consistent"}, []string{"front", "-alice", "--consistent"}, false},
	} {
		flags := flag.NewFlagSet("t", flag.ContinueOnError)
		flags.SetOutput(io.Discard)
		consistent := flags.Bool("consistent", false, "")
		positional, err := parseInterleaved(flags, tc.args)
		if err != nil {
			t.Errorf("parseInterleaved(%q): %v", tc.args, err)
			continue
		}
		if !slices.Equal(positional, tc.wantPositional) {
			t.Errorf("parseInterleaved(%q) positional %q, want %q", tc.args, positional, tc.wantPositional)
		}
		if *consistent != tc.wantConsistent {
			t.Errorf("parseInterleaved(%q) consistent %v, want %v", tc.args, *consistent, tc.wantConsistent)
		}
	}
}

func TestParseCentralsNormalizesAddresses(t *testing.T) {
	got, err := parseCentrals("127.0.0.1:8081, http://c2:8081/ ,https://c3:443/prefix,[::1]:9000", false)
	if err != nil {
		t.Fatalf("parseCentrals: %v", err)
	}
	want := []string{"http://127.0.0.1:8081", "http://c2:8081", "https://c3:443/prefix", "http://[::1]:9000"}
	if !slices.Equal(got, want) {
		t.Errorf("parseCentrals = %q, want %q", got, want)
	}
}

func TestParseCentralsWithTLSUsesHTTPS(t *testing.T) {
	got, err := parseCentrals("127.0.0.1:8081,http://c2:8081", true)
	if err != nil {
		t.Fatalf("parseCentrals: %v", err)
	}
	want := []string{"https://127.0.0.1:8081", "http://c2:8081"}
	if !slices.Equal(got, want) {
		t.Errorf("parseCentrals = %q, want %q: host:port means https with TLS flags, a URL keeps its scheme", got, want)
	}
}

func TestUsageErrorsExitTwoNamingTheValue(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "no command given"},
		{[]string{"bogus"}, nil, `unknown command "bogus"`},
		{[]string{"limits"}, nil, "limits needs a subcommand: set, get, list, delete"},
		{[]string{"limits", "frob"}, nil, `unknown subcommand "frob" of limits`},
		{[]string{"--frob", "members"}, nil, "-frob"},
		{[]string{"members", "--frob"}, nil, "members: flag provided but not defined: -frob"},
		{[]string{"limits", "get", "front"}, nil, `limits get takes <service> <user>; got 1 ("front")`},
		{[]string{"members", "extra"}, nil, `members takes no arguments; got 1 ("extra")`},
		{[]string{"limits", "set", "front", "alice"}, nil, "limits set takes <service> <user> <resource>=<limit>[/<burst>] ...; got 2"},
		{[]string{"limits", "set", "front", "alice", "traffic_up"}, nil, `argument "traffic_up" is not <resource>=<limit>[/<burst>]`},
		{[]string{"limits", "set", "front", "alice", "traffic_up=1XB"}, nil, `limit "1XB" is not a number`},
		{[]string{"limits", "set", "front", "alice", "traffic_up=100/1XB"}, nil, `burst "1XB" is not a number`},
		{[]string{"limits", "set", "front", "alice", "traffic_up=100/10"}, nil, "burst 10 is below the limit 100"},
		{[]string{"limits", "set", "front", "alice", "a=1", "a=2"}, nil, `resource "a" is given twice`},
		{[]string{"limits", "set", "front", "alice", "=1"}, nil, "resource name is empty"},
		{[]string{"limits", "set", "front", "al/ice", "a=1"}, nil, `user "al/ice" contains '/'`},
		{[]string{"limits", "get", " front", "alice"}, nil, `service " front" has leading or trailing spaces`},
		{[]string{"limits", "list", "a/b"}, nil, `service "a/b" contains '/'`},
		{[]string{"limits", "delete", "front", strings.Repeat("u", 129)}, nil, "user is 129 bytes long; the maximum is 128"},
		{[]string{"--timeout", "0s", "cluster", "status"}, nil, "--timeout 0s must be positive"},
		{[]string{"-o", "yaml", "members"}, nil, `output format "yaml" is unknown; use table or json`},
		{[]string{"members", "--output", "csv"}, nil, `output format "csv" is unknown`},
		{[]string{"--addr", "localhost", "members"}, nil, `--addr "localhost" is not host:port or a URL`},
		{[]string{"--addr", ":8081", "members"}, nil, `--addr ":8081" has no host`},
		{[]string{"--addr", "c1:http", "members"}, nil, `--addr "c1:http" has port "http"`},
		{[]string{"--addr", "ftp://c1:21", "members"}, nil, `--addr "ftp://c1:21" has scheme "ftp"`},
		{[]string{"--addr", "http://c1:8081/?x=1", "members"}, nil, "must not have a query"},
		{[]string{"--addr", " , ", "members"}, nil, "--addr is empty"},
		{[]string{"--token", "a", "--token-file", tokenFile, "members"}, nil, "--token and --token-file exclude each other"},
		{[]string{"--token-file", filepath.Join(t.TempDir(), "missing"), "members"}, nil, "--token-file: open"},
		{[]string{"--tls-ca", "ca.pem", "--tls-skip-verify", "members"}, nil, "--tls-ca and --tls-skip-verify exclude each other"},
		{[]string{"--tls-ca", tokenFile, "members"}, nil, "contains no PEM certificate"},
		{[]string{"monitor", "front", "alice", "--interval", "10ms"}, nil, "--interval 10ms is out of range"},
		{[]string{"monitor", "front", "alice", "--count", "-1"}, nil, "--count -1 is negative"},
		{[]string{"monitor", "front", "alice", "--resource", "a/b"}, nil, `--resource "a/b" contains '/'`},
		{[]string{"cluster", "join", "c4", "0.0.0.0:7001", "127.0.0.1:8084"}, nil, `<raft-addr> "0.0.0.0:7001" has a wildcard host`},
		{[]string{"cluster", "join", "c4", "127.0.0.1:7001", "nohost"}, nil, `<http-addr> "nohost" is not host:port`},
		{[]string{"cluster", "join", "c4", "127.0.0.1:99999", "127.0.0.1:8084"}, nil, `has port "99999"`},
		{[]string{"cluster", "remove", "a/b"}, nil, `server ID "a/b" contains '/'`},
		{[]string{"help", "frob"}, nil, `unknown command "frob"`},
		{[]string{"members"}, map[string]string{"THROTTLECTL_TIMEOUT": "soon"}, `environment variable THROTTLECTL_TIMEOUT is invalid: "soon" is not a duration`},
		{[]string{"members"}, map[string]string{"THROTTLECTL_TLS_SKIP_VERIFY": "maybe"}, `environment variable THROTTLECTL_TLS_SKIP_VERIFY="maybe" is invalid; use true or false`},
		{[]string{"monitor", "front", "alice", "--count", "x"}, nil, `invalid value "x" for flag --count: "x" is not a whole number`},
		{[]string{"--timeout", "5", "members"}, nil, `"5" is not a duration`},
		{[]string{"members"}, map[string]string{"THROTTLECTL_OUTPUT": "xml"}, `THROTTLECTL_OUTPUT is invalid: output format "xml" is unknown`},
		{[]string{"members"}, map[string]string{"THROTTLECTL_TOKEN": "a\nb"}, "the token contains a line break"},
	} {
		got := runCLI(t, tc.env, tc.args...)
		if got.code != exitUsage {
			t.Errorf("throttlectl %q: exit code %d, want %d; stderr %q", tc.args, got.code, exitUsage, got.stderr)
		}
		if !strings.Contains(got.stderr, tc.want) {
			t.Errorf("throttlectl %q: stderr %q, want it to contain %q", tc.args, got.stderr, tc.want)
		}
		if !strings.HasPrefix(got.stderr, "throttlectl: ") {
			t.Errorf("throttlectl %q: stderr %q, want it to start with \"throttlectl: \"", tc.args, got.stderr)
		}
		if got.stdout != "" {
			t.Errorf("throttlectl %q: stdout %q, want nothing on a usage error", tc.args, got.stdout)
		}
	}
}

func TestUsageErrorHidesTokenFromEnvironment(t *testing.T) {
	got := runCLI(t, map[string]string{"THROTTLECTL_TOKEN": "s3cret\nline"}, "members")
	if strings.Contains(got.stderr, "s3cret") {
		t.Errorf("stderr %q contains the token", got.stderr)
	}
}

func TestHelpListsCommandsFlagsAndEnvironment(t *testing.T) {
	got := runCLI(t, nil, "--help")
	if got.code != exitOK {
		t.Fatalf("--help: exit code %d, stderr %q", got.code, got.stderr)
	}
	for _, want := range []string{
		"limits set <service> <user> <resource>=<limit>[/<burst>] ...",
		"limits get", "limits list", "limits delete", "cluster status", "cluster join", "cluster remove",
		"members", "monitor <service> <user>", "version",
		"-addr string", `(default "127.0.0.1:8081")`, "(default 5s)", "-output format", "(default table)",
		"THROTTLECTL_ADDR", "THROTTLECTL_TOKEN", "Exit codes: 0",
	} {
		if !strings.Contains(got.stdout, want) {
			t.Errorf("--help output lacks %q:\n%s", want, got.stdout)
		}
	}
}

func TestHelpOfCommandShowsUnitsAndFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"limits", "set", "--help"}, []string{"100MiB is 104857600", "Ki, Mi, Gi, Ti, Pi", "10 x the limit", "-addr string", "THROTTLECTL_"}},
		{[]string{"help", "limits", "set"}, []string{"100MiB is 104857600"}},
		{[]string{"monitor", "-h"}, []string{"-interval duration", "(default 1s)", "-count number", "-resource string", `"reported_nodes"`}},
		{[]string{"limits", "get", "--help"}, []string{"-consistent"}},
		{[]string{"cluster", "join", "--help"}, []string{"-has-state"}},
		{[]string{"limits", "--help"}, []string{"Subcommands:", "limits delete <service> <user>"}},
		{[]string{"help", "cluster"}, []string{"cluster remove <id>"}},
		{[]string{"help"}, []string{"Commands:"}},
	} {
		got := runCLI(t, nil, tc.args...)
		if got.code != exitOK {
			t.Errorf("throttlectl %q: exit code %d, stderr %q", tc.args, got.code, got.stderr)
			continue
		}
		for _, want := range tc.want {
			if !strings.Contains(got.stdout, want) {
				t.Errorf("throttlectl %q: output lacks %q:\n%s", tc.args, want, got.stdout)
			}
		}
	}
}

func TestVersionPrintsWithoutCentral(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"version"}, &stdout, &stderr)
	if code != exitOK || !strings.HasPrefix(stdout.String(), "throttlectl ") {
		t.Errorf("version: exit code %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}

func TestFormatCompactRoundsToThreeDigits(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want string
	}{
		{0, "0"},
		{12.345, "12.3"},
		{999, "999"},
		{1000, "1k"},
		{349525.3, "350k"},
		{999950, "1M"},
		{104857600, "105M"},
		{2e9, "2G"},
	} {
		if got := formatCompact(tc.v); got != tc.want {
			t.Errorf("formatCompact(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

func TestFormatAmountKeepsWholeNumbersExact(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want string
	}{
		{1048576, "1048576"},
		{9007199254740992, "9007199254740992"},
		{349525.33333, "349525.333"},
		{0.5, "0.5"},
	} {
		if got := formatAmount(tc.v); got != tc.want {
			t.Errorf("formatAmount(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}
