package cli

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
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

func TestConfigFileBelowEnvironmentAndFlags(t *testing.T) {
	path := t.TempDir() + "/central.conf"
	config := "# a comment\n\nnode-id = from-file\ndata-dir = /var/lib/t\nlog-level = debug\ntimeout = 3s\n"
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := flag.NewFlagSet("t", flag.ContinueOnError)
	nodeID := flags.String("node-id", "", "")
	dataDir := flags.String("data-dir", "", "")
	level := flags.String("log-level", "info", "")
	var timeout time.Duration
	DurationVar(flags, &timeout, "timeout", time.Second, "")
	if err := flags.Parse([]string{"--node-id", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	given := Given(flags)
	lookup := func(name string) (string, bool) { return "warn", name == "T_LOG_LEVEL" }
	if err := ApplyEnvironment(flags, "T_", lookup); err != nil {
		t.Fatal(err)
	}
	given["log-level"] = true // set by the environment
	if err := ApplyConfigFile(flags, path, given); err != nil {
		t.Fatalf("ApplyConfigFile: %v", err)
	}
	if *nodeID != "from-flag" {
		t.Errorf("node-id %q: the command line must win over the file", *nodeID)
	}
	if *level != "warn" {
		t.Errorf("log-level %q: the environment must win over the file", *level)
	}
	if *dataDir != "/var/lib/t" || timeout != 3*time.Second {
		t.Errorf("from the file: data-dir %q, timeout %v", *dataDir, timeout)
	}
}

func TestConfigFileErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ config, want string }{
		{"node-id\n", `line 1: "node-id" is not name = value`},
		{"# c\nnodeid = x\n", `line 2: unknown setting "nodeid"`},
		{"timeout = 5\n", `line 1: timeout = "5" is invalid`},
		{"timeout = 1s\ntimeout = 2s\n", `line 2: "timeout" is already set on line 1`},
		{"api-token = \n", ""},
	} {
		path := t.TempDir() + "/c.conf"
		if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
			t.Fatal(err)
		}
		flags := flag.NewFlagSet("t", flag.ContinueOnError)
		flags.String("node-id", "", "")
		flags.String("api-token", "", "")
		var timeout time.Duration
		DurationVar(flags, &timeout, "timeout", time.Second, "")
		err := ApplyConfigFile(flags, path, nil)
		if tc.want == "" {
			if err != nil {
				t.Errorf("config %q: %v, want no error", tc.config, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config %q: error %v, want one containing %q", tc.config, err, tc.want)
		}
	}
}

func TestApplySettingsReadsConfigFromEnvironment(t *testing.T) {
	path := t.TempDir() + "/agent.conf"
	if err := os.WriteFile(path, []byte("node-id = from-file\nlog-level = debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := flag.NewFlagSet("t", flag.ContinueOnError)
	flags.String(ConfigFlag, "", "")
	nodeID := flags.String("node-id", "", "")
	level := flags.String("log-level", "info", "")
	if err := flags.Parse(nil); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"T_CONFIG": path, "T_LOG_LEVEL": "warn"}
	lookup := func(name string) (string, bool) { v, ok := env[name]; return v, ok }
	if err := ApplySettings(flags, "T_", lookup); err != nil {
		t.Fatalf("ApplySettings: %v", err)
	}
	if *nodeID != "from-file" || *level != "warn" {
		t.Errorf("node-id %q (want from-file), log-level %q (want the environment's warn)", *nodeID, *level)
	}
}

func TestParseHelpAndArguments(t *testing.T) {
	command := Command{Usage: "Usage: tool [flags]", EnvPrefix: "T_", EnvExample: "T_NAME"}
	noEnvironment := func(string) (string, bool) { return "", false }

	var help bytes.Buffer
	flags := flag.NewFlagSet("tool", flag.ContinueOnError)
	flags.String("name", "", "")
	err := Parse(flags, []string{"--help"}, command, &help, noEnvironment)
	if err != flag.ErrHelp {
		t.Errorf("--help: error %v, want flag.ErrHelp", err)
	}
	if !strings.Contains(help.String(), "Usage: tool [flags]") || !strings.Contains(help.String(), "T_NAME") {
		t.Errorf("help %q lacks the usage line or the environment example", help.String())
	}

	help.Reset()
	flags = flag.NewFlagSet("tool", flag.ContinueOnError)
	flags.String("name", "", "")
	err = Parse(flags, []string{"--name", "x", "extra"}, command, &help, noEnvironment)
	if err == nil || !strings.Contains(err.Error(), `unexpected argument "extra"`) {
		t.Errorf("positional argument: error %v, want one naming it", err)
	}
	if help.Len() != 0 {
		t.Errorf("help written without a request: %q", help.String())
	}
}

func TestInvalidNumbersAndBooleansSayWhatIsExpected(t *testing.T) {
	command := Command{Usage: "Usage: tool [flags]", EnvPrefix: "T_", EnvExample: "T_NAME"}
	newFlags := func() *flag.FlagSet {
		flags := flag.NewFlagSet("tool", flag.ContinueOnError)
		flags.Int("slots", 60, "")
		flags.Uint("count", 1, "")
		flags.Float64("ratio", 1, "")
		flags.Bool("verbose", false, "")
		return flags
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{args: []string{"--slots", "5x"}, want: `invalid value "5x" for flag --slots: must be a whole number, such as 10`},
		{args: []string{"--slots=99999999999999999999"}, want: `invalid value "99999999999999999999" for flag --slots: must be a whole number from -9223372036854775808 to 9223372036854775807`},
		{args: []string{"--count=-1"}, want: `invalid value "-1" for flag --count: must be a whole number of 0 or more, such as 10`},
		{args: []string{"-ratio", "half"}, want: `invalid value "half" for flag --ratio: must be a number, such as 2.5 or 1e6`},
		{args: []string{"--verbose=maybe"}, want: `invalid value "maybe" for flag --verbose: must be true or false`},
		{env: map[string]string{"T_SLOTS": "ten"}, want: `environment variable T_SLOTS="ten" is invalid: must be a whole number, such as 10`},
		{env: map[string]string{"T_VERBOSE": "yes"}, want: `environment variable T_VERBOSE="yes" is invalid: must be true or false`},
	} {
		lookup := func(name string) (string, bool) { v, ok := tc.env[name]; return v, ok }
		err := Parse(newFlags(), tc.args, command, io.Discard, lookup)
		if err == nil || err.Error() != tc.want {
			t.Errorf("args %q, environment %v: error %v, want %s", tc.args, tc.env, err, tc.want)
		}
	}

	path := filepath.Join(t.TempDir(), "settings")
	if err := os.WriteFile(path, []byte("ratio = lots\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Parse(newFlags(), []string{"--config", path}, command, io.Discard, func(string) (string, bool) { return "", false })
	if want := `line 1: ratio = "lots" is invalid: must be a number, such as 2.5 or 1e6`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("config file: error %v, want one containing %s", err, want)
	}
}

func TestParseToolErrorsAndHelp(t *testing.T) {
	newFlags := func() *flag.FlagSet {
		flags := flag.NewFlagSet("tool", flag.ContinueOnError)
		flags.Int("nodes", 1, "simulated nodes")
		flags.String("o", "table", "output format")
		return flags
	}

	var help bytes.Buffer
	err := ParseTool(newFlags(), []string{"--nodes", "many"}, &help)
	want := `invalid value "many" for flag --nodes: must be a whole number, such as 10; run tool --help for the flags`
	if err == nil || err.Error() != want {
		t.Errorf("invalid value: error %v, want %s", err, want)
	}
	if help.Len() != 0 {
		t.Errorf("help written without a request: %q", help.String())
	}

	if err := ParseTool(newFlags(), []string{"-o"}, &help); err == nil || !strings.Contains(err.Error(), "flag needs an argument: -o") {
		t.Errorf("missing value of a one-letter flag: error %v", err)
	}

	err = ParseTool(newFlags(), []string{"--help"}, &help)
	if err != flag.ErrHelp || !strings.Contains(help.String(), "simulated nodes") {
		t.Errorf("--help: error %v and help %q, want flag.ErrHelp and the flag list", err, help.String())
	}
}

func TestOneLetterFlagKeepsOneDash(t *testing.T) {
	flags := flag.NewFlagSet("tool", flag.ContinueOnError)
	flags.Int("n", 1, "")
	err := ParseTool(flags, []string{"-n", "x"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `invalid value "x" for flag -n:`) {
		t.Errorf("error %v, want one naming flag -n", err)
	}
}
