package demo

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// pace is how often each agent's demand is released.
	pace = 10 * time.Millisecond
	// workersPerAgent bounds the requests in flight to one agent.
	workersPerAgent = 16
	// settle is how long after a second ends its line waits for requests
	// still in flight.
	settle = 400 * time.Millisecond
)

// tally collects the per-second record while demand runs.
type tally struct {
	mu      sync.Mutex
	start   int64 // unix second of offset 0
	agents  int
	seconds map[int]*Second
}

func (t *tally) second(unix int64) *Second {
	offset := int(unix - t.start)
	s := t.seconds[offset]
	if s == nil {
		s = &Second{Offset: offset, ByAgent: make([]float64, t.agents)}
		t.seconds[offset] = s
	}
	return s
}

func (t *tally) admit(agent int, amount float64, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.second(at.Unix())
	s.Admitted += amount
	s.ByAgent[agent] += amount
}

func (t *tally) reject(at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.second(at.Unix()).Rejected++
}

func (t *tally) fail(at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.second(at.Unix()).Failed++
}

func (t *tally) event(at time.Time, text string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.second(at.Unix())
	s.Events = append(s.Events, text)
}

func (t *tally) setLeader(unix int64, leader string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.second(unix).Leader = leader
}

// snapshot returns a copy of one second's record.
func (t *tally) snapshot(offset int) Second {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.second(t.start + int64(offset))
	out := *s
	out.ByAgent = append([]float64(nil), s.ByAgent...)
	out.Events = append([]string(nil), s.Events...)
	return out
}

// driver sends one agent's share of the demand.
type driver struct {
	index  int
	agent  *agent
	client *http.Client
	tally  *tally
	size   float64
	// rateBits is the demand in requests per second, as float64 bits.
	rateBits atomic.Uint64
	pending  chan struct{}
}

func (d *driver) setRate(rate float64) { d.rateBits.Store(math.Float64bits(rate)) }
func (d *driver) rate() float64        { return math.Float64frombits(d.rateBits.Load()) }

// pace releases the agent's requests every pace interval until ctx ends.
func (d *driver) pace(ctx context.Context) {
	ticker := time.NewTicker(pace)
	defer ticker.Stop()
	due := 0.0
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			due += d.rate() * pace.Seconds()
			for ; due >= 1; due-- {
				select {
				case d.pending <- struct{}{}:
				default:
					d.tally.fail(now)
				}
			}
		}
	}
}

// work serves released requests until ctx ends: a throttle check, and a
// consume when the agent allows the request.
func (d *driver) work(ctx context.Context) {
	base := "http://" + d.agent.listenAddr
	check := base + "/v1/throttle?service=" + service + "&user=" + user
	consume := fmt.Sprintf(`{"service":%q,"user":%q,"amounts":{%q:%d}}`, service, user, resource, int64(d.size))
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.pending:
		}
		status, err := d.do(ctx, http.MethodGet, check, "")
		now := time.Now()
		switch {
		case err != nil:
			d.tally.fail(now)
		case status == http.StatusTooManyRequests:
			d.tally.reject(now)
		case status == http.StatusOK:
			if status, err := d.do(ctx, http.MethodPost, base+"/v1/consume", consume); err != nil || status/100 != 2 {
				d.tally.fail(now)
			} else {
				d.tally.admit(d.index, d.size, now)
			}
		default:
			d.tally.fail(now)
		}
	}
}

