//go:build linux

package faults

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	centralCount = 3

	pollInterval = 50 * time.Millisecond
	// requestTimeout bounds one API request of a check or a poll.
	requestTimeout = 3 * time.Second
	// startTimeout bounds the wait for three new centrals to form a
	// cluster with a leader.
	startTimeout = 30 * time.Second
	// stopGrace is how long a central may take to exit after SIGTERM
	// before it gets SIGKILL. It is above the centrals' default
	// --shutdown-timeout of 10 s.
	stopGrace = 12 * time.Second
	// logTailLines is how many lines of each log a failing test prints.
	logTailLines = 40
)

// centralNode is one central of a test cluster: its addresses, its fixed
// command line and its current process.
type centralNode struct {
	id string
	// clientAddr is the host:port the test sends HTTP requests to. In a
	// network namespace it is a loopback address inside that namespace.
	clientAddr string
	// httpAddr, raftAddr and gossipAddr are the addresses the central
	// advertises to the others.
	httpAddr, raftAddr, gossipAddr string
	// netns is the network namespace the central runs in, or "".
	netns string
	// args is the command line, the same at every start.
	args []string
	proc *process
}

// cluster is three centrals that one test started.
type cluster struct {
	t         *testing.T
	dir       string
	nodes     []*centralNode
	transport transport
	agents    []*process
}

// clusterOptions configures newCluster.
type clusterOptions struct {
	// gossip turns gossip on: each central gets --gossip-addr and joins
	// the other two.
	gossip bool
	// netns, when set, runs each central in its own network namespace.
	// Nil runs them on 127.0.0.1.
	netns *netnsSet
}

// newCluster starts three centrals and waits until they agree on a
// leader. c1 starts with --bootstrap, c2 and c3 with --join of the other
// two. Every later start of a central uses the same command line, which
// works because --bootstrap does nothing on a data directory with state.
// The cleanup stops every process and prints the logs of a failed test.
func newCluster(t *testing.T, opts clusterOptions) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: testDir(t)}
	if opts.netns != nil {
		c.transport = netnsTransport{}
		c.nodes = opts.netns.centralNodes()
	} else {
		c.transport = newLoopbackTransport()
		ports, err := freePorts(3 * centralCount)
		if err != nil {
			t.Fatal(err)
		}
		for i := range centralCount {
			address := func(k int) string { return "127.0.0.1:" + strconv.Itoa(ports[3*i+k]) }
			c.nodes = append(c.nodes, &centralNode{
				id:         "c" + strconv.Itoa(i+1),
				clientAddr: address(0),
				httpAddr:   address(0),
				raftAddr:   address(1),
				gossipAddr: address(2),
			})
		}
	}
	for i, node := range c.nodes {
		node.args = c.commandLine(i, opts)
	}

	// Cleanups run last-registered first: the processes stop before the
	// logs are printed, so the logs include the shutdown.
	t.Cleanup(c.printLogsOnFailure)
	t.Cleanup(c.stopAll)

	start := time.Now()
	c.startAll()
	leader, term := c.waitForLeader(c.indices(), startTimeout)
	t.Logf("cluster of %d centrals has leader %s in term %d after %v; logs in %s", centralCount, leader, term, time.Since(start).Round(time.Millisecond), c.dir)
	return c
}

// commandLine returns the flags of central i.
func (c *cluster) commandLine(i int, opts clusterOptions) []string {
	node := c.nodes[i]
	args := []string{
		"--node-id", node.id,
		"--raft-addr", node.raftAddr,
		"--data-dir", filepath.Join(c.dir, node.id),
	}
	if node.clientAddr == node.httpAddr {
		args = append(args, "--http-addr", node.httpAddr)
	} else {
		// In a namespace the API listens on every address of the
		// namespace, so the test reaches it on loopback there.
		_, port, _ := strings.Cut(node.httpAddr, ":")
		args = append(args, "--http-addr", "0.0.0.0:"+port, "--http-advertise", node.httpAddr)
	}
	var joinHTTP, joinGossip []string
	for j, other := range c.nodes {
		if j != i {
			joinHTTP = append(joinHTTP, other.httpAddr)
			joinGossip = append(joinGossip, other.gossipAddr)
		}
	}
	if i == 0 {
		args = append(args, "--bootstrap")
	} else {
		args = append(args, "--join", strings.Join(joinHTTP, ","))
	}
	if opts.gossip {
		args = append(args, "--gossip-addr", node.gossipAddr, "--gossip-join", strings.Join(joinGossip, ","))
	}
	return args
}

