package quota

import "math"

// candidate is one live node in the split of one bucket: the counts of its
// latest report about the user for this resource.
type candidate struct {
	slot        int64
	consumption float64
	rejection   float64
	// observedShare is the share of the total grant the node held for slot,
	// or -1 when it held none (reserve mode only).
	observedShare float64
}

// splitClassic is the original central's rule. avail is the bucket level
// after refill, floored at zero; slot is the slot in which the assignment
// runs. Reports of slot t weigh k = Window - (slot-1-t), so 5 for the
// latest slot and 1 for one four slots older. Nodes whose weighted
// consumption and rejection are both zero share a reserve: all of avail when
// every node is such a zero node, else 0.1 × zero nodes / nodes of it. The
// other nodes split the rest by 0.6 × consumption share + 0.4 × rejection
// share, or by the one of the two that is not zero.
func splitClassic(slot int64, avail float64, cands []candidate, out []float64) {
	var total, rejected float64
	zeros := 0
	for _, c := range cands {
		k := classicWeight(slot, c.slot)
		total += k * c.consumption
		rejected += k * c.rejection
		if c.consumption == 0 && c.rejection == 0 {
			zeros++
		}
	}
	n := float64(len(cands))
	reserve := 0.1 * float64(zeros) / n
	if zeros == len(cands) {
		reserve = 1
	}
	for i, c := range cands {
		if c.consumption == 0 && c.rejection == 0 {
			out[i] = avail * reserve / float64(zeros)
			continue
		}
		k := classicWeight(slot, c.slot)
		var w float64
		switch {
		case total > 0 && rejected > 0:
			w = 0.6*k*c.consumption/total + 0.4*k*c.rejection/rejected
		case rejected == 0:
			w = k * c.consumption / total
		default:
			w = k * c.rejection / rejected
		}
		out[i] = avail * (1 - reserve) * w
	}
}

func classicWeight(slot, reported int64) float64 {
	age := slot - 1 - reported
	if age < 0 {
		age = 0
	}
	return float64(Window) - float64(age)
}

// Tuning of the reserve split. The values were chosen with throttle-sim;
// docs/benchmarks.md shows what they give.
const (
	// creditPerSlot caps, as a fraction of the rate, how much refunded
	// credit one slot's grant may add while any node rejects the user. A
	// grant that went unused on one node while others rejected was a
	// misplacement, not saved-up demand, so it is handed out again at most
	// 5% of the rate per slot instead of as a spike two slots later.
	creditPerSlot = 0.05
	// headroom is the margin a node that rejected nothing gets above its
	// latest consumption, so it can grow before it has to reject.
	headroom = 0.1
	// zeroNodeShare is the fraction of an equal share that a node gets
	// when it reported the user but consumed and rejected nothing of this
	// resource, so it can start serving without waiting for a rejection.
	zeroNodeShare = 0.1
	// shareGain and maxShareStep set how fast the shares of rejecting
	// nodes move towards equal rejections per unit of consumption: the
	// share is multiplied by (rejection ratio / mean ratio)^shareGain,
	// clamped to [1/maxShareStep, maxShareStep].
	shareGain    = 0.5
	maxShareStep = 1.5
	// minSaturatedShare is the fraction of their equal share that rejecting
	// nodes always get together, so a node that reports only rejections is
	// never stuck at zero.
	minSaturatedShare = 0.5
)

// splitReserve splits one slot's grant of a bucket among the live nodes and
// returns the total granted. level is the bucket level after refill, credit
// the part of it that came back from unused grants, and rate the refill per
// slot.
//
// While no node rejects the user, the whole level is granted: each node gets
// its latest consumption plus headroom, and what is left goes to the nodes
// in proportion to that, so stored burst is available where the traffic
// is. Once any node rejects, the grant is the level without the credit plus
// at most creditPerSlot × rate of the credit. Nodes that rejected nothing
// keep consumption plus headroom, and the rejecting nodes share the rest,
// each starting from the share it held when it made the observation and
// corrected towards equal rejections per unit of consumption. With equal
// request sizes that converges to the demand split.
func splitReserve(level, credit, rate float64, cands []candidate, out []float64) float64 {
	grant := math.Max(level, 0)
	saturated := anyRejection(cands)
	if saturated {
		fresh := math.Max(level-credit, 0)
		grant = math.Min(grant, fresh+math.Min(credit, creditPerSlot*rate))
	}
	n := len(cands)
	if grant <= 0 || n == 0 {
		clear(out)
		return 0
	}
	equal := 1 / float64(n)

	// Nodes that rejected nothing: latest consumption plus headroom.
	fixed, zeros := 0.0, 0
	for i, c := range cands {
		out[i] = 0
		if c.rejection > 0 {
			continue
		}
		if c.consumption == 0 {
			out[i] = grant * zeroNodeShare * equal
			zeros++
		} else {
			out[i] = c.consumption * (1 + headroom)
		}
		fixed += out[i]
	}
	if zeros == n {
		for i := range out {
			out[i] = grant * equal
		}
		return grant
	}

	if !saturated {
		// Everything left is burst credit, placed where the traffic is.
		scale := grant / fixed
		for i := range out {
			out[i] *= scale
		}
		return grant
	}

	weights, satCount := saturatedWeights(cands, equal, out)
	rest := grant - fixed
	if floor := grant * minSaturatedShare * equal * float64(satCount); rest < floor {
		rest = floor
		scale := 0.0
		if fixed > 0 {
			scale = (grant - rest) / fixed
		}
		for i, c := range cands {
			if c.rejection == 0 {
				out[i] *= scale
			}
		}
	}
	for i, c := range cands {
		if c.rejection > 0 {
			out[i] = rest * out[i] / weights
		}
	}
	return grant
}

// anyRejection reports whether any node rejected the user: the user's demand
// exceeds what it was granted.
func anyRejection(cands []candidate) bool {
	for _, c := range cands {
		if c.rejection > 0 {
			return true
		}
	}
	return false
}

// saturatedWeights writes a relative weight into out for each rejecting
// node and returns their sum and count.
func saturatedWeights(cands []candidate, equal float64, out []float64) (sum float64, count int) {
	var used, rejected, consumption float64
	for _, c := range cands {
		consumption += c.consumption
		if c.rejection > 0 {
			used += c.consumption
			rejected += c.rejection
		}
	}
	meanRatio := 0.0
	if used > 0 {
		meanRatio = rejected / used
	}
	for i, c := range cands {
		if c.rejection == 0 {
			continue
		}
		base := c.observedShare
		if base < 0 {
			base = equal
			if consumption > 0 {
				base = c.consumption / consumption
			}
		}
		base = math.Max(base, equal*minSaturatedShare)

		step := maxShareStep
		if c.consumption > 0 && meanRatio > 0 {
			step = math.Pow((c.rejection/c.consumption)/meanRatio, shareGain)
			step = math.Min(math.Max(step, 1/maxShareStep), maxShareStep)
		}
		out[i] = base * step
		sum += out[i]
		count++
	}
	return sum, count
}
