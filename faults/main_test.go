//go:build linux

package faults

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// longForm selects the long form of every test: more rounds, kills and
// transfers. scripts/faults/run.sh --long sets it.
var longForm = flag.Bool("long", false, "run the long forms of the fault tests (more rounds, kills and transfers)")

// logDir, when set, keeps every test's data directories and process logs
// under it instead of a temporary directory that is removed.
var logDir = flag.String("logdir", "", "keep each test's data directories and process logs in a new directory under this one")

// built holds the binaries that requireBinaries builds once per test run.
var built struct {
	once   sync.Once
	dir    string
	err    error
	output []byte
	// central and agent are the paths of throttle-central and
	// throttle-agent.
	central, agent string
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if built.dir != "" {
		if err := os.RemoveAll(built.dir); err != nil {
			fmt.Fprintf(os.Stderr, "faults: removing the build directory %s failed: %v\n", built.dir, err)
		}
	}
	os.Exit(code)
}

// requireBinaries skips the test in -short mode and otherwise returns the
// binaries, building them on the first call.
func requireBinaries(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping in -short mode: fault tests build the binaries and run three centrals")
	}
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "throttle-faults-bin-")
		if built.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", built.dir+string(os.PathSeparator),
			"./cmd/throttle-central", "./cmd/throttle-agent")
		cmd.Dir = ".."
		built.output, built.err = cmd.CombinedOutput()
		built.central = filepath.Join(built.dir, "throttle-central")
		built.agent = filepath.Join(built.dir, "throttle-agent")
	})
	if built.err != nil {
		t.Fatalf("building throttle-central and throttle-agent failed: %v\n%s", built.err, built.output)
	}
}

// childEnv returns this process's environment without the THROTTLE_
// variables, from which the centrals and agents read their flags, so the
// tests do not depend on the caller's shell.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "THROTTLE_") {
			env = append(env, kv)
		}
	}
	return env
}

// testDir returns the directory of a test's data and logs: a new
// directory under -logdir when it is set, else a temporary one.
func testDir(t *testing.T) string {
	t.Helper()
	if *logDir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(*logDir, 0o755); err != nil {
		t.Fatalf("creating -logdir %s: %v", *logDir, err)
	}
	dir, err := os.MkdirTemp(*logDir, t.Name()+"-")
	if err != nil {
		t.Fatalf("creating a directory under -logdir %s: %v", *logDir, err)
	}
	return dir
}

// pick returns short in the short form and long with -long.
func pick[T any](short, long T) T {
	if *longForm {
		return long
	}
	return short
}
