package quota

import (
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/throttlecentral/throttle-central/protocol"
)

const (
	benchService = "front"
	// benchFirstSlot is the slot in which the benchmark limits are set.
	benchFirstSlot = 1_000_000
	// benchWarmupSlots is how many slots of reports and assignments run
	// before the timer starts. A report sent in slot S settles the grant
	// that the assignment of slot S-3 made, so from then on every report
	// settles grants, as in a running central.
	benchWarmupSlots = 3
)

// benchResources are the resources every benchmark user has a limit on.
var benchResources = []string{"traffic_up", "traffic_down", "requests", "database_read"}

// benchUserNames returns the names of n users.
func benchUserNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("user-%d", i)
	}
	return names
}

// newBenchEngine returns an engine in mode in which every user has a limit
// on each of benchResources, set in benchFirstSlot.
func newBenchEngine(b *testing.B, mode Mode, users []string) *Engine {
	b.Helper()
	e, err := New(Config{Mode: mode})
	if err != nil {
		b.Fatalf("New(%q): %v", mode, err)
	}
	limits := make(map[string]Limit, len(benchResources))
	for j, resource := range benchResources {
		limits[resource] = Limit{Rate: float64(1000 * (j + 1))}
	}
	for _, user := range users {
		if err := e.SetLimits(benchService, user, limits, benchFirstSlot); err != nil {
			b.Fatalf("SetLimits(%s, %s): %v", benchService, user, err)
		}
	}
	return e
}

// benchNodeCounts contains the counts one edge node reports every slot. The maps are
// never changed after they are built, so the reports of every slot share
// them.
type benchNodeCounts struct {
	node        string
	consumption protocol.Counts
	rejection   protocol.Counts
}

// newBenchNodeCounts builds the counts of node index node about every user:
// a consumption of 1 to 500 per resource, and a rejection of the first
// resource on one user in ten, so that reserve mode also runs its saturated
// split.
func newBenchNodeCounts(node int, users []string) benchNodeCounts {
	consumption := make(map[string]map[string]float64, len(users))
	rejection := make(map[string]map[string]float64, len(users)/10+1)
	for i, user := range users {
		amounts := make(map[string]float64, len(benchResources))
		for j, resource := range benchResources {
			amounts[resource] = float64((i*7+node*13+j*31)%500 + 1)
		}
		consumption[user] = amounts
		if (i+node)%10 == 0 {
			rejection[user] = map[string]float64{benchResources[0]: 3}
		}
	}
	return benchNodeCounts{
		node:        fmt.Sprintf("edge-%d", node),
		consumption: protocol.Counts{benchService: consumption},
		rejection:   protocol.Counts{benchService: rejection},
	}
}

// reportFor returns a new report sent in slot, carrying the counts of
// slot-1. The engine keeps every report it ingests, so each call needs its
// own.
func (c benchNodeCounts) reportFor(slot int64) *protocol.Report {
	return &protocol.Report{
		NodeID:      c.node,
		Slot:        slot,
		Consumption: c.consumption,
		Rejection:   c.rejection,
	}
}

