//go:build linux

package faults

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Addresses and ports of the centrals in network namespaces. The
// addresses exist only inside the namespaces this file creates, so no
// packet to them leaves the test's own namespaces, and the ports cannot
// collide with anything on the host.
const (
	netnsSubnet     = "10.99.0."
	netnsPrefixLen  = "/24"
	netnsHTTPPort   = "18080"
	netnsRaftPort   = "18090"
	netnsGossipPort = "18100"
	// netnsNamePrefix starts the name of every namespace the tests
	// create. The PID of the test process follows it, so a later run can
	// tell a stale namespace from one in use.
	netnsNamePrefix = "tcfault"
)

// staleNetns matches the namespaces that netnsSet creates and captures
// the PID of the test process that created them.
var staleNetns = regexp.MustCompile(`^` + netnsNamePrefix + `([0-9]+)-(hub|c[0-9])$`)

// netnsSet is a hub namespace with a bridge, and one namespace per
// central with a veth pair into the bridge: eth0 with 10.99.0.N/24 in the
// central's namespace, and its other end in the hub. Setting a central's
// link down in the hub cuts it off from the other centrals while it keeps
// running.
type netnsSet struct {
	t        *testing.T
	id       string // netnsNamePrefix and the PID
	hub      string
	centrals []string
	links    []string // the hub end of each central's veth pair
	created  []string // the namespaces created so far, which remove deletes
}

// newNetnsSet creates the namespaces and links, or skips the test with a
// message when this machine does not permit it. The cleanup removes the
// namespaces, which removes the links and the bridge with them, after the
// cluster's cleanup has stopped the centrals.
func newNetnsSet(t *testing.T) *netnsSet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the partition test creates network namespaces with `ip netns`, which needs root")
	}
	for _, tool := range []string{"ip", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: the partition test needs %s: %v", tool, err)
		}
	}
	removeStaleNetns(t)

	s := &netnsSet{t: t, id: netnsNamePrefix + strconv.Itoa(os.Getpid())}
	s.hub = s.id + "-hub"
	if out, err := runIP("netns", "add", s.hub); err != nil {
		t.Skipf("skipping: `ip netns add` is not permitted here: %v: %s", err, out)
	}
	s.created = append(s.created, s.hub)
	t.Cleanup(s.remove)
	for i := range centralCount {
		ns := fmt.Sprintf("%s-c%d", s.id, i+1)
		if out, err := runIP("netns", "add", ns); err != nil {
			t.Fatalf("ip netns add %s failed: %v: %s", ns, err, out)
		}
		s.created = append(s.created, ns)
		s.centrals = append(s.centrals, ns)
		// The hub's end of each link lives in the hub namespace only, so
		// its name cannot collide with an interface of the host.
		s.links = append(s.links, fmt.Sprintf("veth-c%d", i+1))
	}

	steps := [][]string{
		{"-n", s.hub, "link", "set", "lo", "up"},
		{"-n", s.hub, "link", "add", "br0", "type", "bridge"},
		{"-n", s.hub, "link", "set", "br0", "up"},
	}
	for i, ns := range s.centrals {
		steps = append(steps,
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", s.hub, "link", "add", s.links[i], "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", s.hub, "link", "set", s.links[i], "master", "br0"},
			[]string{"-n", s.hub, "link", "set", s.links[i], "up"},
			[]string{"-n", ns, "addr", "add", s.address(i) + netnsPrefixLen, "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
		)
	}
	for _, step := range steps {
		if out, err := runIP(step...); err != nil {
			t.Fatalf("ip %s failed: %v: %s", strings.Join(step, " "), err, out)
		}
	}
	t.Logf("created network namespaces %s and %v with centrals at %s1-%d", s.hub, s.centrals, netnsSubnet, centralCount)
	return s
}

func (s *netnsSet) address(i int) string { return netnsSubnet + strconv.Itoa(i+1) }

