//go:build unix

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	nodeCount = 3

	// defaultHTTPBase, defaultRaftBase and defaultGossipBase are the first ports that
	// scripts/cluster.sh uses without overrides, as `make run` does. The
	// test never uses them, so it cannot collide with a developer's
	// cluster.
	defaultHTTPBase   = 8081
	defaultRaftBase   = 7001
	defaultGossipBase = 7946

	// maxPortAttempts bounds the search for free port ranges.
	maxPortAttempts = 20

	pollInterval   = 50 * time.Millisecond
	requestTimeout = 3 * time.Second

	// replicationTimeout bounds the wait for a committed write to show up
	// in a node's local state.
	replicationTimeout = 10 * time.Second
	// failoverTimeout bounds the wait for a new leader and for the first
	// PUT it accepts. The centrals run with the heartbeat and election
	// timeouts of hashicorp/raft v1.7.2 (1 s each), so an election
	// normally ends within a few seconds.
	failoverTimeout = 20 * time.Second

	// logTailLines is how many lines of each central's log a failing test
	// prints.
	logTailLines = 40
)

// TestClusterSurvivesLeaderKill starts three centrals, checks that a limit
// written on one node replicates to the others, SIGKILLs the leader and
// checks that the survivors elect a new leader, accept writes and keep
// every acknowledged limit.
func TestClusterSurvivesLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping in -short mode: this test builds throttle-central and runs a three-central cluster")
	}
	testStart := time.Now()
	c := startCluster(t)

	// The status command reports all three centrals as running.
	c.checkStatus()

	// A write on node 2 reaches nodes 1 and 3.
	const service = "front"
	const aliceLimit, bobLimit = 1048576, 2097152
	c.putLimitUntilAccepted([]int{2}, service, "alice", aliceLimit, replicationTimeout)
	for _, n := range []int{1, 3} {
		c.waitForLimit(n, service, "alice", aliceLimit)
	}
	c.checkConsistentLimit(3, service, "alice", aliceLimit)

	// Kill the leader without warning.
	before := c.clusterStatus(1)
	if before.Leader == "" {
		t.Fatalf("node 1 reports no leader before the kill: %+v", before)
	}
	killed := c.nodeIndex(before.Leader)
	survivors := slices.DeleteFunc([]int{1, 2, 3}, func(n int) bool { return n == killed })
	c.kill(killed)
	killedAt := time.Now()

	// The survivors accept a write. The time until then is the outage
	// that a client observes.
	acceptedBy, attempts := c.putLimitUntilAccepted(survivors, service, "bob", bobLimit, failoverTimeout)
	outage := time.Since(killedAt)
	t.Logf("SIGKILLed leader %s (term %d); node %d accepted the first PUT after %v and %d attempts",
		before.Leader, before.Term, acceptedBy, outage, attempts)
	t.Logf("e2e: leader kill to next accepted PUT: %v", outage)
	fmt.Printf("e2e: leader kill to next accepted PUT: %v\n", outage)

	// A survivor leads in a newer term, and both survivors name it.
	newLeader := c.waitForNewLeader(survivors, before.Term)
	c.waitForAgreedLeader(survivors, newLeader)

	// No acknowledged write was lost.
	for _, n := range survivors {
		c.waitForLimit(n, service, "alice", aliceLimit)
		c.waitForLimit(n, service, "bob", bobLimit)
	}
	t.Logf("test body took %v (the cluster shuts down in cleanup)", time.Since(testStart))
}

// cluster is three centrals that scripts/cluster.sh runs for one test.
type cluster struct {
	t        *testing.T
	root     string // module root
	bin      string // the throttle-central binary built for this test
	dataDir  string // DATA_DIR of the script: PID files, logs, Raft data
	httpBase int
	env      []string // environment of every scripts/cluster.sh call
	client   *http.Client
}

