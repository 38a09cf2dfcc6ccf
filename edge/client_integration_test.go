package edge_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/throttlecentral/throttle-central/internal/testutil"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/central"
	"github.com/throttlecentral/throttle-central/edge"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// integrationTimeout bounds every wait against the real central.
const integrationTimeout = 20 * time.Second

func integrationLogger() *slog.Logger {
	if os.Getenv("THROTTLE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startCentral starts a one-server cluster on 127.0.0.1 with kernel-chosen
// ports and waits until it is ready.
func startCentral(t *testing.T) string {
	t.Helper()
	c, err := central.Start(central.Config{
		NodeID:    "c1",
		HTTPAddr:  "127.0.0.1:0",
		RaftAddr:  "127.0.0.1:0",
		DataDir:   filepath.Join(t.TempDir(), "c1"),
		Bootstrap: true,
		Raft: raftnode.Config{
			HeartbeatTimeout:   200 * time.Millisecond,
			ElectionTimeout:    200 * time.Millisecond,
			LeaderLeaseTimeout: 100 * time.Millisecond,
			CommitTimeout:      5 * time.Millisecond,
		},
		Logger: integrationLogger(),
	})
	if err != nil {
		t.Fatalf("start central: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Logf("close central: %v", err)
		}
	})

	base := "http://" + c.HTTPAddr()
	pollUntil(t, "the central to be ready", func() string {
		status, body := request(t, http.MethodGet, base+"/readyz", "")
		if status != http.StatusOK {
			return fmt.Sprintf("readyz %d %s", status, body)
		}
		return ""
	})
	return base
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

func request(t *testing.T, method, url, body string) (int, string) {
	return testutil.Request(t, method, url, body)
}

// pollUntil polls cond until it returns "" or integrationTimeout passes.
func pollUntil(t *testing.T, what string, cond func() string) {
	testutil.PollUntil(t, integrationTimeout, what, cond)
}

func TestClientAgainstRealCentral(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for several seconds of real slots")
	}
	base := startCentral(t)
	status, body := request(t, http.MethodPut, base+"/v1/limits/front/alice", `{"limit":{"traffic_up":1000},"burst":{"traffic_up":1000}}`)
	if status != http.StatusOK {
		t.Fatalf("PUT limit: %d %s", status, body)
	}

	// The first central is down, so every report fails over to the real one.
	client, err := edge.NewClient(edge.ClientOptions{
		NodeID:   "edge-1",
		Centrals: []string{"http://" + unusedAddress(t), base},
		Logger:   integrationLogger(),
	})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	if err := client.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}

	// Serve alice as fast as the client allows until the central's quota,
	// not the fallback, rejects her.
	pollUntil(t, "a rejection by the central's quota", func() string {
		for range 10 {
			err := client.Throttle("front", "alice")
			var rejected *edge.RejectedError
			if errors.As(err, &rejected) && rejected.Decision.Source == edge.SourceCentral {
				return ""
			}
			if err == nil {
				client.Consume("front", "alice", map[string]float64{"traffic_up": 100})
			}
		}
		stats := client.Stats()
		return fmt.Sprintf("stats %+v", stats)
	})

	stats := client.Stats()
	if stats.ReportsSent == 0 {
		t.Errorf("Stats.ReportsSent = 0, want reports answered by the central")
	}
	if stats.LastCentral != base {
		t.Errorf("Stats.LastCentral = %q, want %q", stats.LastCentral, base)
	}
	if stats.Failovers == 0 {
		t.Errorf("Stats.Failovers = 0, want at least one move away from the central that is down")
	}
	if stats.QuotaSlots == 0 {
		t.Errorf("Stats.QuotaSlots = 0, want cached quotas")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	status, body = request(t, http.MethodGet, base+"/v1/monitor/reported", "")
	if status != http.StatusOK || !strings.Contains(body, "edge-1") {
		t.Errorf("monitor of reported nodes: %d %s, want it to name edge-1", status, body)
	}
}