// ingestBenchSlot ingests the report of every node sent in slot, one
// goroutine per node as reports arrive in a central, and fails the
// benchmark on an error or a report skipped as a duplicate.
func ingestBenchSlot(b *testing.B, e *Engine, nodes []benchNodeCounts, slot int64) {
	b.Helper()
	results := make([]IngestResult, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, counts := range nodes {
		wg.Go(func() {
			results[i], errs[i] = e.Ingest(counts.reportFor(slot))
		})
	}
	wg.Wait()

	for i, counts := range nodes {
		if errs[i] != nil {
			b.Fatalf("Ingest(%s, slot %d): %v", counts.node, slot, errs[i])
		}
		if results[i].Duplicate {
			b.Fatalf("Ingest(%s, slot %d): skipped as a duplicate", counts.node, slot)
		}
	}
}

func assignBenchSlot(b *testing.B, e *Engine, slot int64) AssignResult {
	b.Helper()
	result, err := e.Assign(slot, nil)
	if err != nil {
		b.Fatalf("Assign(%d): %v", slot, err)
	}
	return result
}

// liveHeapMB runs a garbage collection and returns the live heap, in
// megabytes (10^6 bytes).
func liveHeapMB() float64 {
	runtime.GC()
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	return float64(stats.HeapAlloc) / 1e6
}

// BenchmarkIngest measures Ingest of one report about 1,000 users with
// limits on 4 resources each. Every iteration ingests the report of a new
// slot, because the engine skips a repeated slot as a duplicate. After each
// report the slot's assignment runs with the timer stopped, so in reserve
// mode every report settles a grant for each user, as in a running central.
func BenchmarkIngest(b *testing.B) {
	const userCount = 1000
	users := benchUserNames(userCount)
	counts := []benchNodeCounts{newBenchNodeCounts(0, users)}
	for _, mode := range Modes {
		b.Run("mode="+string(mode), func(b *testing.B) {
			e := newBenchEngine(b, mode, users)
			slot := int64(benchFirstSlot)
			for range benchWarmupSlots {
				slot++
				ingestBenchSlot(b, e, counts, slot)
				assignBenchSlot(b, e, slot)
			}
			b.ReportAllocs()

			slot++
			report := counts[0].reportFor(slot)
			for b.Loop() {
				result, err := e.Ingest(report)
				if err != nil {
					b.Fatalf("Ingest(slot %d): %v", slot, err)
				}

				b.StopTimer()
				if result.Duplicate || result.Users != userCount {
					b.Fatalf("Ingest(slot %d) = %+v, want %d users applied", slot, result, userCount)
				}
				assignBenchSlot(b, e, slot)
				slot++
				report = counts[0].reportFor(slot)
				b.StartTimer()
			}

			b.ReportMetric(float64(userCount*b.N)/b.Elapsed().Seconds(), "users/s")
		})
	}
}

// BenchmarkAssign measures one assignment in which every user has limits on
// 4 resources and every node reported every user, so it computes users ×
// resources × nodes quotas. Between iterations, with the timer stopped,
// every node sends the report of the next slot, which keeps each node live
// and in every user's window, and a garbage collection runs. Without that
// collection the garbage of the pause was collected during whichever
// assignment ran next, and ms/op varied by a factor of 2 between runs. So
// ms/op leaves out most of the collection work that the assignment's own
// allocations (B/op) cause.
//
// heap-MB is the live heap after setup: the counts of every node and the
// engine after benchWarmupSlots+1 slots. It is not the steady state,
// because the monitor history keeps the quota lists of each assignment and
// every report for DefaultHistorySlots slots. The heap grows with each slot
// until the history is full, and more when every report carries its own
// counts instead of sharing them as here.
func BenchmarkAssign(b *testing.B) {
	sizes := []struct{ users, nodes int }{
		{users: 10_000, nodes: 20},
		{users: 100_000, nodes: 10},
	}
	for _, size := range sizes {
		name := fmt.Sprintf("users=%d/resources=%d/nodes=%d", size.users, len(benchResources), size.nodes)
		b.Run(name, func(b *testing.B) {
			users := benchUserNames(size.users)
			nodes := make([]benchNodeCounts, size.nodes)
			for i := range nodes {
				nodes[i] = newBenchNodeCounts(i, users)
			}
			for _, mode := range Modes {
				b.Run("mode="+string(mode), func(b *testing.B) {
					benchmarkAssign(b, mode, users, nodes)
				})
			}
		})
	}
}

func benchmarkAssign(b *testing.B, mode Mode, users []string, nodes []benchNodeCounts) {
	e := newBenchEngine(b, mode, users)
	slot := int64(benchFirstSlot)
	for range benchWarmupSlots {
		slot++
		ingestBenchSlot(b, e, nodes, slot)
		assignBenchSlot(b, e, slot)
	}
	slot++
	ingestBenchSlot(b, e, nodes, slot)
	// b.Loop resets the timer, which deletes metrics reported before it, so
	// heap-MB is reported after the loop.
	heapMB := liveHeapMB()
	b.ReportAllocs()

	wantQuotas := len(users) * len(benchResources) * len(nodes)
	quotas := 0
	for b.Loop() {
		result := assignBenchSlot(b, e, slot)

		b.StopTimer()
		got := result.Entries * len(benchResources)
		if got != wantQuotas || result.Nodes != len(nodes) {
			b.Fatalf("Assign(%d) = %+v: %d quotas on %d nodes, want %d quotas on %d nodes",
				slot, result, got, result.Nodes, wantQuotas, len(nodes))
		}
		quotas += got
		slot++
		ingestBenchSlot(b, e, nodes, slot)
		runtime.GC()
		b.StartTimer()
	}

	seconds := b.Elapsed().Seconds()
	b.ReportMetric(seconds*1e3/float64(b.N), "ms/op")
	b.ReportMetric(float64(quotas)/seconds, "quotas/s")
	b.ReportMetric(heapMB, "heap-MB")
}
