package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestDashboardRendersInChromium runs scripts/ui-check.sh: three centrals
// on free ports of 127.0.0.1, reports from two edge nodes, and the /ui page
// loaded in headless Chromium, whose rendered DOM must show the leader, the
// limit and non-empty charts.
func TestDashboardRendersInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three centrals and a browser for about 20 s")
	}
	if _, err := exec.LookPath("chromium"); err != nil {
		t.Skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatalf("finding the module root: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "ui-check.sh"))
	cmd.Dir = root
	// The script stops its cluster on SIGTERM; SIGKILL follows after the
	// grace period only if it hangs.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/ui-check.sh failed: %v\n%s", err, out)
	}
	t.Logf("scripts/ui-check.sh:\n%s", out)
}
