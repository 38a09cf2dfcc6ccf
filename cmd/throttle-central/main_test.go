package main

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"
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
		{[]string{"--node-id", "c1", "--data-dir", "d", "--bootstrap", "--join", "a:1"}, "--bootstrap and --join exclude each other"},
		{[]string{"--node-id", "c1", "--data-dir", "d", "--raft-heartbeat-timeout", "1s", "--raft-election-timeout", "500ms"}, "--raft-election-timeout 500ms is below"},
	} {
		_, err := parseFlags(tc.args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%v) error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

func TestEnvironmentFillsUnsetFlags(t *testing.T) {
	env := map[string]string{
		"THROTTLE_NODE_ID":   "from-env",
		"THROTTLE_DATA_DIR":  "/tmp/x",
		"THROTTLE_BOOTSTRAP": "true",
		"THROTTLE_JOIN":      "a:1,b:2",
	}
	flags := flag.NewFlagSet("t", flag.ContinueOnError)
	nodeID := flags.String("node-id", "", "")
	dataDir := flags.String("data-dir", "", "")
	bootstrap := flags.Bool("bootstrap", false, "")
	join := flags.String("join", "", "")
	if err := flags.Parse([]string{"--node-id", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	lookup := func(name string) (string, bool) { v, ok := env[name]; return v, ok }
	if err := applyEnvironment(flags, lookup); err != nil {
		t.Fatalf("applyEnvironment: %v", err)
	}
	if *nodeID != "from-flag" {
		t.Errorf("node-id %q: a flag on the command line must win over THROTTLE_NODE_ID", *nodeID)
	}
	if *dataDir != "/tmp/x" || !*bootstrap || *join != "a:1,b:2" {
		t.Errorf("from the environment: data-dir %q, bootstrap %v, join %q", *dataDir, *bootstrap, *join)
	}
}

func TestEnvironmentInvalidValueNamesVariable(t *testing.T) {
	flags := flag.NewFlagSet("t", flag.ContinueOnError)
	flags.Bool("bootstrap", false, "")
	lookup := func(name string) (string, bool) { return "maybe", name == "THROTTLE_BOOTSTRAP" }
	err := applyEnvironment(flags, lookup)
	if err == nil || !strings.Contains(err.Error(), `THROTTLE_BOOTSTRAP="maybe"`) {
		t.Errorf("applyEnvironment error %v, want it to name THROTTLE_BOOTSTRAP and the value", err)
	}
}

func TestNewLoggerRejectsUnknownLevelAndFormat(t *testing.T) {
	if _, err := newLogger("loud", "text", &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), `"loud"`) {
		t.Errorf("level loud: %v", err)
	}
	if _, err := newLogger("info", "xml", &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), `"xml"`) {
		t.Errorf("format xml: %v", err)
	}
	var out bytes.Buffer
	logger, err := newLogger("warn", "json", &out)
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("hidden")
	logger.Warn("shown")
	if strings.Contains(out.String(), "hidden") || !strings.Contains(out.String(), `"msg":"shown"`) {
		t.Errorf("json logger at warn wrote %q", out.String())
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
	if code := run([]string{"--help"}, &bytes.Buffer{}); code != 0 {
		t.Errorf("run --help exit code %d, want 0", code)
	}
	if code := run([]string{"--node-id", "x"}, &bytes.Buffer{}); code != 2 {
		t.Errorf("run without --data-dir exit code %d, want 2", code)
	}
}

func TestSplitList(t *testing.T) {
	got := splitList(" a:1, ,b:2 ,")
	if len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Errorf("splitList = %q", got)
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