func (c *cluster) indices() []int {
	out := make([]int, len(c.nodes))
	for i := range out {
		out[i] = i
	}
	return out
}

// start starts central i with its command line.
func (c *cluster) start(i int) {
	c.t.Helper()
	node := c.nodes[i]
	binary, args := built.central, node.args
	if node.netns != "" {
		binary, args = "ip", append([]string{"netns", "exec", node.netns, built.central}, node.args...)
	}
	proc, err := startProcess(c.dir, node.id, binary, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	node.proc = proc
}

// startAll starts every central at the same time.
func (c *cluster) startAll() {
	c.t.Helper()
	for i := range c.nodes {
		c.start(i)
	}
}

// signalAll sends sig to every running central at once and waits until
// all have exited. It returns how long the slowest took.
func (c *cluster) signalAll(sig syscall.Signal) time.Duration {
	c.t.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(c.nodes))
	for i, node := range c.nodes {
		wg.Go(func() {
			if err := node.proc.signal(sig); err != nil {
				errs[i] = err
				return
			}
			if !node.proc.wait(stopGrace) {
				errs[i] = fmt.Errorf("%s (PID %d) did not exit within %v of %v", node.id, node.proc.pid(), stopGrace, sig)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.t.Fatal(err)
	}
	return time.Since(start)
}

// kill sends SIGKILL to central i and waits for it to exit.
func (c *cluster) kill(i int) {
	c.t.Helper()
	node := c.nodes[i]
	if err := node.proc.signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	<-node.proc.done
}

// stopAll stops every central and agent that still runs: agents first,
// so their last reports reach the centrals.
func (c *cluster) stopAll() {
	var wg sync.WaitGroup
	for _, agent := range c.agents {
		wg.Go(func() { agent.stop(stopGrace) })
	}
	wg.Wait()
	for _, node := range c.nodes {
		if node.proc != nil {
			wg.Go(func() { node.proc.stop(stopGrace) })
		}
	}
	wg.Wait()
}

// printLogsOnFailure prints the end of every log when the test failed.
func (c *cluster) printLogsOnFailure() {
	if !c.t.Failed() {
		return
	}
	paths, _ := filepath.Glob(filepath.Join(c.dir, "*.log"))
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			c.t.Logf("reading %s failed: %v", path, err)
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		lines = lines[max(0, len(lines)-logTailLines):]
		c.t.Logf("last %d lines of %s:\n%s", len(lines), path, strings.Join(lines, "\n"))
	}
}

// request sends one request to central i, bounded by timeout.
func (c *cluster) request(i int, timeout time.Duration, method, path string, body []byte) (response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.transport.do(ctx, c.nodes[i], method, path, body)
}

// index returns the index of the central with server ID id, or -1.
func (c *cluster) index(id string) int {
	return slices.IndexFunc(c.nodes, func(n *centralNode) bool { return n.id == id })
}

func (c *cluster) view(i int) (clusterView, error) {
	var view clusterView
	r, err := c.request(i, requestTimeout, http.MethodGet, "/v1/cluster", nil)
	if err != nil {
		return view, err
	}
	return view, decodeJSON(r, &view)
}

// poll calls check every pollInterval until it returns true or timeout
// passes, then fails the test with what and check's last reason.
func (c *cluster) poll(timeout time.Duration, what string, check func() (bool, string)) {
	c.t.Helper()
	if reason, ok := pollUntil(timeout, check); !ok {
		c.t.Fatalf("timed out after %v waiting for %s; last result: %s", timeout, what, reason)
	}
}

// pollUntil calls check every pollInterval until it returns true or
// timeout passes. It returns check's last reason and whether it
// succeeded.
func pollUntil(timeout time.Duration, check func() (bool, string)) (string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		done, reason := check()
		if done {
			return "", true
		}
		if time.Now().After(deadline) {
			return reason, false
		}
		time.Sleep(pollInterval)
	}
}

// leaderOf returns the leader that every central in nodes names, with the
// term, when they agree and the leader itself reports state Leader.
func (c *cluster) leaderOf(nodes []int) (leader string, term uint64, reason string) {
	var views []clusterView
	for _, i := range nodes {
		view, err := c.view(i)
		if err != nil {
			return "", 0, fmt.Sprintf("%s: %v", c.nodes[i].id, err)
		}
		views = append(views, view)
	}
	leader = views[0].Leader
	for _, view := range views {
		switch {
		case view.Leader == "":
			return "", 0, fmt.Sprintf("%s knows no leader (state %s, term %d)", view.NodeID, view.State, view.Term)
		case view.Leader != leader:
			return "", 0, fmt.Sprintf("%s names leader %s, %s names %s", views[0].NodeID, leader, view.NodeID, view.Leader)
		case view.NodeID == leader && view.State != "Leader":
			return "", 0, fmt.Sprintf("%s is named leader but reports state %s", leader, view.State)
		}
		term = max(term, view.Term)
	}
	return leader, term, ""
}

// waitForLeader polls the centrals in nodes until they agree on a leader
// and returns it with its term.
func (c *cluster) waitForLeader(nodes []int, timeout time.Duration) (string, uint64) {
	c.t.Helper()
	return c.waitForNewLeader(nodes, "", timeout)
}

// waitForNewLeader polls the centrals in nodes until they agree on a
// leader other than old and returns it with its term.
func (c *cluster) waitForNewLeader(nodes []int, old string, timeout time.Duration) (string, uint64) {
	c.t.Helper()
	var leader string
	var term uint64
	description := fmt.Sprintf("centrals %v to agree on a leader", c.ids(nodes))
	if old != "" {
		description += " other than " + old
	}
	c.poll(timeout, description, func() (bool, string) {
		var reason string
		leader, term, reason = c.leaderOf(nodes)
		if leader != "" && leader == old {
			return false, "they still name " + old
		}
		return leader != "", reason
	})
	return leader, term
}

func (c *cluster) ids(nodes []int) []string {
	out := make([]string, 0, len(nodes))
	for _, i := range nodes {
		out = append(out, c.nodes[i].id)
	}
	return out
}

// putLimit sends PUT /v1/limits/{service}/{user} to central i.
func (c *cluster) putLimit(i int, timeout time.Duration, service, user, resource string, limit, burst float64) (response, error) {
	return c.request(i, timeout, http.MethodPut, "/v1/limits/"+service+"/"+user, limitBody(resource, limit, burst))
}

// mustPutLimit sets a limit through central i, retrying 503s and
// transport errors for up to 15 s, as a client does while a leader is
// elected.
func (c *cluster) mustPutLimit(i int, service, user, resource string, limit, burst float64) {
	c.t.Helper()
	c.poll(15*time.Second, fmt.Sprintf("PUT %s/%s on %s", service, user, c.nodes[i].id), func() (bool, string) {
		r, err := c.putLimit(i, requestTimeout, service, user, resource, limit, burst)
		switch {
		case err != nil:
			return false, err.Error()
		case r.status == http.StatusServiceUnavailable:
			return false, r.String()
		case r.status != http.StatusOK:
			c.t.Fatalf("PUT %s/%s on %s returned %s, want 200", service, user, c.nodes[i].id, r)
		}
		return true, ""
	})
}

// limitsOf returns every limit that central i holds, as service/user ->
// resource limit, read locally or with ?consistent=true.
func (c *cluster) limitsOf(i int, resource string, consistent bool) (map[string]float64, error) {
	path := "/v1/limits"
	if consistent {
		path += "?consistent=true"
	}
	r, err := c.request(i, requestTimeout, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	var records []limitRecord
	if err := decodeJSON(r, &records); err != nil {
		return nil, fmt.Errorf("GET %s on %s: %w", path, c.nodes[i].id, err)
	}
	out := make(map[string]float64, len(records))
	for _, rec := range records {
		out[rec.Service+"/"+rec.Username] = rec.Limit[resource]
	}
	return out, nil
}

// diffLimits describes how got differs from want, or returns "" when they
// are equal. It names at most five differences.
func diffLimits(got, want map[string]float64) string {
	var diffs []string
	for key, value := range want {
		if g, ok := got[key]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s missing (want %v)", key, value))
		} else if g != value {
			diffs = append(diffs, fmt.Sprintf("%s is %v, want %v", key, g, value))
		}
	}
	for key, value := range got {
		if _, ok := want[key]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s = %v was never acknowledged", key, value))
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	slices.Sort(diffs)
	if len(diffs) > 5 {
		diffs = append(diffs[:5], fmt.Sprintf("and %d more", len(diffs)-5))
	}
	return strings.Join(diffs, "; ")
}

// waitForLimits polls central i until its limits equal want, read locally
// or with ?consistent=true, and returns how long that took.
func (c *cluster) waitForLimits(i int, resource string, want map[string]float64, consistent bool, timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	kind := "local"
	if consistent {
		kind = "consistent"
	}
	c.poll(timeout, fmt.Sprintf("%s reads on %s to return the %d acknowledged limits", kind, c.nodes[i].id, len(want)), func() (bool, string) {
		got, err := c.limitsOf(i, resource, consistent)
		if err != nil {
			return false, err.Error()
		}
		diff := diffLimits(got, want)
		return diff == "", diff
	})
	return time.Since(start)
}

// members returns central i's gossip view.
func (c *cluster) members(i int) (membersView, error) {
	var view membersView
	r, err := c.request(i, requestTimeout, http.MethodGet, "/v1/members", nil)
	if err != nil {
		return view, err
	}
	return view, decodeJSON(r, &view)
}

// monitorQuota returns the leader's quotas per slot for one user, as
// slot -> node -> quota, through central i.
func (c *cluster) monitorQuota(i int, service, user, resource string, start, end int64) (map[int64]map[string]float64, error) {
	path := fmt.Sprintf("/v1/monitor/quota?service=%s&user=%s&start_slot=%d&end_slot=%d", service, user, start, end)
	r, err := c.request(i, requestTimeout, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	var data map[string]map[string]map[string]map[string]map[string]float64
	if err := decodeJSON(r, &data); err != nil {
		return nil, fmt.Errorf("GET %s on %s: %w", path, c.nodes[i].id, err)
	}
	out := make(map[int64]map[string]float64, len(data))
	for slotText, services := range data {
		slot, err := strconv.ParseInt(slotText, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("GET %s on %s: slot key %q is not a number", path, c.nodes[i].id, slotText)
		}
		out[slot] = services[service][user][resource]
	}
	return out, nil
}

// consumptionSum returns the leader's sum of the reported consumption of
// one user per slot, through central i.
func (c *cluster) consumptionSum(i int, service, user, resource string, start, end int64) (map[int64]float64, error) {
	path := fmt.Sprintf("/v1/monitor/consumption_sum?service=%s&user=%s&start_slot=%d&end_slot=%d", service, user, start, end)
	r, err := c.request(i, requestTimeout, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	var data map[string]map[string]map[string]map[string]float64
	if err := decodeJSON(r, &data); err != nil {
		return nil, fmt.Errorf("GET %s on %s: %w", path, c.nodes[i].id, err)
	}
	out := make(map[int64]float64, len(data))
	for slotText, services := range data {
		slot, err := strconv.ParseInt(slotText, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("GET %s on %s: slot key %q is not a number", path, c.nodes[i].id, slotText)
		}
		out[slot] = services[service][user][resource]
	}
	return out, nil
}
