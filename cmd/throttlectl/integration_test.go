package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/throttlecentral/throttle-central/internal/testutil"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/central"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// integrationTimeout bounds every wait for the real central.
const integrationTimeout = 20 * time.Second

func integrationLogger() *slog.Logger {
	if os.Getenv("THROTTLE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// centralOptions change the central that startCentral starts.
type centralOptions struct {
	nodeID string
	// bootstrap makes the central found a one-server cluster; without it
	// the central waits to be added with cluster join.
	bootstrap bool
	gossip    bool
}

// startCentral starts a central on 127.0.0.1 with ports the kernel
// chooses and, when it bootstraps, waits until it is ready.
func startCentral(t *testing.T, options centralOptions) *central.Central {
	t.Helper()
	config := central.Config{
		NodeID:    options.nodeID,
		HTTPAddr:  "127.0.0.1:0",
		RaftAddr:  "127.0.0.1:0",
		DataDir:   filepath.Join(t.TempDir(), options.nodeID),
		Bootstrap: options.bootstrap,
		Raft: raftnode.Config{
			HeartbeatTimeout:   200 * time.Millisecond,
			ElectionTimeout:    200 * time.Millisecond,
			LeaderLeaseTimeout: 100 * time.Millisecond,
			CommitTimeout:      5 * time.Millisecond,
		},
		Logger: integrationLogger(),
	}
	if options.gossip {
		config.GossipAddr = "127.0.0.1:0"
	}
	c, err := central.Start(config)
	if err != nil {
		t.Fatalf("start central %s: %v", options.nodeID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			t.Logf("close central %s: %v", options.nodeID, err)
		}
	})
	if options.bootstrap {
		pollUntil(t, "central "+options.nodeID+" to be ready", func() string {
			status, body := request(t, http.MethodGet, "http://"+c.HTTPAddr()+"/readyz", "")
			if status != http.StatusOK {
				return fmt.Sprintf("readyz %d %s", status, body)
			}
			return ""
		})
	}
	return c
}

func request(t *testing.T, method, url, body string) (int, string) {
	return testutil.Request(t, method, url, body)
}

// pollUntil polls cond until it returns "" or integrationTimeout passes.
func pollUntil(t *testing.T, what string, cond func() string) {
	testutil.PollUntil(t, integrationTimeout, what, cond)
}

// runAgainst runs throttlectl with --addr set to addrs.
func runAgainst(t *testing.T, addrs string, args ...string) result {
	t.Helper()
	return runCLI(t, map[string]string{"THROTTLECTL_ADDR": addrs}, args...)
}

func mustSucceed(t *testing.T, got result, args ...string) {
	t.Helper()
	if got.code != exitOK {
		t.Fatalf("throttlectl %q: exit code %d, stdout %q, stderr %q", args, got.code, got.stdout, got.stderr)
	}
}

func TestLimitsRoundTripAgainstCentral(t *testing.T) {
	c := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true})
	addr := c.HTTPAddr()

	set := runAgainst(t, addr, "limits", "set", "front", "alice", "traffic_up=1MiB", "database_read=200/400")
	mustSucceed(t, set, "limits set")
	for _, want := range []string{"SERVICE", "traffic_up", "1048576", "10485760 (default)", "database_read", "200", "400"} {
		if !strings.Contains(set.stdout, want) {
			t.Errorf("limits set output lacks %q:\n%s", want, set.stdout)
		}
	}

	get := runAgainst(t, addr, "limits", "get", "front", "alice", "--consistent", "-o", "json")
	mustSucceed(t, get, "limits get")
	var record limitRecord
	if err := json.Unmarshal([]byte(get.stdout), &record); err != nil {
		t.Fatalf("limits get -o json is not a record: %v\n%s", err, get.stdout)
	}
	if record.Service != "front" || record.Username != "alice" {
		t.Errorf("record names %q/%q, want front/alice", record.Service, record.Username)
	}
	if record.Limit["traffic_up"] != 1<<20 || record.Limit["database_read"] != 200 {
		t.Errorf("record limits %v, want traffic_up 1048576 and database_read 200", record.Limit)
	}
	if len(record.Burst) != 1 || record.Burst["database_read"] != 400 {
		t.Errorf("record bursts %v, want only database_read 400", record.Burst)
	}
	if record.TS == 0 {
		t.Error("record ts is 0, want the time of the change")
	}

	mustSucceed(t, runAgainst(t, addr, "limits", "set", "batch", "bob smith%", "traffic_down=5k"), "limits set batch")
	list := runAgainst(t, addr, "limits", "list")
	mustSucceed(t, list, "limits list")
	lines := strings.Split(strings.TrimSpace(list.stdout), "\n")
	if len(lines) != 4 {
		t.Errorf("limits list has %d lines, want a header and 3 rows:\n%s", len(lines), list.stdout)
	}
	if !strings.Contains(list.stdout, "bob smith%") || !strings.Contains(list.stdout, "5000") {
		t.Errorf("limits list lacks bob smith%% with 5000:\n%s", list.stdout)
	}

	listFront := runAgainst(t, addr, "limits", "list", "front", "-o", "json")
	mustSucceed(t, listFront, "limits list front")
	var records []limitRecord
	if err := json.Unmarshal([]byte(listFront.stdout), &records); err != nil {
		t.Fatalf("limits list -o json is not a list: %v\n%s", err, listFront.stdout)
	}
	if len(records) != 1 || records[0].Username != "alice" {
		t.Errorf("limits list front: %+v, want only alice", records)
	}

	deleted := runAgainst(t, addr, "limits", "delete", "batch", "bob smith%", "-o", "json")
	mustSucceed(t, deleted, "limits delete")
	var deleteAnswer map[string]any
	if err := json.Unmarshal([]byte(deleted.stdout), &deleteAnswer); err != nil || deleteAnswer["deleted"] != true {
		t.Errorf("limits delete -o json: %q (%v), want deleted true", deleted.stdout, err)
	}
	missing := runAgainst(t, addr, "limits", "get", "batch", "bob smith%", "--consistent")
	if missing.code != exitFailure || !strings.Contains(missing.stderr, `no limits for user "bob smith%" of service "batch"`) {
		t.Errorf("limits get after delete: exit code %d, stderr %q; want 1 and the central's 404 message", missing.code, missing.stderr)
	}
	again := runAgainst(t, addr, "limits", "delete", "batch", "bob smith%")
	if again.code != exitFailure || !strings.Contains(again.stderr, "404") {
		t.Errorf("second limits delete: exit code %d, stderr %q; want 1 with the 404", again.code, again.stderr)
	}
	empty := runAgainst(t, addr, "limits", "list", "batch")
	if empty.code != exitOK || !strings.Contains(empty.stdout, "No limits are set.") {
		t.Errorf("limits list batch: exit code %d, stdout %q; want the no-limits message", empty.code, empty.stdout)
	}
}

