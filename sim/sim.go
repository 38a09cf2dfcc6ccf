// Package sim is the accuracy simulator: it drives the real quota engine
// and the real edge throttle logic with simulated time and measures how
// close each second's admitted amount stays to the limit.
//
// Time advances in ticks of 50 ms, 20 per slot; nothing sleeps. In every
// slot each live edge node sends its report at the first tick and stores
// the reply (its quotas for the next slot and its users' safe shares), the
// leader assigns the quotas of slot+2 at tick 10, and requests arrive
// evenly over all 20 ticks. Each request is checked with the edge logic's
// Throttle and, when allowed, counted with Consume, as an edge node does.
// Edge nodes count only what they admit.
package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/throttlecentral/throttle-central/edge"
	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
)

const (
	ticksPerSlot = 20
	reportTick   = 1
	assignTick   = 10

	service  = "front"
	user     = "alice"
	resource = "traffic_up"

	// requestsPerLimit is how many average-sized requests make up one
	// second of the limit; request sizes vary uniformly by ±50%.
	requestsPerLimit = 200
	// checkpointEvery is how often, in slots, the leader takes a
	// checkpoint for a successor.
	checkpointEvery = 5
	// shareSyncEvery is how often, in slots, edge nodes refresh the safe
	// shares of every limited user, as an edge library that keeps the
	// limit table in sync does. Shares of reported users also arrive with
	// every reply.
	shareSyncEvery = 10
	// convergeRun is how many slots in a row must stay within 5% of the
	// limit to count as converged.
	convergeRun = 5
)

// Scenario is one simulated run. Slots are counted from 1.
type Scenario struct {
	Name        string
	Description string
	// Slots is the length of the run.
	Slots int
	// Nodes is how many edge nodes exist; a node with zero demand in a
	// slot still reports.
	Nodes int
	// Limit returns the limit in force from the given slot on.
	Limit func(slot int) float64
	// Demand returns each node's demand in the slot, in tokens.
	Demand func(slot int) []float64
	// DeadFrom marks nodes that crash (stop reporting and serving) from a
	// slot on; the key is the node index.
	DeadFrom map[int]int
	// Gossip reports to the leader that a crashed node is dead from the slot after
	// the crash. Without it the node drops out once its reports are older
	// than the engine's window.
	Gossip bool
	// LeaderDown is the slot in which the leader crashes, before its
	// assignment; zero for none. LeaderGap slots later, at the start of the
	// slot, a new leader resumes from the last checkpoint.
	LeaderDown int
	LeaderGap  int
	// MeasureFrom is the first slot that counts for the statistics.
	MeasureFrom int
	// ChangeAt is the slot of a change whose convergence is measured;
	// zero for none.
	ChangeAt int
	// Watch is a node whose first quota after ChangeAt is measured; -1 for
	// none.
	Watch int
}

// Result is the accuracy of one scenario in one allocation mode. The rate
// fields are the per-second admitted amount divided by the limit in force,
// over the measured slots.
type Result struct {
	Scenario string  `json:"scenario"`
	Mode     string  `json:"mode"`
	Mean     float64 `json:"mean"`
	P5       float64 `json:"p5"`
	P50      float64 `json:"p50"`
	P95      float64 `json:"p95"`
	Max      float64 `json:"max"`
	// ConvergeSlots is how many slots after the scenario's change the
	// admitted rate first stays within 5% of the limit for convergeRun
	// slots in a row; -1 when it never does, and also -1 when the scenario
	// has no change.
	ConvergeSlots int `json:"converge_slots"`
	// FirstQuotaSlots is how many slots after ChangeAt the watched node
	// first holds a quota from the central for the user; -1 when never or
	// when nothing is watched.
	FirstQuotaSlots int `json:"first_quota_slots"`
	// Ratios are the per-slot ratios of the whole run, for plots and
	// tests; not printed as JSON.
	Ratios []float64 `json:"-"`
}

