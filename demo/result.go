package demo

import (
	"fmt"
	"math"
	"slices"
)

// Summary is the per-second admitted amount over the limit, after the
// warm-up.
type Summary struct {
	Seconds             int
	Mean, P5, P95, Max  float64
	Min                 float64
	AgentShareMovedSecs int // -1 when no agent was killed or the share never moved
}

// Ratios returns admitted / limit for each second after the warm-up.
func (r Result) Ratios() []float64 {
	var ratios []float64
	for _, s := range r.Seconds {
		if s.Offset >= r.Warmup {
			ratios = append(ratios, s.Admitted/r.Limit)
		}
	}
	return ratios
}

// Summarize returns the run's summary.
func (r Result) Summarize() Summary {
	ratios := r.Ratios()
	out := Summary{Seconds: len(ratios), AgentShareMovedSecs: r.shareMovedAfter()}
	if len(ratios) == 0 {
		return out
	}
	sorted := slices.Clone(ratios)
	slices.Sort(sorted)
	sum := 0.0
	for _, ratio := range sorted {
		sum += ratio
	}
	out.Mean = sum / float64(len(sorted))
	out.P5 = percentile(sorted, 0.05)
	out.P95 = percentile(sorted, 0.95)
	out.Min = sorted[0]
	out.Max = sorted[len(sorted)-1]
	return out
}

// ResultLine is the last line of make demo.
func (s Summary) ResultLine() string {
	return fmt.Sprintf("RESULT mean=%.3f p5=%.3f p95=%.3f max=%.3f", s.Mean, s.P5, s.P95, s.Max)
}

// shareMovedAfter returns how many seconds after the agent kill the
// survivors first admitted at least 0.9 of the limit in a whole second,
// counting the second of the kill as 0, or -1.
func (r Result) shareMovedAfter() int {
	if r.AgentKilledAt < 0 {
		return -1
	}
	for _, s := range r.Seconds {
		if s.Offset > r.AgentKilledAt && s.Admitted >= 0.9*r.Limit {
			return s.Offset - r.AgentKilledAt
		}
	}
	return -1
}

// MaxAround returns the largest admitted / limit in the seconds from
// offset to offset+window, inclusive.
func (r Result) MaxAround(offset, window int) float64 {
	highest := 0.0
	for _, s := range r.Seconds {
		if s.Offset >= offset && s.Offset <= offset+window {
			highest = math.Max(highest, s.Admitted/r.Limit)
		}
	}
	return highest
}

// percentile returns the p-quantile of sorted by the nearest-rank method.
func percentile(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}