func TestClusterRemoveUnknownServerExitsOne(t *testing.T) {
	c := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true})
	got := runAgainst(t, c.HTTPAddr(), "cluster", "remove", "c9")
	if got.code != exitFailure || !strings.Contains(got.stderr, `server "c9" is not in the cluster`) {
		t.Errorf("cluster remove c9: exit code %d, stderr %q; want 1 with the central's message", got.code, got.stderr)
	}
}

func TestClusterStatusShowsLeader(t *testing.T) {
	c := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true})

	table := runAgainst(t, c.HTTPAddr(), "cluster", "status")
	mustSucceed(t, table, "cluster status")
	for _, want := range []string{"Central c1", "is Leader", "Leader: c1 (HTTP " + c.HTTPAddr() + ")", "RAFT ADDRESS", c.RaftAddr(), "Voter", "yes"} {
		if !strings.Contains(table.stdout, want) {
			t.Errorf("cluster status output lacks %q:\n%s", want, table.stdout)
		}
	}

	asJSON := runAgainst(t, c.HTTPAddr(), "-o", "json", "cluster", "status")
	mustSucceed(t, asJSON, "cluster status -o json")
	var status clusterStatus
	if err := json.Unmarshal([]byte(asJSON.stdout), &status); err != nil {
		t.Fatalf("cluster status -o json: %v\n%s", err, asJSON.stdout)
	}
	if status.Leader != "c1" || status.Term == 0 || len(status.Servers) != 1 || status.Servers[0].RaftAddr != c.RaftAddr() {
		t.Errorf("cluster status %+v, want leader c1, a term and one server at %s", status, c.RaftAddr())
	}
}

