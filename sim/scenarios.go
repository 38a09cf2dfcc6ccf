package sim

// limit is the rate of the simulated user: 1 MB/s.
const limit = 1_000_000

func constant(v float64) func(int) float64 { return func(int) float64 { return v } }

// split returns per-node demand: total × each weight.
func split(total float64, weights ...float64) []float64 {
	out := make([]float64, len(weights))
	for i, w := range weights {
		out[i] = total * w
	}
	return out
}

// Scenarios returns every scenario, in the order they are printed.
func Scenarios() []Scenario {
	return []Scenario{
		{
			Name:        "steady",
			Description: "3 nodes, demand 3 x limit split 60/30/10",
			Slots:       90, Nodes: 3, MeasureFrom: 11, Watch: -1,
			Limit:  constant(limit),
			Demand: func(int) []float64 { return split(3*limit, 0.6, 0.3, 0.1) },
		},
		{
			Name:        "moving",
			Description: "3 x limit moves from 60/30/10 to 10/30/60 at slot 30 and to 10/80/10 at slot 60",
			Slots:       90, Nodes: 3, MeasureFrom: 11, ChangeAt: 30, Watch: -1,
			Limit: constant(limit),
			Demand: func(slot int) []float64 {
				switch {
				case slot < 30:
					return split(3*limit, 0.6, 0.3, 0.1)
				case slot < 60:
					return split(3*limit, 0.1, 0.3, 0.6)
				default:
					return split(3*limit, 0.1, 0.8, 0.1)
				}
			},
		},
		{
			Name:        "new-node",
			Description: "a 4th node starts taking 40% of 3 x limit at slot 30",
			Slots:       60, Nodes: 4, MeasureFrom: 11, ChangeAt: 30, Watch: 3,
			Limit: constant(limit),
			Demand: func(slot int) []float64 {
				if slot < 30 {
					return split(3*limit, 0.6, 0.3, 0.1, 0)
				}
				return split(3*limit, 0.3, 0.2, 0.1, 0.4)
			},
		},
		{
			Name:        "node-dies-gossip",
			Description: "the 60% node crashes at slot 30, its demand moves to the others; gossip reports it dead",
			Slots:       60, Nodes: 3, MeasureFrom: 11, ChangeAt: 30, Watch: -1, Gossip: true,
			DeadFrom: map[int]int{0: 30},
			Limit:    constant(limit),
			Demand:   dyingNodeDemand,
		},
		{
			Name:        "node-dies",
			Description: "as node-dies-gossip, but without gossip: the node drops out when its reports age",
			Slots:       60, Nodes: 3, MeasureFrom: 11, ChangeAt: 30, Watch: -1,
			DeadFrom: map[int]int{0: 30},
			Limit:    constant(limit),
			Demand:   dyingNodeDemand,
		},
		{
			Name:        "failover",
			Description: "the leader crashes at slot 30; a new leader resumes from the last checkpoint 2 slots later",
			Slots:       60, Nodes: 3, MeasureFrom: 11, ChangeAt: 30, Watch: -1,
			LeaderDown: 30, LeaderGap: 2,
			Limit:  constant(limit),
			Demand: func(int) []float64 { return split(3*limit, 0.6, 0.3, 0.1) },
		},
		{
			Name:        "cold-start",
			Description: "a new user with 10 x limit of demand from the first slot, 3 nodes 60/30/10",
			Slots:       40, Nodes: 3, MeasureFrom: 1, Watch: -1,
			Limit:  constant(limit),
			Demand: func(int) []float64 { return split(10*limit, 0.6, 0.3, 0.1) },
		},
		{
			Name:        "burst-after-idle",
			Description: "0.5 x limit until slot 20, idle until slot 40 (the bucket fills to the 10 x limit burst), then 3 x limit",
			Slots:       80, Nodes: 3, MeasureFrom: 40, ChangeAt: 40, Watch: -1,
			Limit: constant(limit),
			Demand: func(slot int) []float64 {
				switch {
				case slot < 20:
					return split(0.5*limit, 0.6, 0.3, 0.1)
				case slot < 40:
					return split(0, 0.6, 0.3, 0.1)
				}
				return split(3*limit, 0.6, 0.3, 0.1)
			},
		},
		{
			Name:        "limit-change",
			Description: "3 x limit of demand; the limit halves at slot 30 and is restored at slot 50",
			Slots:       70, Nodes: 3, MeasureFrom: 11, ChangeAt: 30, Watch: -1,
			Limit: func(slot int) float64 {
				if slot >= 30 && slot < 50 {
					return limit / 2
				}
				return limit
			},
			Demand: func(int) []float64 { return split(3*limit, 0.6, 0.3, 0.1) },
		},
		{
			Name:        "light",
			Description: "demand 0.5 x limit split 60/30/10: nothing should be rejected",
			Slots:       60, Nodes: 3, MeasureFrom: 11, Watch: -1,
			Limit:  constant(limit),
			Demand: func(int) []float64 { return split(0.5*limit, 0.6, 0.3, 0.1) },
		},
	}
}

func dyingNodeDemand(slot int) []float64 {
	if slot < 30 {
		return split(3*limit, 0.6, 0.3, 0.1)
	}
	return split(3*limit, 0, 0.75, 0.25)
}
