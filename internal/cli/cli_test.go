package cli

import (
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"
)

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
	if err := ApplyEnvironment(flags, "THROTTLE_", lookup); err != nil {
		t.Fatalf("ApplyEnvironment: %v", err)
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
	err := ApplyEnvironment(flags, "THROTTLE_", lookup)
	if err == nil || !strings.Contains(err.Error(), `THROTTLE_BOOTSTRAP="maybe"`) {
		t.Errorf("ApplyEnvironment error %v, want it to name THROTTLE_BOOTSTRAP and the value", err)
	}
}

func TestNewLoggerRejectsUnknownLevelAndFormat(t *testing.T) {
	if _, err := NewLogger("loud", "text", &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), `"loud"`) {
		t.Errorf("level loud: %v", err)
	}
	if _, err := NewLogger("info", "xml", &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), `"xml"`) {
		t.Errorf("format xml: %v", err)
	}
	var out bytes.Buffer
	logger, err := NewLogger("warn", "json", &out)
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("hidden")
	logger.Warn("shown")
	if strings.Contains(out.String(), "hidden") || !strings.Contains(out.String(), `"msg":"shown"`) {
		t.Errorf("json logger at warn wrote %q", out.String())
	}
}

func TestSplitList(t *testing.T) {
	got := SplitList(" a:1, ,b:2 ,")
	if len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Errorf("SplitList = %q", got)
	}
}

func TestDurationFlagErrorShowsUnits(t *testing.T) {
	flags := flag.NewFlagSet("t", flag.ContinueOnError)
	flags.SetOutput(&bytes.Buffer{})
	var timeout time.Duration
	DurationVar(flags, &timeout, "timeout", 2*time.Second, "")
	if timeout != 2*time.Second {
		t.Errorf("default %v, want 2s", timeout)
	}
	err := flags.Parse([]string{"--timeout", "5"})
	if err == nil || !strings.Contains(err.Error(), "such as 500ms") {
		t.Errorf("--timeout 5: error %v, want one that shows how to write a duration", err)
	}
	if err := flags.Parse([]string{"--timeout", "250ms"}); err != nil || timeout != 250*time.Millisecond {
		t.Errorf("--timeout 250ms: %v, value %v", err, timeout)
	}
	var help bytes.Buffer
	flags.SetOutput(&help)
	flags.PrintDefaults()
	if !strings.Contains(help.String(), "-timeout duration") {
		t.Errorf("help %q does not name the type duration", help.String())
	}
}

func TestEnvironmentSecretValueNotShown(t *testing.T) {
	flags := flag.NewFlagSet("t", flag.ContinueOnError)
	var timeout time.Duration
	DurationVar(flags, &timeout, "api-token", 0, "")
	lookup := func(name string) (string, bool) { return "s3cret", name == "THROTTLE_API_TOKEN" }
	err := ApplyEnvironment(flags, "THROTTLE_", lookup)
	if err == nil || !strings.Contains(err.Error(), "THROTTLE_API_TOKEN") {
		t.Fatalf("error %v, want it to name THROTTLE_API_TOKEN", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v shows the secret value", err)
	}
}

func TestHelpRequested(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"--help"}, true},
		{[]string{"--node-id", "x", "-h"}, true},
		{[]string{"--node-id", "x"}, false},
		{[]string{"--", "--help"}, false},
	} {
		if got := HelpRequested(tc.args); got != tc.want {
			t.Errorf("HelpRequested(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}