func TestClusterJoinAndRemove(t *testing.T) {
	c1 := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true})
	c2 := startCentral(t, centralOptions{nodeID: "c2"})

	joined := runAgainst(t, c1.HTTPAddr(), "cluster", "join", "c2", c2.RaftAddr(), c2.HTTPAddr())
	mustSucceed(t, joined, "cluster join")
	if !strings.Contains(joined.stdout, "Server c2") || !strings.Contains(joined.stdout, "the leader is c1") {
		t.Errorf("cluster join output %q, want c2 and the leader c1", joined.stdout)
	}
	pollUntil(t, "c2 to see itself in the cluster", func() string {
		got := runAgainst(t, c2.HTTPAddr(), "cluster", "status", "-o", "json")
		var status clusterStatus
		if got.code != exitOK || json.Unmarshal([]byte(got.stdout), &status) != nil {
			return fmt.Sprintf("exit code %d, stdout %q, stderr %q", got.code, got.stdout, got.stderr)
		}
		if len(status.Servers) != 2 || status.Leader != "c1" {
			return fmt.Sprintf("c2 sees leader %q and %d servers", status.Leader, len(status.Servers))
		}
		return ""
	})

	// The request goes to c2, a follower, which forwards it to the leader.
	removed := runAgainst(t, c2.HTTPAddr(), "cluster", "remove", "c2", "-o", "json")
	mustSucceed(t, removed, "cluster remove")
	if strings.TrimSpace(removed.stdout) != `{
  "removed": "c2"
}` {
		t.Errorf("cluster remove -o json output %q, want {\"removed\": \"c2\"}", removed.stdout)
	}
	status := runAgainst(t, c1.HTTPAddr(), "cluster", "status", "-o", "json")
	mustSucceed(t, status, "cluster status")
	if strings.Contains(status.stdout, `"c2"`) {
		t.Errorf("c1 still lists c2 after the removal:\n%s", status.stdout)
	}
}

func TestMembersWithGossipOff(t *testing.T) {
	c := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true})

	table := runAgainst(t, c.HTTPAddr(), "members")
	mustSucceed(t, table, "members")
	if !strings.Contains(table.stdout, "Gossip is off on central c1") || !strings.Contains(table.stdout, "--gossip-addr") {
		t.Errorf("members output %q, want the gossip-off message naming --gossip-addr", table.stdout)
	}

	asJSON := runAgainst(t, c.HTTPAddr(), "members", "-o", "json")
	mustSucceed(t, asJSON, "members -o json")
	var list memberList
	if err := json.Unmarshal([]byte(asJSON.stdout), &list); err != nil {
		t.Fatalf("members -o json: %v\n%s", err, asJSON.stdout)
	}
	if list.Gossip || list.Members == nil || len(list.Members) != 0 {
		t.Errorf("members -o json %q, want gossip false and an empty list", asJSON.stdout)
	}
}

func TestMembersWithGossipOn(t *testing.T) {
	c := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true, gossip: true})

	pollUntil(t, "c1 in its own member list", func() string {
		got := runAgainst(t, c.HTTPAddr(), "members")
		if got.code != exitOK || !strings.Contains(got.stdout, "NODE") {
			return fmt.Sprintf("exit code %d, stdout %q, stderr %q", got.code, got.stdout, got.stderr)
		}
		for _, want := range []string{"c1", "central", "alive", c.HTTPAddr(), c.RaftAddr()} {
			if !strings.Contains(got.stdout, want) {
				return fmt.Sprintf("output lacks %q:\n%s", want, got.stdout)
			}
		}
		return ""
	})
}

func TestFailoverPastClosedPort(t *testing.T) {
	c := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true})
	addrs := unusedAddress(t) + "," + c.HTTPAddr()

	mustSucceed(t, runAgainst(t, addrs, "limits", "set", "front", "alice", "traffic_up=100"), "limits set")
	get := runAgainst(t, addrs, "limits", "get", "front", "alice")
	mustSucceed(t, get, "limits get")
	if !strings.Contains(get.stdout, "traffic_up") {
		t.Errorf("limits get output %q, want traffic_up", get.stdout)
	}
	status := runAgainst(t, addrs, "cluster", "status")
	mustSucceed(t, status, "cluster status")
	if !strings.Contains(status.stdout, "http://"+c.HTTPAddr()) {
		t.Errorf("cluster status output %q, want it to name the responding central", status.stdout)
	}
}