// Run simulates one scenario in one mode. The same seed gives the same
// result.
func Run(sc Scenario, mode quota.Mode, seed uint64) (Result, error) {
	r, err := newRun(sc, mode, seed)
	if err != nil {
		return Result{}, err
	}
	for slot := 1; slot <= sc.Slots; slot++ {
		if err := r.step(slot); err != nil {
			return Result{}, fmt.Errorf("scenario %s, mode %s, slot %d: %w", sc.Name, mode, slot, err)
		}
	}
	return r.result(), nil
}

// base is the unix second that simulated slot 1 maps to, so slot numbers
// look like real ones.
const base = 1_800_000_000

type run struct {
	sc   Scenario
	mode quota.Mode
	rng  *rand.Rand

	leader     *quota.Engine
	checkpoint *quota.Checkpoint
	limitSlot  int64
	limitNow   float64

	nodes       []*edge.Throttler
	admitted    []float64
	gotQuota    int
	currentSlot int
}

func newRun(sc Scenario, mode quota.Mode, seed uint64) (*run, error) {
	r := &run{
		sc:       sc,
		mode:     mode,
		rng:      rand.New(rand.NewPCG(seed, 0x7468726f74746c65)),
		admitted: make([]float64, sc.Slots+1),
		gotQuota: -1,
	}
	leader, err := quota.New(quota.Config{Mode: mode})
	if err != nil {
		return nil, err
	}
	r.leader = leader
	for range sc.Nodes {
		th, err := edge.NewThrottler(edge.Options{DefaultFallback: edge.FallbackSafeShare})
		if err != nil {
			return nil, err
		}
		r.nodes = append(r.nodes, th)
	}
	return r, nil
}

func nodeID(i int) string { return fmt.Sprintf("edge-%d", i+1) }

func (r *run) dead(i, slot int) bool {
	from, ok := r.sc.DeadFrom[i]
	return ok && slot >= from
}

// Live reports a node as dead once gossip has noticed its crash, one slot
// after it.
func (r *run) Live(id string) bool {
	if !r.sc.Gossip {
		return true
	}
	for i := range r.nodes {
		if nodeID(i) == id {
			from, ok := r.sc.DeadFrom[i]
			return !ok || r.currentSlot < from+1
		}
	}
	return true
}

func (r *run) leaderUp(slot int) bool {
	return r.sc.LeaderDown == 0 || slot < r.sc.LeaderDown || slot >= r.sc.LeaderDown+r.sc.LeaderGap
}

func (r *run) step(slot int) error {
	unix := int64(base + slot)
	r.currentSlot = slot

	if err := r.applyLimit(slot, unix); err != nil {
		return err
	}
	if r.sc.LeaderDown != 0 && slot == r.sc.LeaderDown+r.sc.LeaderGap {
		if err := r.failOver(unix); err != nil {
			return err
		}
	}
	if slot == 1 || slot%shareSyncEvery == 0 {
		r.syncShares()
	}

	demand := r.sc.Demand(slot)
	sizes := make([][]float64, len(r.nodes))
	for i, d := range demand {
		sizes[i] = r.requests(d)
	}
	next := make([]int, len(r.nodes))
	for tick := range ticksPerSlot {
		if tick == reportTick {
			r.report(slot, unix)
		}
		if tick == assignTick && r.leaderUp(slot) {
			if _, err := r.leader.Assign(unix, r); err != nil {
				return err
			}
			if slot%checkpointEvery == 0 {
				cp := r.leader.Checkpoint()
				r.checkpoint = &cp
			}
		}
		for i, th := range r.nodes {
			if r.dead(i, slot) {
				continue
			}
			// Requests spread evenly over the ticks.
			end := len(sizes[i]) * (tick + 1) / ticksPerSlot
			for ; next[i] < end; next[i]++ {
				size := sizes[i][next[i]]
				if th.Throttle(unix, service, user).Allowed {
					th.Consume(unix, service, user, map[string]float64{resource: size})
					r.admitted[slot] += size
				}
			}
		}
	}
	return nil
}

// requests returns request sizes that add up to about demand tokens.
func (r *run) requests(demand float64) []float64 {
	mean := r.limitNow / requestsPerLimit
	var sizes []float64
	for total := 0.0; total < demand; {
		size := mean * (0.5 + r.rng.Float64())
		sizes = append(sizes, size)
		total += size
	}
	return sizes
}