// startCluster builds the binary, picks free ports, runs
// `scripts/cluster.sh up` and registers the cleanup that stops the
// centrals and, when the test failed, prints each central's log tail.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatalf("finding the module root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "scripts", "cluster.sh")); err != nil {
		t.Fatalf("scripts/cluster.sh not found from the test directory: %v", err)
	}

	c := &cluster{
		t:       t,
		root:    root,
		bin:     buildBinary(t, root),
		dataDir: t.TempDir(),
		client:  &http.Client{Timeout: requestTimeout},
	}
	httpBase, raftBase, gossipBase := freePortBases(t)
	c.httpBase = httpBase
	c.env = scriptEnv(map[string]string{
		"HOST":             "127.0.0.1",
		"HTTP_PORT_BASE":   strconv.Itoa(httpBase),
		"RAFT_PORT_BASE":   strconv.Itoa(raftBase),
		"GOSSIP_PORT_BASE": strconv.Itoa(gossipBase),
		"DATA_DIR":         c.dataDir,
		"BIN":              c.bin,
		"WAIT_SECONDS":     "30",
	})
	t.Logf("HTTP ports %d-%d, Raft ports %d-%d, gossip ports %d-%d, data in %s", httpBase, httpBase+nodeCount-1,
		raftBase, raftBase+nodeCount-1, gossipBase, gossipBase+nodeCount-1, c.dataDir)

	// Cleanups run last-registered first, so the logs are printed after
	// the shutdown and include it. t.TempDir removes dataDir after both.
	t.Cleanup(c.printLogsOnFailure)
	t.Cleanup(c.stop)

	start := time.Now()
	out, err := c.runScript(45*time.Second, "up")
	if err != nil {
		t.Fatalf("scripts/cluster.sh up failed: %v\n%s", err, out)
	}
	t.Logf("scripts/cluster.sh up took %v:\n%s", time.Since(start), out)
	return c
}

// buildBinary builds cmd/throttle-central into a temporary directory.
func buildBinary(t *testing.T, root string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "throttle-central")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/throttle-central")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/throttle-central failed: %v\n%s", err, out)
	}
	t.Logf("built %s in %v", bin, time.Since(start))
	return bin
}

// scriptEnv returns this process's environment with overrides set. It
// drops every THROTTLE_* variable, because the centrals read their flags
// from those and the test must not depend on the caller's shell.
func scriptEnv(overrides map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if _, ok := overrides[name]; ok || strings.HasPrefix(name, "THROTTLE_") {
			continue
		}
		env = append(env, kv)
	}
	for name, value := range overrides {
		env = append(env, name+"="+value)
	}
	return env
}

// freePortBases returns a port base for HTTP, one for Raft and one for
// gossip such that base, base+1 and base+2 of each were free on 127.0.0.1
// when it checked, the gossip ports for UDP too. The kernel picks each
// base, so the ranges avoid the fixed defaults in practice; a range that
// touches them is rejected all the same.
//
// NOTE: the ports are released before the centrals bind them, so another
// process can take one in between. scripts/cluster.sh up then fails, and
// the central's log contains "address already in use".
func freePortBases(t *testing.T) (httpBase, raftBase, gossipBase int) {
	t.Helper()
	for range maxPortAttempts {
		var held []io.Closer
		httpBase, httpOK := reservePortRange(&held, false)
		raftBase, raftOK := 0, false
		if httpOK {
			raftBase, raftOK = reservePortRange(&held, false)
		}
		gossipBase, gossipOK := 0, false
		if raftOK {
			gossipBase, gossipOK = reservePortRange(&held, true)
		}
		for _, l := range held {
			l.Close()
		}
		if gossipOK {
			return httpBase, raftBase, gossipBase
		}
	}
	t.Fatalf("found no three free ranges of %d consecutive ports on 127.0.0.1 in %d attempts", nodeCount, maxPortAttempts)
	return 0, 0, 0
}

// reservePortRange binds a kernel-chosen port and the next nodeCount-1
// ports on 127.0.0.1, for UDP as well when udp is true, and appends every
// socket to held, so the caller can reserve another range that cannot
// overlap. It returns false when a port of the range is taken or belongs
// to a default range.
func reservePortRange(held *[]io.Closer, udp bool) (base int, ok bool) {
	first, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, false
	}
	*held = append(*held, first)
	base = first.Addr().(*net.TCPAddr).Port
	for port := base; port < base+nodeCount; port++ {
		if port > 65535 || inDefaultRange(port) {
			return 0, false
		}
		address := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if port != base {
			l, err := net.Listen("tcp", address)
			if err != nil {
				return 0, false
			}
			*held = append(*held, l)
		}
		if udp {
			conn, err := net.ListenPacket("udp", address)
			if err != nil {
				return 0, false
			}
			*held = append(*held, conn)
		}
	}
	return base, true
}

func inDefaultRange(port int) bool {
	return (port >= defaultHTTPBase && port < defaultHTTPBase+nodeCount) ||
		(port >= defaultRaftBase && port < defaultRaftBase+nodeCount) ||
		(port >= defaultGossipBase && port < defaultGossipBase+nodeCount)
}

