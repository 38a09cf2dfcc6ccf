package quota

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkFleetSecond measures one second of a leader at fleet size: 500
// nodes each report the same 1,000 users x 4 resources, all with limits,
// and then the slot's assignment runs. ns/report is the mean time of one
// Ingest with the state of all 500 nodes in memory, which decides how long
// a burst of reports queues. assign-ms is the assignment's wall time. It
// takes about 10 s, so run it by name: go test -run '^$' -bench
// FleetSecond -benchtime 3x ./quota
func BenchmarkFleetSecond(b *testing.B) {
	const nodeCount, userCount = 500, 1000
	users := benchUserNames(userCount)
	nodes := make([]benchNodeCounts, nodeCount)
	for i := range nodes {
		nodes[i] = newBenchNodeCounts(i, users)
	}
	b.Run(fmt.Sprintf("nodes=%d/users=%d", nodeCount, userCount), func(b *testing.B) {
		e := newBenchEngine(b, ModeReserve, users)
		slot := int64(benchFirstSlot)
		for range benchWarmupSlots {
			slot++
			ingestBenchSlot(b, e, nodes, slot)
			assignBenchSlot(b, e, slot)
		}
		var ingest, assign time.Duration
		for b.Loop() {
			slot++
			for i := range nodes {
				report := nodes[i].reportFor(slot)
				start := time.Now()
				if _, err := e.Ingest(report); err != nil {
					b.Fatalf("Ingest(node %d, slot %d): %v", i, slot, err)
				}
				ingest += time.Since(start)
			}
			start := time.Now()
			assignBenchSlot(b, e, slot)
			assign += time.Since(start)
		}
		b.ReportMetric(float64(ingest.Nanoseconds())/float64(b.N*nodeCount), "ns/report")
		b.ReportMetric(float64(assign.Milliseconds())/float64(b.N), "assign-ms")
	})
}
