package membership

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	membersDesc = prometheus.NewDesc("throttle_gossip_members",
		"Gossip members in this member's view, by role and state (alive, dead, left). Dead and left members count until DeadRetention has passed.",
		[]string{"role", "state"}, nil)
	healthDesc = prometheus.NewDesc("throttle_gossip_health_score",
		"memberlist's awareness score of this member: 0 when it meets its probe deadlines, higher when it is too slow to judge others fairly.",
		nil, nil)
)

// collector exports the pool's view at every scrape, so no gauge goes
// stale when a member disappears.
type collector struct {
	pool *Pool
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- membersDesc
	ch <- healthDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counts := make(map[Role]map[State]int)
	for _, role := range []Role{RoleCentral, RoleEdge} {
		counts[role] = map[State]int{StateAlive: 0, StateDead: 0, StateLeft: 0}
	}
	for _, m := range c.pool.Members() {
		if counts[m.Role] != nil {
			counts[m.Role][m.State]++
		}
	}
	for role, states := range counts {
		for state, n := range states {
			ch <- prometheus.MustNewConstMetric(membersDesc, prometheus.GaugeValue, float64(n), string(role), string(state))
		}
	}
	ch <- prometheus.MustNewConstMetric(healthDesc, prometheus.GaugeValue, float64(c.pool.list.GetHealthScore()))
}