// runScript runs scripts/cluster.sh with the test's environment and
// returns its combined output.
func (c *cluster) runScript(timeout time.Duration, command string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.root, "scripts", "cluster.sh"), command)
	cmd.Dir = c.root
	cmd.Env = c.env
	// The script's sleep can keep the output pipe open after a timeout
	// kills bash; WaitDelay stops Wait from blocking on it.
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// stop runs `scripts/cluster.sh down`. It then checks that the script
// removed every PID file, and SIGKILLs any central that is still running,
// choosing only PIDs from those files.
func (c *cluster) stop() {
	t := c.t
	start := time.Now()
	out, err := c.runScript(60*time.Second, "down")
	if err != nil {
		t.Errorf("scripts/cluster.sh down failed: %v\n%s", err, out)
	} else {
		t.Logf("scripts/cluster.sh down took %v:\n%s", time.Since(start), out)
	}

	for n := 1; n <= nodeCount; n++ {
		pid, err := c.pid(n)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Errorf("after scripts/cluster.sh down: %v", err)
			continue
		}
		t.Errorf("scripts/cluster.sh down left the PID file %s behind", c.pidFile(n))
		if c.isCentral(pid) {
			t.Errorf("c%d (PID %d) still runs after scripts/cluster.sh down; sending SIGKILL", n, pid)
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Errorf("SIGKILL to c%d (PID %d) failed: %v", n, pid, err)
			}
		}
	}
}

// printLogsOnFailure prints the last lines of each central's log when the
// test failed.
func (c *cluster) printLogsOnFailure() {
	if !c.t.Failed() {
		return
	}
	for n := 1; n <= nodeCount; n++ {
		path := filepath.Join(c.dataDir, fmt.Sprintf("c%d.log", n))
		data, err := os.ReadFile(path)
		if err != nil {
			c.t.Logf("reading the log of c%d failed: %v", n, err)
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		lines = lines[max(0, len(lines)-logTailLines):]
		c.t.Logf("last %d lines of %s:\n%s", len(lines), path, strings.Join(lines, "\n"))
	}
}

// checkStatus runs `scripts/cluster.sh status` and checks that it exits 0
// and reports each central as running with the PID from its PID file.
func (c *cluster) checkStatus() {
	t := c.t
	t.Helper()
	out, err := c.runScript(15*time.Second, "status")
	if err != nil {
		t.Fatalf("scripts/cluster.sh status failed: %v\n%s", err, out)
	}
	for n := 1; n <= nodeCount; n++ {
		pid, err := c.pid(n)
		if err != nil {
			t.Fatalf("after scripts/cluster.sh up: %v", err)
		}
		want := fmt.Sprintf("c%d running (PID %d)", n, pid)
		if !strings.Contains(out, want) {
			t.Errorf("scripts/cluster.sh status output lacks %q:\n%s", want, out)
		}
	}
}

func (c *cluster) pidFile(n int) string {
	return filepath.Join(c.dataDir, fmt.Sprintf("c%d.pid", n))
}

// pid reads the PID file of central n. The error wraps os.ErrNotExist when
// the file is missing.
func (c *cluster) pid(n int) (int, error) {
	data, err := os.ReadFile(c.pidFile(n))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("PID file %s contains %q, not a PID", c.pidFile(n), data)
	}
	return pid, nil
}

// isCentral reports whether pid is a live process running this test's
// binary, so the test never signals a process that reused the PID. A
// zombie has an empty command line and counts as not running.
func (c *cluster) isCentral(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		if _, statErr := os.Stat("/proc/self"); statErr == nil {
			return false // procfs is mounted and the process is gone
		}
		// Without procfs (macOS, BSD) ask ps for the command line.
		out, err := exec.Command("ps", "-o", "args=", "-p", strconv.Itoa(pid)).Output()
		if err != nil {
			return false
		}
		fields := strings.Fields(string(out))
		return len(fields) > 0 && fields[0] == c.bin
	}
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	return argv0 == c.bin
}

// kill SIGKILLs central n by the PID in its PID file.
func (c *cluster) kill(n int) {
	t := c.t
	t.Helper()
	pid, err := c.pid(n)
	if err != nil {
		t.Fatalf("killing c%d: %v", n, err)
	}
	if !c.isCentral(pid) {
		t.Fatalf("c%d: PID %d from %s is not a running %s", n, pid, c.pidFile(n), c.bin)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL to c%d (PID %d) failed: %v", n, pid, err)
	}
}