// centralNodes returns the centrals of the set: each listens on its
// namespace's address and is reached by the test on loopback inside its
// namespace.
func (s *netnsSet) centralNodes() []*centralNode {
	var nodes []*centralNode
	for i, ns := range s.centrals {
		nodes = append(nodes, &centralNode{
			id:         "c" + strconv.Itoa(i+1),
			clientAddr: "127.0.0.1:" + netnsHTTPPort,
			httpAddr:   s.address(i) + ":" + netnsHTTPPort,
			raftAddr:   s.address(i) + ":" + netnsRaftPort,
			gossipAddr: s.address(i) + ":" + netnsGossipPort,
			netns:      ns,
		})
	}
	return nodes
}

// setLink sets the hub end of central i's link up or down.
func (s *netnsSet) setLink(i int, up bool) {
	s.t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	if out, err := runIP("-n", s.hub, "link", "set", s.links[i], state); err != nil {
		s.t.Fatalf("setting the link of c%d %s failed: %v: %s", i+1, state, err, out)
	}
}

// remove ends any process still running in the set's namespaces, which
// only this test started, and deletes the namespaces.
func (s *netnsSet) remove() {
	for _, ns := range s.created {
		killNetnsProcesses(s.t, ns)
		if out, err := runIP("netns", "del", ns); err != nil {
			s.t.Errorf("deleting network namespace %s failed: %v: %s", ns, err, out)
		}
	}
}

// killNetnsProcesses sends SIGKILL to every process in namespace ns.
func killNetnsProcesses(t *testing.T, ns string) {
	out, err := runIP("netns", "pids", ns)
	if err != nil {
		return
	}
	for _, field := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(field)
		if err != nil {
			continue
		}
		t.Logf("process %d still runs in network namespace %s; sending SIGKILL", pid, ns)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Errorf("SIGKILL to process %d in %s failed: %v", pid, ns, err)
		}
	}
}

// removeStaleNetns deletes the namespaces of earlier runs whose test
// process no longer exists, for example after a test binary was killed.
func removeStaleNetns(t *testing.T) {
	out, err := runIP("netns", "list")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		m := staleNetns.FindStringSubmatch(fields[0])
		if m == nil {
			continue
		}
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			continue // the test process that created it still runs
		}
		t.Logf("deleting network namespace %s of an earlier run (process %s has exited)", fields[0], m[1])
		killNetnsProcesses(t, fields[0])
		if out, err := runIP("netns", "del", fields[0]); err != nil {
			t.Logf("deleting %s failed: %v: %s", fields[0], err, out)
		}
	}
}

func runIP(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "ip", args...).CombinedOutput()
}

// netnsTransport sends each request with curl run inside the central's
// namespace, to the API's loopback address there.
type netnsTransport struct{}

func (netnsTransport) do(ctx context.Context, node *centralNode, method, path string, body []byte) (response, error) {
	timeout := requestTimeout
	if deadline, ok := ctx.Deadline(); ok {
		timeout = time.Until(deadline)
	}
	if timeout <= 0 {
		return response{}, context.DeadlineExceeded
	}
	args := []string{"netns", "exec", node.netns, "curl", "--silent", "--show-error", "--include",
		"--max-time", strconv.FormatFloat(timeout.Seconds(), 'f', 3, 64), "--request", method,
		// An empty Expect header keeps curl from waiting for 100 Continue.
		"--header", "Expect:"}
	if body != nil {
		args = append(args, "--header", "Content-Type: application/json", "--data-binary", "@-")
	}
	args = append(args, "http://"+node.clientAddr+path)

	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = bytes.NewReader(body)
	cmd.WaitDelay = time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return response{}, fmt.Errorf("curl %s %s in %s failed: %v: %s", method, path, node.netns, err, bytes.TrimSpace(stderr.Bytes()))
	}

	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
	if err != nil {
		return response{}, fmt.Errorf("curl %s %s in %s printed no HTTP response: %v: %q", method, path, node.netns, err, out)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("reading curl's output of %s %s in %s: %w", method, path, node.netns, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}, nil
}