// applyLimit sets the scenario's limit when it changes, as a committed
// limit change reaches the leader's engine.
func (r *run) applyLimit(slot int, unix int64) error {
	limit := r.sc.Limit(slot)
	if limit == r.limitNow {
		return nil
	}
	r.limitNow, r.limitSlot = limit, unix
	return r.leader.SetLimits(service, user, map[string]quota.Limit{resource: {Rate: limit}}, unix)
}

// failOver replaces the leader by a new engine that has the limits (from
// the replicated log) and resumes from the last checkpoint.
func (r *run) failOver(unix int64) error {
	next, err := quota.New(quota.Config{Mode: r.mode})
	if err != nil {
		return err
	}
	if err := next.SetLimits(service, user, map[string]quota.Limit{resource: {Rate: r.limitNow}}, r.limitSlot); err != nil {
		return err
	}
	if r.checkpoint != nil {
		if err := next.Restore(*r.checkpoint, unix); err != nil {
			return err
		}
	}
	r.leader = next
	return nil
}

func (r *run) syncShares() {
	live := 0
	for i := range r.nodes {
		if !r.dead(i, r.currentSlot) {
			live++
		}
	}
	shares := protocol.Shares{user: {resource: r.limitNow / float64(max(live, 1))}}
	for _, th := range r.nodes {
		th.SetShares(service, shares)
	}
}

// report sends every live node's report to the leader and stores the
// reply. While there is no leader the reports are lost, as they are when
// no central responds.
func (r *run) report(slot int, unix int64) {
	for i, th := range r.nodes {
		if r.dead(i, slot) {
			continue
		}
		rep := th.TakeReport(nodeID(i), unix)
		if !r.leaderUp(slot) {
			continue
		}
		if _, err := r.leader.Ingest(&rep); err != nil {
			panic(fmt.Sprintf("sim: report rejected: %v", err))
		}
		quotas := r.leader.Quotas(nodeID(i), unix+1, []string{service})
		th.SetQuotas(service, unix+1, quotas[service])
		if _, ok := quotas[service][user]; ok && r.sc.Watch == i && r.sc.ChangeAt != 0 && slot >= r.sc.ChangeAt && r.gotQuota < 0 {
			r.gotQuota = slot + 1 - r.sc.ChangeAt
		}
		if _, named := rep.Consumption[service][user]; named {
			th.SetShares(service, r.leader.Shares(service, []string{user}))
		}
	}
}

func (r *run) result() Result {
	res := Result{Scenario: r.sc.Name, Mode: string(r.mode), ConvergeSlots: -1, FirstQuotaSlots: r.gotQuota}
	res.Ratios = make([]float64, r.sc.Slots+1)
	for slot := 1; slot <= r.sc.Slots; slot++ {
		res.Ratios[slot] = r.admitted[slot] / r.sc.Limit(slot)
	}
	measured := slices.Clone(res.Ratios[r.sc.MeasureFrom:])
	slices.Sort(measured)
	sum := 0.0
	for _, v := range measured {
		sum += v
	}
	res.Mean = sum / float64(len(measured))
	res.P5 = percentile(measured, 5)
	res.P50 = percentile(measured, 50)
	res.P95 = percentile(measured, 95)
	res.Max = measured[len(measured)-1]
	if r.sc.ChangeAt != 0 {
		for slot := r.sc.ChangeAt; slot+convergeRun-1 <= r.sc.Slots; slot++ {
			if within(res.Ratios[slot:slot+convergeRun], 0.05) {
				res.ConvergeSlots = slot - r.sc.ChangeAt
				break
			}
		}
	}
	return res
}

// percentile returns the nearest-rank p-th percentile of sorted values.
func percentile(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(rank-1, 0)]
}

func within(ratios []float64, tolerance float64) bool {
	for _, v := range ratios {
		if math.Abs(v-1) > tolerance {
			return false
		}
	}
	return true
}
