//go:build linux

package faults

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	restartResource = "traffic_up"
	// agentID is the throttle-agent that gossips as an edge node.
	agentID      = "edge-gossip"
	agentService = "front"
	agentUser    = "gossip-user"

	// gossipBound is how soon after the restart every central must list
	// all three centrals alive. Each restarted central joins the other
	// two at once, so the pool forms as soon as two of them listen.
	gossipBound = 10 * time.Second
	// maxAgentDead is the maximum time that any central may list the running
	// agent as dead or left: the 5 s in which gossip declares a crashed
	// member dead with the default timing, for a member that has not
	// crashed.
	maxAgentDead = 5 * time.Second
	// agentQuotaBound is how soon after the new leader is known the agent
	// must get a quota again. The leader assigns quotas to a node after
	// its first report, at the middle of the next second, and the agent
	// reports once a second, which took 1 to 4 s on an idle 2-core
	// machine. The bound leaves room for a loaded one.
	agentQuotaBound = 8 * time.Second
	// agentRejoinBound bounds the wait of the long form for every central
	// to list the agent alive again. Restarted centrals learn of it only
	// when it rejoins them, which it tries every 30 s, or at its next full
	// state exchange, also every 30 s.
	agentRejoinBound = 45 * time.Second
)

// restartFigures are the measured figures of one restart round.
type restartFigures struct {
	signal syscall.Signal
	// stopped is how long the slowest central took to exit. The others
	// are measured from the restart.
	stopped, leader, limits, gossip, agentQuota time.Duration
	// agentListed is when every central listed the agent alive again, or
	// 0 when that did not happen within the round.
	agentListed time.Duration
}