func (d *driver) do(ctx context.Context, method, url, body string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// drive runs the scenario's demand, kills and per-second output, and
// returns the record.
func (c *cluster) drive(ctx context.Context, cfg Config) (Result, error) {
	s := cfg.Scenario
	transport := &http.Transport{MaxIdleConnsPerHost: workersPerAgent, MaxConnsPerHost: workersPerAgent}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 2 * time.Second}

	// Demand starts at a whole second, so offsets are whole slots.
	now := time.Now()
	startAt := now.Truncate(time.Second).Add(time.Second)
	t := &tally{start: startAt.Unix(), agents: s.Agents, seconds: make(map[int]*Second)}
	result := Result{Limit: cfg.Limit, Warmup: int(s.Warmup / time.Second), AgentKilledAt: -1, LeaderKilledAt: -1}
	total := cfg.Demand * cfg.Limit / cfg.RequestSize

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	drivers := make([]*driver, s.Agents)
	for i, a := range c.agents {
		d := &driver{index: i, agent: a, client: client, tally: t, size: cfg.RequestSize, pending: make(chan struct{}, 1000)}
		drivers[i] = d
		wg.Go(func() { d.pace(runCtx) })
		for range workersPerAgent {
			wg.Go(func() { d.work(runCtx) })
		}
	}
	setWeights := func(offset time.Duration, killed bool) {
		for i, w := range s.weightsAt(offset, killed) {
			drivers[i].setRate(w * total)
		}
	}

	fmt.Fprintf(cfg.Out, "demand: %s/s (%.0fx the limit) in %s requests for %v; the first %v are warm-up\n",
		megabytes(cfg.Demand*cfg.Limit), cfg.Demand, megabytes(cfg.RequestSize), s.Duration, s.Warmup)
	fmt.Fprintf(cfg.Out, "%5s  %-9s %6s  %-27s %8s %6s  %-9s %s\n", "time", "admitted", "xlimit", "by agent (MB)", "rejected", "failed", "leader", "events")

	timer := time.NewTimer(time.Until(startAt))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return result, ctx.Err()
	case <-timer.C:
	}
	killed := false
	setWeights(0, false)
	t.event(startAt, s.Phases[0].Note)

	seconds := int(s.Duration / time.Second)
	for offset := 0; offset < seconds; offset++ {
		secondStart := startAt.Add(time.Duration(offset) * time.Second)
		// Work through the second in steps: events first, then the leader
		// probe, then the line of the previous second once it settled.
		for _, phase := range s.Phases[1:] {
			if phase.At == time.Duration(offset)*time.Second {
				setWeights(phase.At, killed)
				t.event(secondStart, phase.Note)
			}
		}
		if s.KillAgentAt != 0 && time.Duration(offset)*time.Second == s.KillAgentAt {
			a := c.agents[s.KillAgent]
			a.proc.kill()
			killed = true
			setWeights(s.KillAgentAt, true)
			result.AgentKilledAt = offset
			t.event(time.Now(), fmt.Sprintf("SIGKILL %s (PID %d); its demand moves to the others", a.id, a.proc.pid()))
		}
		if s.KillLeaderAt != 0 && time.Duration(offset)*time.Second == s.KillLeaderAt {
			if id := c.leader(); id != "" {
				for _, node := range c.centrals {
					if node.id == id {
						node.proc.kill()
						result.LeaderKilledAt = offset
						result.KilledLeader = id
						t.event(time.Now(), fmt.Sprintf("SIGKILL leader %s (PID %d)", id, node.proc.pid()))
					}
				}
			} else {
				t.event(time.Now(), "no leader to kill")
			}
		}
		if err := sleepUntil(ctx, secondStart.Add(settle)); err != nil {
			return result, err
		}
		t.setLeader(secondStart.Unix(), c.leaderLabel())
		if offset > 0 {
			printSecond(cfg.Out, t.snapshot(offset-1), cfg.Limit)
		}
		if err := sleepUntil(ctx, secondStart.Add(time.Second)); err != nil {
			return result, err
		}
	}
	cancel()
	wg.Wait()
	last := t.snapshot(seconds - 1)
	printSecond(cfg.Out, last, cfg.Limit)

	for offset := range seconds {
		result.Seconds = append(result.Seconds, t.snapshot(offset))
	}
	return result, nil
}

// sleepUntil waits until at, or returns ctx's error when ctx ends first.
func sleepUntil(ctx context.Context, at time.Time) error {
	timer := time.NewTimer(time.Until(at))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// printSecond writes one second's line.
func printSecond(out io.Writer, s Second, limit float64) {
	parts := make([]string, len(s.ByAgent))
	for i, amount := range s.ByAgent {
		parts[i] = strconv.FormatFloat(amount/1e6, 'f', 0, 64)
	}
	fmt.Fprintf(out, "%4ds  %-9s %6.3f  %-27s %8d %6d  %-9s %s\n", s.Offset, megabytes(s.Admitted), s.Admitted/limit,
		strings.Join(parts, " / "), s.Rejected, s.Failed, orDash(s.Leader), strings.Join(s.Events, "; "))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
