package membership

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 10 * time.Second

func testLogger(t testing.TB, name string) *slog.Logger {
	t.Helper()
	if os.Getenv("THROTTLE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test_member", name)
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testConfig is a member on 127.0.0.1 with a kernel-chosen port and
// timings short enough that a failure is detected in well under a second.
func testConfig(t testing.TB, name string, role Role, join ...string) Config {
	t.Helper()
	cfg := Config{
		Name:                name,
		Role:                role,
		BindAddr:            "127.0.0.1:0",
		Join:                join,
		ProbeInterval:       50 * time.Millisecond,
		ProbeTimeout:        25 * time.Millisecond,
		SuspicionMult:       2,
		GossipInterval:      20 * time.Millisecond,
		PushPullInterval:    200 * time.Millisecond,
		DeadNodeReclaimTime: 100 * time.Millisecond,
		ReconnectInterval:   200 * time.Millisecond,
		Logger:              testLogger(t, name),
	}
	if role == RoleCentral {
		cfg.HTTPAddr = "127.0.0.1:18081"
		cfg.RaftAddr = "127.0.0.1:17001"
	}
	return cfg
}

// startPool starts a member and shuts it down when the test ends.
func startPool(t testing.TB, cfg Config) *Pool {
	t.Helper()
	p, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start(%s): %v", cfg.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = p.Close(ctx)
	})
	return p
}

// waitFor polls cond every 20 ms until it returns "" or waitTimeout
// passes, then fails with the last reason.
func waitFor(t testing.TB, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	reason := ""
	for time.Now().Before(deadline) {
		if reason = cond(); reason == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s: %s", waitTimeout, what, reason)
}

// member returns the entry for name in p's view.
func member(p *Pool, name string) (Member, bool) {
	for _, m := range p.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// waitForState waits until observer lists name in state at addr. An empty
// addr matches any address.
func waitForState(t testing.TB, observer *Pool, name string, state State, addr string) Member {
	t.Helper()
	var got Member
	waitFor(t, fmt.Sprintf("%s to see %s %s", observer.cfg.Name, name, state), func() string {
		m, ok := member(observer, name)
		if !ok {
			return "not a member"
		}
		if m.State != state {
			return fmt.Sprintf("state %s", m.State)
		}
		if addr != "" && m.Addr != addr {
			return fmt.Sprintf("address %s, want %s", m.Addr, addr)
		}
		got = m
		return ""
	})
	return got
}

// waitForMembers waits until every pool lists exactly the pools as alive
// members.
func waitForMembers(t testing.TB, pools ...*Pool) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d members to see each other", len(pools)), func() string {
		for _, observer := range pools {
			members := observer.Members()
			if len(members) != len(pools) {
				return fmt.Sprintf("%s sees %d members, want %d", observer.cfg.Name, len(members), len(pools))
			}
			for _, p := range pools {
				m, ok := member(observer, p.cfg.Name)
				if !ok || m.State != StateAlive {
					return fmt.Sprintf("%s sees %s as %q", observer.cfg.Name, p.cfg.Name, m.State)
				}
			}
		}
		return ""
	})
}