// nodeIndex returns n for the server ID "cn" that scripts/cluster.sh
// assigns.
func (c *cluster) nodeIndex(id string) int {
	for n := 1; n <= nodeCount; n++ {
		if id == fmt.Sprintf("c%d", n) {
			return n
		}
	}
	c.t.Fatalf("server ID %q is none of c1 to c%d", id, nodeCount)
	return 0
}

func (c *cluster) url(n int, path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", c.httpBase+n-1, path)
}

// clusterView is the part of the GET /v1/cluster body that the test reads.
type clusterView struct {
	NodeID  string `json:"node_id"`
	State   string `json:"state"`
	Leader  string `json:"leader"`
	Term    uint64 `json:"term"`
	Servers []struct {
		ID       string `json:"id"`
		HTTPAddr string `json:"http_addr"`
		Suffrage string `json:"suffrage"`
		Leader   bool   `json:"leader"`
	} `json:"servers"`
}

// limitRecord is the body of GET and PUT /v1/limits/{service}/{user}.
type limitRecord struct {
	Service  string             `json:"service"`
	Username string             `json:"username"`
	Limit    map[string]float64 `json:"limit"`
}

// request sends one request and returns the status and body. A transport
// error or timeout returns err.
func (c *cluster) request(method, url string, body []byte) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("reading the response of %s %s: %w", method, url, err)
	}
	return resp.StatusCode, data, nil
}

// fetchClusterView returns node n's GET /v1/cluster.
func (c *cluster) fetchClusterView(n int) (clusterView, error) {
	var view clusterView
	status, body, err := c.request(http.MethodGet, c.url(n, "/v1/cluster"), nil)
	if err != nil {
		return view, err
	}
	if status != http.StatusOK {
		return view, fmt.Errorf("GET /v1/cluster on node %d returned HTTP %d: %s", n, status, body)
	}
	if err := json.Unmarshal(body, &view); err != nil {
		return view, fmt.Errorf("GET /v1/cluster on node %d returned invalid JSON: %v: %s", n, err, body)
	}
	return view, nil
}

func (c *cluster) clusterStatus(n int) clusterView {
	c.t.Helper()
	view, err := c.fetchClusterView(n)
	if err != nil {
		c.t.Fatal(err)
	}
	return view
}

// poll calls check every pollInterval until it returns true or timeout
// passes, then fails the test with what and check's last reason.
func (c *cluster) poll(timeout time.Duration, what string, check func() (done bool, reason string)) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done, reason := check()
		if done {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s; last result: %s", timeout, what, reason)
		}
		time.Sleep(pollInterval)
	}
}

// putLimitUntilAccepted sends PUT /v1/limits/service/user with one
// traffic_up limit to the nodes in turn until one returns 200. It retries
// on 503 and transport errors, which are expected while there is no
// leader, and fails the test on any other status. It returns the node that
// accepted and the number of attempts.
func (c *cluster) putLimitUntilAccepted(nodes []int, service, user string, limit int64, timeout time.Duration) (acceptedBy, attempts int) {
	t := c.t
	t.Helper()
	body := fmt.Appendf(nil, `{"limit":{"traffic_up":%d}}`, limit)
	path := "/v1/limits/" + service + "/" + user
	c.poll(timeout, fmt.Sprintf("PUT %s to be accepted by node %v", path, nodes), func() (bool, string) {
		n := nodes[attempts%len(nodes)]
		attempts++
		status, respBody, err := c.request(http.MethodPut, c.url(n, path), body)
		switch {
		case err != nil:
			return false, fmt.Sprintf("node %d: %v", n, err)
		case status == http.StatusServiceUnavailable:
			return false, fmt.Sprintf("node %d: HTTP 503: %s", n, respBody)
		case status != http.StatusOK:
			t.Fatalf("PUT %s on node %d returned HTTP %d, want 200: %s", path, n, status, respBody)
		}
		var rec limitRecord
		if err := json.Unmarshal(respBody, &rec); err != nil {
			t.Fatalf("PUT %s on node %d returned invalid JSON: %v: %s", path, n, err, respBody)
		}
		if got := rec.Limit["traffic_up"]; got != float64(limit) {
			t.Fatalf("PUT %s on node %d returned limit.traffic_up %v, want %d: %s", path, n, got, limit, respBody)
		}
		acceptedBy = n
		return true, ""
	})
	return acceptedBy, attempts
}

