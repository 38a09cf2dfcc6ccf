package demo

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildBinaries builds throttle-central and throttle-agent into a
// temporary directory.
func buildBinaries(t *testing.T) (central, agent string) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(os.PathSeparator), "./cmd/throttle-central", "./cmd/throttle-agent")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build failed: %v\n%s", err, out)
	}
	return filepath.Join(dir, "throttle-central"), filepath.Join(dir, "throttle-agent")
}

// testWriter passes the demo's lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestDemoHoldsLimitThroughKills(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three centrals and four agents for about 40 s")
	}
	central, agent := buildBinaries(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	result, err := Run(ctx, Config{CentralBinary: central, AgentBinary: agent, Dir: dir, Scenario: Short, Out: testWriter{t}})
	if err != nil {
		printLogs(t, dir)
		t.Fatalf("demo run failed: %v", err)
	}

	summary := result.Summarize()
	t.Log(summary.ResultLine())
	for _, s := range result.Seconds {
		if s.Offset < result.Warmup {
			continue
		}
		if ratio := s.Admitted / result.Limit; ratio < 0.8 || ratio > 1.2 {
			t.Errorf("second %d: admitted %.3f x the limit, outside 0.8-1.2", s.Offset, ratio)
		}
	}
	if result.AgentKilledAt < 0 {
		t.Error("no agent was killed")
	} else if moved := summary.AgentShareMovedSecs; moved < 0 || moved > 5 {
		t.Errorf("the killed agent's share moved to the survivors after %d s, want within 5 s", moved)
	}
	if result.LeaderKilledAt < 0 {
		t.Error("no leader was killed")
	} else if highest := result.MaxAround(result.LeaderKilledAt, 10); highest > 1.2 {
		t.Errorf("after the leader kill a second admitted %.3f x the limit, above 1.2", highest)
	}
	if t.Failed() {
		printLogs(t, dir)
	}
}

// printLogs prints the tail of every process log in dir.
func printLogs(t *testing.T, dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, path := range logs {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		t.Logf("--- %s (last %d lines)", filepath.Base(path), min(len(lines), 30))
		for _, line := range lines[max(0, len(lines)-30):] {
			t.Log(line)
		}
	}
}
