// Package demo runs the end-to-end demonstration behind make demo. It
// starts three centrals and four throttle-agent edge nodes on 127.0.0.1 and
// sets one global limit. Skewed demand at three times the limit moves
// between the agents, and an agent and later the leader are killed with
// SIGKILL. The admitted amount is measured every second against the limit.
package demo

import (
	"fmt"
	"time"
)

// Phase sets how the demand is split among the agents from At on, as
// weights that add up to 1, one per agent.
type Phase struct {
	At      time.Duration
	Weights []float64
	// Note describes the phase in the per-second output.
	Note string
}

// Scenario is the sequence of events of a run, as offsets from the start of the demand.
type Scenario struct {
	// Duration is how long demand runs, warm-up included.
	Duration time.Duration
	// Warmup is left out of the result: the first quotas need about three
	// slots to reach the agents.
	Warmup time.Duration
	// Agents is how many agents run.
	Agents int
	// Phases change the demand split; the first must be at 0.
	Phases []Phase
	// KillAgent is the index of the agent killed with SIGKILL at
	// KillAgentAt. Its demand moves to the others, as a load balancer
	// would move it. A zero KillAgentAt kills no agent.
	KillAgent   int
	KillAgentAt time.Duration
	// KillLeaderAt is when the leading central is killed with SIGKILL;
	// zero kills none.
	KillLeaderAt time.Duration
}

// Full is the scenario of make demo: 65 s of demand. The agent killed is
// the one with the least demand, about a tenth of the limit. The quotas of
// the next two seconds were assigned before the kill, so its share is lost
// for about two seconds before it moves to the survivors.
var Full = Scenario{
	Duration: 65 * time.Second,
	Warmup:   5 * time.Second,
	Agents:   4,
	Phases: []Phase{
		{At: 0, Weights: []float64{0.4, 0.3, 0.2, 0.1}, Note: "demand skewed to agent-1"},
		{At: 25 * time.Second, Weights: []float64{0.1, 0.2, 0.3, 0.4}, Note: "demand moves to agent-3"},
		{At: 40 * time.Second, Weights: []float64{0.2, 0.6, 0.1, 0.1}, Note: "demand moves to agent-2"},
	},
	KillAgent:    3,
	KillAgentAt:  15 * time.Second,
	KillLeaderAt: 50 * time.Second,
}

// Short is the same story in 32 s, for the test suite.
var Short = Scenario{
	Duration: 32 * time.Second,
	Warmup:   5 * time.Second,
	Agents:   4,
	Phases: []Phase{
		{At: 0, Weights: []float64{0.4, 0.3, 0.2, 0.1}, Note: "demand skewed to agent-1"},
		{At: 13 * time.Second, Weights: []float64{0.1, 0.2, 0.3, 0.4}, Note: "demand moves to agent-3"},
	},
	KillAgent:    3,
	KillAgentAt:  8 * time.Second,
	KillLeaderAt: 22 * time.Second,
}

// validate checks the scenario's shape.
func (s Scenario) validate() error {
	if s.Agents < 2 {
		return fmt.Errorf("scenario: %d agents; at least 2 are needed so one can be killed", s.Agents)
	}
	if s.Duration <= s.Warmup {
		return fmt.Errorf("scenario: duration %v is not longer than the warm-up %v", s.Duration, s.Warmup)
	}
	if len(s.Phases) == 0 || s.Phases[0].At != 0 {
		return fmt.Errorf("scenario: the first phase must start at 0")
	}
	for i, phase := range s.Phases {
		if len(phase.Weights) != s.Agents {
			return fmt.Errorf("scenario: phase %d has %d weights for %d agents", i, len(phase.Weights), s.Agents)
		}
		sum := 0.0
		for _, w := range phase.Weights {
			if w < 0 {
				return fmt.Errorf("scenario: phase %d has a negative weight %v", i, w)
			}
			sum += w
		}
		if sum < 0.999 || sum > 1.001 {
			return fmt.Errorf("scenario: the weights of phase %d add up to %v, not 1", i, sum)
		}
	}
	if s.KillAgentAt != 0 && (s.KillAgent < 0 || s.KillAgent >= s.Agents) {
		return fmt.Errorf("scenario: agent %d to kill is out of range 0-%d", s.KillAgent, s.Agents-1)
	}
	return nil
}

// weightsAt returns the demand split at offset, with the killed agent's
// weight moved to the others in proportion to theirs.
func (s Scenario) weightsAt(offset time.Duration, killed bool) []float64 {
	phase := s.Phases[0]
	for _, p := range s.Phases {
		if p.At <= offset {
			phase = p
		}
	}
	weights := append([]float64(nil), phase.Weights...)
	if !killed {
		return weights
	}
	moved := weights[s.KillAgent]
	weights[s.KillAgent] = 0
	rest := 1 - moved
	for i := range weights {
		if i == s.KillAgent {
			continue
		}
		if rest > 0 {
			weights[i] += moved * weights[i] / rest
		} else {
			weights[i] = 1 / float64(s.Agents-1)
		}
	}
	return weights
}