// startReporter sends a report for one edge node about 50 ms into every
// second, as an edge node does, until the test ends. body is the report's
// consumption and rejection fields.
func startReporter(t *testing.T, base, node, body string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var done sync.WaitGroup
	done.Go(func() {
		client := &http.Client{Timeout: 500 * time.Millisecond}
		for {
			now := time.Now()
			next := now.Truncate(time.Second).Add(time.Second + 50*time.Millisecond)
			timer := time.NewTimer(next.Sub(now))
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			report := fmt.Sprintf(`{"node_id":%q,"slot_number":%d,%s}`, node, time.Now().Unix(), body)
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/report", strings.NewReader(report))
			if err != nil {
				return
			}
			if resp, err := client.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		done.Wait()
	})
}

func TestMonitorShowsConsumptionAgainstLimit(t *testing.T) {
	c := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true})
	addr := c.HTTPAddr()
	base := "http://" + addr
	mustSucceed(t, runAgainst(t, addr, "limits", "set", "front", "alice", "traffic_up=1M"), "limits set")
	startReporter(t, base, "edge-1",
		`"consumption":{"front":{"alice":{"traffic_up":300000}}},"rejection":{"front":{"alice":{"traffic_up":2}}}`)

	// Poll until a second is complete with the report and a quota, then
	// check that second's line.
	var line monitorLine
	pollUntil(t, "a monitor line with consumption and a quota", func() string {
		got := runAgainst(t, addr, "monitor", "front", "alice", "--count", "1", "-o", "json")
		if got.code != exitOK {
			return fmt.Sprintf("exit code %d, stderr %q", got.code, got.stderr)
		}
		line = monitorLine{}
		if err := json.Unmarshal([]byte(got.stdout), &line); err != nil {
			return fmt.Sprintf("not a JSON line: %v: %q", err, got.stdout)
		}
		r := line.Resources["traffic_up"]
		if r.Consumption == nil || *r.Consumption == 0 || r.Quota == nil {
			return "no complete second yet: " + got.stdout
		}
		return ""
	})
	r := line.Resources["traffic_up"]
	if line.Service != "front" || line.User != "alice" || line.ReportedNodes != 1 {
		t.Errorf("line %+v, want front/alice with 1 reported node", line)
	}
	if *r.Consumption != 300000 {
		t.Errorf("consumption %v, want 300000", *r.Consumption)
	}
	if r.Limit == nil || *r.Limit != 1e6 {
		t.Errorf("limit %v, want 1000000", r.Limit)
	}
	if r.Ratio == nil || *r.Ratio != 0.3 {
		t.Errorf("ratio %v, want 0.3", r.Ratio)
	}
	if r.Rejections == nil || *r.Rejections != 2 {
		t.Errorf("rejections %v, want 2", r.Rejections)
	}
	if _, ok := r.QuotaByNode["edge-1"]; !ok {
		t.Errorf("quota by node %v, want an entry for edge-1", r.QuotaByNode)
	}
	if r.ConsumptionByNode["edge-1"] != 300000 {
		t.Errorf("consumption by node %v, want edge-1 300000", r.ConsumptionByNode)
	}
	if _, err := time.Parse(time.RFC3339, line.Time); err != nil {
		t.Errorf("time %q is not RFC 3339: %v", line.Time, err)
	}

	// The table: a header, then one line per second for --count seconds.
	table := runAgainst(t, addr, "monitor", "front", "alice", "--count", "2", "--interval", "200ms", "--resource", "traffic_up")
	mustSucceed(t, table, "monitor")
	lines := strings.Split(strings.TrimRight(table.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("monitor --count 2 printed %d lines, want a header and 2:\n%s", len(lines), table.stdout)
	}
	for _, want := range []string{"SLOT", "CONSUMPTION", "LIMIT/S", "RATIO", "REJECTIONS", "QUOTA", "PER NODE"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header %q lacks %q", lines[0], want)
		}
	}
	for _, l := range lines[1:] {
		if !strings.Contains(l, "traffic_up") || !strings.Contains(l, "1000000") {
			t.Errorf("line %q, want traffic_up and the limit 1000000", l)
		}
	}
	first, second := strings.Fields(lines[1])[0], strings.Fields(lines[2])[0]
	var firstSlot, secondSlot int64
	fmt.Sscan(first, &firstSlot)
	fmt.Sscan(second, &secondSlot)
	if secondSlot != firstSlot+1 {
		t.Errorf("slots %s then %s, want consecutive seconds", first, second)
	}
}

