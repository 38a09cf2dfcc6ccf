package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults of Config.
const (
	// DefaultLimit is alice's limit: 100 MB/s of traffic_down.
	DefaultLimit = 100e6
	// DefaultRequestSize is the size of one simulated request.
	DefaultRequestSize = 1e6
	// DefaultDemand is the demand as a multiple of the limit.
	DefaultDemand = 3.0

	service  = "front"
	user     = "alice"
	resource = "traffic_down"
	centrals = 3
)

// Config configures a run.
type Config struct {
	// CentralBinary and AgentBinary are the throttle-central and
	// throttle-agent executables.
	CentralBinary, AgentBinary string
	// Dir receives the data directories and the logs of every process.
	Dir      string
	Scenario Scenario
	// Limit is alice's limit in bytes per second; 0 means DefaultLimit.
	Limit float64
	// RequestSize is the bytes of one request; 0 means DefaultRequestSize.
	RequestSize float64
	// Demand is the offered load as a multiple of Limit; 0 means
	// DefaultDemand.
	Demand float64
	// Out receives one line per second and the progress; nil discards them.
	Out io.Writer
}

// Second is the record of one second of demand.
type Second struct {
	// Offset counts the seconds since demand started, from 0.
	Offset int
	// Admitted is the bytes the agents admitted, in total and by agent.
	Admitted float64
	ByAgent  []float64
	// Rejected counts the requests that an agent rejected with 429.
	Rejected int
	// Failed counts the requests that reached no agent.
	Failed int
	// Leader is the leading central's ID seen during the second.
	Leader string
	// Events lists what the demo did in the second.
	Events []string
}

// Result is the record of a run.
type Result struct {
	Limit   float64
	Warmup  int
	Seconds []Second
	// AgentKilledAt and LeaderKilledAt are the offsets of the kills, -1
	// when none happened.
	AgentKilledAt, LeaderKilledAt int
	// KilledLeader is the ID of the central killed as leader.
	KilledLeader string
}

// cluster is the processes of one run.
type cluster struct {
	centrals []*central
	agents   []*agent
	client   *http.Client
}

type central struct {
	id                             string
	httpAddr, raftAddr, gossipAddr string
	proc                           *process
}

type agent struct {
	id         string
	listenAddr string
	proc       *process
}

// Run starts the cluster and the agents, runs the scenario and stops every
// process it started, also when ctx is canceled or a step fails.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.Scenario.validate(); err != nil {
		return Result{}, err
	}
	if cfg.Limit == 0 {
		cfg.Limit = DefaultLimit
	}
	if cfg.RequestSize == 0 {
		cfg.RequestSize = DefaultRequestSize
	}
	if cfg.Demand == 0 {
		cfg.Demand = DefaultDemand
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Limit < 0 || cfg.RequestSize <= 0 || cfg.Demand <= 0 {
		return Result{}, fmt.Errorf("limit %v, request size %v and demand %v must be positive", cfg.Limit, cfg.RequestSize, cfg.Demand)
	}
	for _, binary := range []string{cfg.CentralBinary, cfg.AgentBinary} {
		if _, err := os.Stat(binary); err != nil {
			return Result{}, fmt.Errorf("binary not found: %w (run make build first)", err)
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return Result{}, fmt.Errorf("creating the demo directory: %w", err)
	}

	c := &cluster{client: &http.Client{Timeout: time.Second}}
	defer c.stop()
	if err := c.startCentrals(ctx, cfg); err != nil {
		return Result{}, err
	}
	if err := c.putLimit(ctx, cfg.Limit); err != nil {
		return Result{}, err
	}
	fmt.Fprintf(cfg.Out, "limit set: %s/%s %s = %s/s\n", service, user, resource, megabytes(cfg.Limit))
	fmt.Fprintf(cfg.Out, "logs and data of every process: %s\n", cfg.Dir)
	if err := c.startAgents(ctx, cfg); err != nil {
		return Result{}, err
	}
	return c.drive(ctx, cfg)
}

// startCentrals starts three centrals that gossip with each other and
// waits until they form one Raft cluster.
func (c *cluster) startCentrals(ctx context.Context, cfg Config) error {
	ports, err := freePorts(3 * centrals)
	if err != nil {
		return err
	}
	for i := range centrals {
		c.centrals = append(c.centrals, &central{
			id:         "c" + strconv.Itoa(i+1),
			httpAddr:   addr(ports[3*i]),
			raftAddr:   addr(ports[3*i+1]),
			gossipAddr: addr(ports[3*i+2]),
		})
	}
	for i, node := range c.centrals {
		args := []string{
			"--node-id", node.id,
			"--http-addr", node.httpAddr,
			"--raft-addr", node.raftAddr,
			"--data-dir", filepath.Join(cfg.Dir, node.id),
			"--gossip-addr", node.gossipAddr,
		}
		if i == 0 {
			args = append(args, "--bootstrap")
		} else {
			args = append(args, "--join", c.centrals[0].httpAddr, "--gossip-join", c.centrals[0].gossipAddr)
		}
		node.proc, err = startProcess(cfg.Dir, node.id, cfg.CentralBinary, args...)
		if err != nil {
			return err
		}
		fmt.Fprintf(cfg.Out, "started central %s (PID %d): HTTP %s, log %s\n", node.id, node.proc.pid(), node.httpAddr, node.proc.log)
	}
	return poll(ctx, 30*time.Second, "three centrals in one cluster with a leader", func() bool {
		view, err := c.clusterView(c.centrals[0])
		return err == nil && view.Leader != "" && len(view.Servers) == centrals
	})
}

// startAgents starts the agents, each reporting to all three centrals and
// gossiping as an edge node, and waits until their health checks pass.
func (c *cluster) startAgents(ctx context.Context, cfg Config) error {
	ports, err := freePorts(2 * cfg.Scenario.Agents)
	if err != nil {
		return err
	}
	urls := make([]string, 0, centrals)
	joins := make([]string, 0, centrals)
	for _, node := range c.centrals {
		urls = append(urls, "http://"+node.httpAddr)
		joins = append(joins, node.gossipAddr)
	}
	for i := range cfg.Scenario.Agents {
		a := &agent{id: "agent-" + strconv.Itoa(i+1), listenAddr: addr(ports[2*i])}
		a.proc, err = startProcess(cfg.Dir, a.id, cfg.AgentBinary,
			"--node-id", a.id,
			"--listen", a.listenAddr,
			"--centrals", strings.Join(urls, ","),
			"--fallback", "safe-share",
			"--gossip-addr", addr(ports[2*i+1]),
			"--gossip-join", strings.Join(joins, ","),
		)
		if err != nil {
			return err
		}
		c.agents = append(c.agents, a)
		fmt.Fprintf(cfg.Out, "started agent %s (PID %d): API %s, log %s\n", a.id, a.proc.pid(), a.listenAddr, a.proc.log)
	}
	return poll(ctx, 30*time.Second, "every agent answering /healthz", func() bool {
		for _, a := range c.agents {
			resp, err := c.client.Get("http://" + a.listenAddr + "/healthz")
			if err != nil {
				return false
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return false
			}
		}
		return true
	})
}

// putLimit sets alice's limit through the first central, retrying while
// the cluster settles.
func (c *cluster) putLimit(ctx context.Context, limit float64) error {
	body := fmt.Sprintf(`{"limit":{%q:%d}}`, resource, int64(limit))
	url := "http://" + c.centrals[0].httpAddr + "/v1/limits/" + service + "/" + user
	var last string
	err := poll(ctx, 30*time.Second, "the limit PUT to succeed", func() bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, strings.NewReader(body))
		if err != nil {
			last = err.Error()
			return false
		}
		resp, err := c.client.Do(req)
		if err != nil {
			last = err.Error()
			return false
		}
		reply, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		last = fmt.Sprintf("%d %s", resp.StatusCode, bytes.TrimSpace(reply))
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		return fmt.Errorf("%w; last response: %s", err, last)
	}
	return nil
}