// getLimit reads service/user on node n and returns the record, or ok
// false and the reason when it is missing or the request failed.
func (c *cluster) getLimit(n int, service, user string, consistent bool) (rec limitRecord, ok bool, reason string) {
	path := "/v1/limits/" + service + "/" + user
	if consistent {
		path += "?consistent=true"
	}
	status, body, err := c.request(http.MethodGet, c.url(n, path), nil)
	if err != nil {
		return rec, false, fmt.Sprintf("GET %s on node %d: %v", path, n, err)
	}
	if status != http.StatusOK {
		return rec, false, fmt.Sprintf("GET %s on node %d returned HTTP %d: %s", path, n, status, body)
	}
	if err := json.Unmarshal(body, &rec); err != nil {
		return rec, false, fmt.Sprintf("GET %s on node %d returned invalid JSON: %v: %s", path, n, err, body)
	}
	return rec, true, ""
}

// checkLimitRecord fails the test unless rec is service/user with the
// given traffic_up limit.
func (c *cluster) checkLimitRecord(n int, rec limitRecord, service, user string, limit int64) {
	c.t.Helper()
	if rec.Service != service || rec.Username != user {
		c.t.Errorf("node %d returned the record of %s/%s for %s/%s", n, rec.Service, rec.Username, service, user)
	}
	if got := rec.Limit["traffic_up"]; got != float64(limit) {
		c.t.Errorf("node %d returned limit.traffic_up %v for %s/%s, want %d", n, got, service, user, limit)
	}
}

// waitForLimit polls a local read on node n until service/user exists,
// because a follower applies committed entries slightly after the leader
// acknowledges them. It then checks the limit.
func (c *cluster) waitForLimit(n int, service, user string, limit int64) {
	c.t.Helper()
	var rec limitRecord
	c.poll(replicationTimeout, fmt.Sprintf("%s/%s on node %d", service, user, n), func() (bool, string) {
		var ok bool
		var reason string
		rec, ok, reason = c.getLimit(n, service, user, false)
		return ok, reason
	})
	c.checkLimitRecord(n, rec, service, user, limit)
}

// checkConsistentLimit reads service/user on node n once with
// ?consistent=true, which the leader serves after a barrier, so an
// acknowledged write must be visible at once.
func (c *cluster) checkConsistentLimit(n int, service, user string, limit int64) {
	c.t.Helper()
	rec, ok, reason := c.getLimit(n, service, user, true)
	if !ok {
		c.t.Fatalf("consistent read: %s", reason)
	}
	c.checkLimitRecord(n, rec, service, user, limit)
}

// waitForNewLeader polls the nodes until one reports itself as leader in
// a term after oldTerm, and returns its server ID.
func (c *cluster) waitForNewLeader(nodes []int, oldTerm uint64) string {
	c.t.Helper()
	var leader string
	c.poll(failoverTimeout, fmt.Sprintf("one of nodes %v to lead in a term after %d", nodes, oldTerm), func() (bool, string) {
		var reasons []string
		for _, n := range nodes {
			view, err := c.fetchClusterView(n)
			switch {
			case err != nil:
				reasons = append(reasons, err.Error())
			case view.State == "Leader" && view.Leader == view.NodeID && view.Term > oldTerm:
				leader = view.NodeID
				c.t.Logf("node %d (%s) leads in term %d", n, view.NodeID, view.Term)
				return true, ""
			default:
				reasons = append(reasons, fmt.Sprintf("node %d: state %s, leader %q, term %d", n, view.State, view.Leader, view.Term))
			}
		}
		return false, strings.Join(reasons, "; ")
	})
	return leader
}

// waitForAgreedLeader polls GET /v1/cluster on the nodes until each names
// leader, both in "leader" and in its server list.
func (c *cluster) waitForAgreedLeader(nodes []int, leader string) {
	c.t.Helper()
	c.poll(replicationTimeout, fmt.Sprintf("nodes %v to name %s as leader", nodes, leader), func() (bool, string) {
		for _, n := range nodes {
			view, err := c.fetchClusterView(n)
			if err != nil {
				return false, err.Error()
			}
			if view.Leader != leader {
				return false, fmt.Sprintf("node %d names leader %q", n, view.Leader)
			}
			var marked []string
			for _, server := range view.Servers {
				if server.Leader {
					marked = append(marked, server.ID)
				}
			}
			if !slices.Equal(marked, []string{leader}) {
				return false, fmt.Sprintf("node %d marks %v as leader in its server list", n, marked)
			}
		}
		return true, ""
	})
}