func TestMonitorSecondWithoutData(t *testing.T) {
	c := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true})

	asJSON := runAgainst(t, c.HTTPAddr(), "monitor", "front", "nobody", "--count", "1", "-o", "json")
	mustSucceed(t, asJSON, "monitor -o json")
	var line monitorLine
	if err := json.Unmarshal([]byte(asJSON.stdout), &line); err != nil {
		t.Fatalf("monitor -o json: %v: %q", err, asJSON.stdout)
	}
	if line.ReportedNodes != 0 || len(line.Resources) != 0 {
		t.Errorf("line %+v, want no reported node and no resources", line)
	}

	table := runAgainst(t, c.HTTPAddr(), "monitor", "front", "nobody", "--count", "1")
	mustSucceed(t, table, "monitor")
	if !strings.Contains(table.stdout, "no edge node reported this second to the leader") {
		t.Errorf("monitor output %q, want the no-data message", table.stdout)
	}
}

func TestMonitorFailsWhenNoCentralAnswers(t *testing.T) {
	got := runAgainst(t, unusedAddress(t), "monitor", "front", "alice", "--count", "1")
	if got.code != exitFailure || !strings.Contains(got.stderr, "no central responded to GET /v1/monitor/") {
		t.Errorf("exit code %d, stderr %q; want 1 and the unreachable centrals", got.code, got.stderr)
	}
}

func TestLimitsExportImportAcrossClusters(t *testing.T) {
	source := startCentral(t, centralOptions{nodeID: "c1", bootstrap: true})
	target := startCentral(t, centralOptions{nodeID: "c9", bootstrap: true})
	mustSucceed(t, runAgainst(t, source.HTTPAddr(), "limits", "set", "front", "alice", "traffic_up=1MiB", "database_read=200/400"), "limits set alice")
	mustSucceed(t, runAgainst(t, source.HTTPAddr(), "limits", "set", "batch", "bob", "traffic_down=5k"), "limits set bob")

	export := runAgainst(t, source.HTTPAddr(), "limits", "list", "--consistent", "-o", "json")
	mustSucceed(t, export, "limits list -o json")
	file := filepath.Join(t.TempDir(), "limits.json")
	if err := os.WriteFile(file, []byte(export.stdout), 0o600); err != nil {
		t.Fatal(err)
	}

	imported := runAgainst(t, target.HTTPAddr(), "limits", "import", file)
	mustSucceed(t, imported, "limits import")
	if !strings.Contains(imported.stdout, "Set the limits of 2 users") {
		t.Errorf("limits import output %q, want the count of 2 users", imported.stdout)
	}
	got := runAgainst(t, target.HTTPAddr(), "limits", "get", "front", "alice", "--consistent", "-o", "json")
	mustSucceed(t, got, "limits get on the target")
	var record limitRecord
	if err := json.Unmarshal([]byte(got.stdout), &record); err != nil {
		t.Fatalf("limits get -o json: %v\n%s", err, got.stdout)
	}
	if record.Limit["traffic_up"] != 1<<20 || record.Limit["database_read"] != 200 || record.Burst["database_read"] != 400 {
		t.Errorf("imported record %+v, want traffic_up 1048576, database_read 200 with burst 400", record)
	}

	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`[{"service":"front","username":"a/b","limit":{"x":1}}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	rejected := runAgainst(t, target.HTTPAddr(), "limits", "import", bad)
	if rejected.code != exitUsage || !strings.Contains(rejected.stderr, "record 1") {
		t.Errorf("import of a bad record: exit code %d, stderr %q; want 2 naming record 1", rejected.code, rejected.stderr)
	}
}