// clusterView is the part of GET /v1/cluster the demo reads.
type clusterView struct {
	Leader  string `json:"leader"`
	Servers []struct {
		ID string `json:"id"`
	} `json:"servers"`
}

func (c *cluster) clusterView(node *central) (clusterView, error) {
	var view clusterView
	resp, err := c.client.Get("http://" + node.httpAddr + "/v1/cluster")
	if err != nil {
		return view, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return view, fmt.Errorf("GET /v1/cluster on %s: status %d", node.id, resp.StatusCode)
	}
	err = json.NewDecoder(resp.Body).Decode(&view)
	return view, err
}

// leader returns the leader ID that a running central reports, or "" when
// no central responds or none reports a leader.
func (c *cluster) leader() string {
	for _, node := range c.centrals {
		if !node.proc.running() {
			continue
		}
		if view, err := c.clusterView(node); err == nil && view.Leader != "" {
			return view.Leader
		}
	}
	return ""
}

// leaderLabel returns the leader ID for the per-second line, marked as
// down when the demo killed that central: the others keep naming it until
// their election timeout passes.
func (c *cluster) leaderLabel() string {
	id := c.leader()
	for _, node := range c.centrals {
		if node.id == id && !node.proc.running() {
			return id + " (down)"
		}
	}
	return id
}

// stop ends every process the run started: agents first, so their final
// reports reach the centrals, then the centrals.
func (c *cluster) stop() {
	var wg sync.WaitGroup
	for _, a := range c.agents {
		if a.proc != nil {
			wg.Go(func() { a.proc.stop(5 * time.Second) })
		}
	}
	wg.Wait()
	for _, node := range c.centrals {
		if node.proc != nil {
			wg.Go(func() { node.proc.stop(10 * time.Second) })
		}
	}
	wg.Wait()
}

// poll calls done every 100 ms until it returns true, ctx ends or timeout
// passes.
func poll(ctx context.Context, timeout time.Duration, what string, done func() bool) error {
	deadline := time.Now().Add(timeout)
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		if done() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("stopped while waiting for %s", what), ctx.Err())
		case <-ticker.C:
		}
	}
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// megabytes formats bytes as decimal megabytes.
func megabytes(bytes float64) string { return strconv.FormatFloat(bytes/1e6, 'f', 1, 64) + " MB" }