func (r restartFigures) String() string {
	listed := "not-within-round"
	if r.agentListed > 0 {
		listed = r.agentListed.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("signal=%v stop=%v leader=%v limits_on_all=%v gossip_converged=%v agent_quota=%v agent_listed_alive=%s",
		r.signal, r.stopped.Round(time.Millisecond), r.leader.Round(time.Millisecond), r.limits.Round(time.Millisecond),
		r.gossip.Round(time.Millisecond), r.agentQuota.Round(time.Millisecond), listed)
}

// TestRestartAllCentrals stops every central at once, with SIGTERM in one
// round and SIGKILL in the next, and restarts them with the same command
// lines. It checks that every acknowledged limit is back on every
// central, that they agree on a leader and that gossip converges. The
// running throttle-agent must never be listed dead for longer than
// maxAgentDead, and must get quotas again. The long form runs three
// rounds and 50 limits, and waits for the agent to be listed alive again.
func TestRestartAllCentrals(t *testing.T) {
	requireBinaries(t)
	c := newCluster(t, clusterOptions{gossip: true})

	want := make(map[string]float64)
	for k := range pick(10, 50) {
		service := []string{"front", "batch"}[k%2]
		user := fmt.Sprintf("user-%02d", k)
		limit := float64(1000 * (k + 1))
		c.mustPutLimit(k%centralCount, service, user, restartResource, limit, 0)
		want[service+"/"+user] = limit
	}
	c.mustPutLimit(0, agentService, agentUser, restartResource, 1e6, 0)
	want[agentService+"/"+agentUser] = 1e6

	agentAddr := startAgent(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { driveAgent(ctx, agentAddr) })
	watcher := newMemberWatcher(c, agentID)
	wg.Go(func() { watcher.run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})

	// The agent reports and gets quotas before the first restart.
	c.waitForLeader(c.indices(), startTimeout)
	waitForAgentQuota(t, c, time.Now().Unix(), startTimeout)

	signals := pick([]syscall.Signal{syscall.SIGTERM, syscall.SIGKILL},
		[]syscall.Signal{syscall.SIGTERM, syscall.SIGKILL, syscall.SIGKILL})
	var results []restartFigures
	for round, sig := range signals {
		r := restartRound(t, c, watcher, sig, want)
		results = append(results, r)
		t.Logf("RESULT restart-all round=%d %s", round+1, r)

		// A write after the restart is acknowledged and kept too.
		user := "after-round-" + strconv.Itoa(round+1)
		c.mustPutLimit(round%centralCount, "front", user, restartResource, float64(round+1), 0)
		want["front/"+user] = float64(round + 1)
	}
	cancel()
	wg.Wait()

	maxDead, where := watcher.maxDeadRun()
	t.Logf("RESULT restart-all agent_max_dead=%v (%s)", maxDead.Round(time.Millisecond), where)
	if maxDead > maxAgentDead {
		t.Errorf("%s listed the running agent %s dead or left for %v, want at most %v", where, agentID, maxDead, maxAgentDead)
	}
	for round, r := range results {
		if r.gossip > gossipBound {
			t.Errorf("round %d: gossip took %v to list the three centrals alive on every central, want at most %v", round+1, r.gossip, gossipBound)
		}
		if r.agentQuota-r.leader > agentQuotaBound {
			t.Errorf("round %d: the agent got a quota %v after the leader was known, want at most %v", round+1, r.agentQuota-r.leader, agentQuotaBound)
		}
	}
}

// restartRound stops every central at once with sig, restarts them and
// measures the time to a leader, to every limit on every central, to
// gossip convergence and to the agent's next quota.
func restartRound(t *testing.T, c *cluster, watcher *memberWatcher, sig syscall.Signal, want map[string]float64) restartFigures {
	t.Helper()
	r := restartFigures{signal: sig}
	r.stopped = c.signalAll(sig)
	restartedAt := time.Now()
	watcher.restarted()
	c.startAll()

	c.waitForLeader(c.indices(), startTimeout)
	r.leader = time.Since(restartedAt)
	for i := range c.nodes {
		c.waitForLimits(i, restartResource, want, true, 15*time.Second)
		c.waitForLimits(i, restartResource, want, false, 15*time.Second)
	}
	r.limits = time.Since(restartedAt)

	c.poll(2*gossipBound, "every central to list the three centrals alive", func() (bool, string) {
		for i := range c.nodes {
			view, err := c.members(i)
			if err != nil {
				return false, err.Error()
			}
			alive := 0
			for _, m := range view.Members {
				if m.Role == "central" && m.State == "alive" {
					alive++
				}
			}
			if alive != centralCount {
				return false, fmt.Sprintf("%s lists %d centrals alive: %+v", c.nodes[i].id, alive, view.Members)
			}
		}
		return true, ""
	})
	r.gossip = time.Since(restartedAt)

	waitForAgentQuota(t, c, restartedAt.Unix(), r.leader+agentQuotaBound+10*time.Second)
	r.agentQuota = time.Since(restartedAt)

	if *longForm {
		if _, ok := pollUntil(agentRejoinBound, func() (bool, string) { return watcher.listedAliveEverywhere(), "" }); !ok {
			t.Errorf("not every central listed the agent %s alive within %v of the restart", agentID, agentRejoinBound)
		}
	}
	if at := watcher.aliveEverywhereAt(); !at.IsZero() {
		r.agentListed = at.Sub(restartedAt)
	}
	return r
}

// startAgent starts a throttle-agent that reports to the three centrals
// and gossips as the edge node agentID, and returns its API address.
func startAgent(t *testing.T, c *cluster) string {
	t.Helper()
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	listen, gossip := "127.0.0.1:"+strconv.Itoa(ports[0]), "127.0.0.1:"+strconv.Itoa(ports[1])
	var centrals, joins []string
	for _, node := range c.nodes {
		centrals = append(centrals, "http://"+node.httpAddr)
		joins = append(joins, node.gossipAddr)
	}
	proc, err := startProcess(c.dir, agentID, built.agent,
		"--node-id", agentID, "--listen", listen, "--centrals", strings.Join(centrals, ","),
		"--fallback", "safe-share", "--gossip-addr", gossip, "--gossip-join", strings.Join(joins, ","))
	if err != nil {
		t.Fatal(err)
	}
	c.agents = append(c.agents, proc)
	client := &http.Client{Timeout: time.Second}
	c.poll(startTimeout, "the agent to answer /healthz", func() (bool, string) {
		resp, err := client.Get("http://" + listen + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return listen
}

// driveAgent sends a throttle check and a consume for agentUser through
// the agent every 100 ms until ctx ends, so the agent reports the user
// every second.
func driveAgent(ctx context.Context, addr string) {
	client := &http.Client{Timeout: time.Second}
	check := "http://" + addr + "/v1/throttle?service=" + agentService + "&user=" + agentUser
	consume := fmt.Sprintf(`{"service":%q,"user":%q,"amounts":{%q:1000}}`, agentService, agentUser, restartResource)
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		resp, err := client.Get(check)
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			continue
		}
		if resp, err := client.Post("http://"+addr+"/v1/consume", "application/json", strings.NewReader(consume)); err == nil {
			resp.Body.Close()
		}
	}
}

// waitForAgentQuota waits until the leader's monitor shows a quota for
// the agent in a slot from fromSlot on.
func waitForAgentQuota(t *testing.T, c *cluster, fromSlot int64, timeout time.Duration) {
	t.Helper()
	c.poll(timeout, fmt.Sprintf("a quota for %s from slot %d on", agentID, fromSlot), func() (bool, string) {
		leader, _, reason := c.leaderOf(c.indices())
		if leader == "" {
			return false, reason
		}
		quotas, err := c.monitorQuota(c.index(leader), agentService, agentUser, restartResource, fromSlot, 0)
		if err != nil {
			return false, err.Error()
		}
		for _, byNode := range quotas {
			if _, ok := byNode[agentID]; ok {
				return true, ""
			}
		}
		return false, fmt.Sprintf("the leader's quotas from slot %d on name no %s: %v", fromSlot, agentID, quotas)
	})
}

// memberWatcher polls GET /v1/members on every central and records how
// long each one lists one edge node dead or left.
type memberWatcher struct {
	c    *cluster
	node string

	mu sync.Mutex
	// deadSince is when each central first listed the node dead or left
	// in its current run of such responses.
	deadSince map[string]time.Time
	// maxDead is the maximum length of such a run, and maxDeadAt names
	// the central and the state.
	maxDead   time.Duration
	maxDeadAt string
	// aliveOn holds the centrals that listed the node alive since the last
	// restart, and allAlive when the last of them did.
	aliveOn  map[string]bool
	allAlive time.Time
}

func newMemberWatcher(c *cluster, node string) *memberWatcher {
	return &memberWatcher{c: c, node: node, deadSince: make(map[string]time.Time), aliveOn: make(map[string]bool)}
}

// run polls every 250 ms until ctx ends. A central that does not respond
// is skipped, because it is restarting, and its next response starts a
// new run.
func (w *memberWatcher) run(ctx context.Context) {
	ticker := time.NewTicker(250 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		for i, node := range w.c.nodes {
			view, err := w.c.members(i)
			now := time.Now()
			if err != nil {
				w.mu.Lock()
				delete(w.deadSince, node.id)
				w.mu.Unlock()
				continue
			}
			idx := slices.IndexFunc(view.Members, func(m member) bool { return m.NodeID == w.node })
			state := "absent"
			if idx >= 0 {
				state = view.Members[idx].State
			}
			w.observe(node.id, state, now)
		}
	}
}

func (w *memberWatcher) observe(central, state string, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if state == "dead" || state == "left" {
		since, ok := w.deadSince[central]
		if !ok {
			w.deadSince[central] = now
			since = now
		}
		if d := now.Sub(since); d > w.maxDead {
			w.maxDead, w.maxDeadAt = d, fmt.Sprintf("%s listed it %s", central, state)
		}
		return
	}
	delete(w.deadSince, central)
	if state == "alive" && !w.aliveOn[central] {
		w.aliveOn[central] = true
		if len(w.aliveOn) == len(w.c.nodes) {
			w.allAlive = now
		}
	}
}

// restarted starts a new observation of which centrals list the node
// alive.
func (w *memberWatcher) restarted() {
	w.mu.Lock()
	defer w.mu.Unlock()
	clear(w.aliveOn)
	clear(w.deadSince)
	w.allAlive = time.Time{}
}

func (w *memberWatcher) listedAliveEverywhere() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.allAlive.IsZero()
}

func (w *memberWatcher) aliveEverywhereAt() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.allAlive
}

func (w *memberWatcher) maxDeadRun() (time.Duration, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.maxDeadAt == "" {
		return 0, "no central listed it dead or left"
	}
	return w.maxDead, w.maxDeadAt
}
