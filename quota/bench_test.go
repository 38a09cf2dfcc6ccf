package quota

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

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
// on each of benchResources, set in benchFirstSlot. It keeps the
// DefaultTopUsers that throttle-central runs with.
func newBenchEngine(b *testing.B, mode Mode, users []string) *Engine {
	b.Helper()
	e, err := New(Config{Mode: mode, TopUsers: DefaultTopUsers})
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

// reportFor returns a report sent in slot, carrying the counts of slot-1.
// The reports share the maps of c, which Ingest only reads.
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
// a copy of the counts of every report for DefaultHistorySlots slots. The
// heap grows with each slot until the history is full.
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
		accuracy := result.Accuracy
		if accuracy.ReportedNodes != len(nodes) || len(accuracy.Resources) != len(benchResources) || len(accuracy.TopUsers) != DefaultTopUsers {
			b.Fatalf("Assign(%d): accuracy of %d reported nodes, %d resources and %d top users, want %d, %d and %d",
				slot, accuracy.ReportedNodes, len(accuracy.Resources), len(accuracy.TopUsers), len(nodes), len(benchResources), DefaultTopUsers)
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

// newBenchReport returns the report of node index node sent in slot, built
// like newBenchNodeCounts, with its own maps and its own copy of every user
// name, as a decoded report has.
func newBenchReport(node int, users []string, slot int64) *protocol.Report {
	names := make([]string, len(users))
	for i, user := range users {
		names[i] = strings.Clone(user)
	}
	return newBenchNodeCounts(node, names).reportFor(slot)
}

// BenchmarkIngestHistory measures what the monitor history costs at fleet
// size: 200 nodes each report 1,000 users x 4 resources in each of 70
// consecutive slots, with a history of 60 slots, so the history is full
// and its oldest frames have been reused. Every report has its own maps and
// names, as decoded reports have, and the users have no limits, so the
// history is the only state the reports leave besides the node registry.
//
// Reports are built with the timer stopped and ingested one at a time, so
// ns/report is the mean time of one Ingest, and B/op and allocs/op count
// all 14,000 reports of an iteration. heap-MB is the live heap after the
// last slot, measured after a garbage collection, and gc-ms is the wall
// time of one more full collection (runtime.GC) with that heap.
func BenchmarkIngestHistory(b *testing.B) {
	const (
		nodeCount    = 200
		userCount    = 1000
		slotCount    = 70
		historySlots = 60
	)
	users := benchUserNames(userCount)
	var e *Engine
	var compacting time.Duration
	for b.Loop() {
		b.StopTimer()
		var err error
		e, err = New(Config{HistorySlots: historySlots})
		if err != nil {
			b.Fatalf("New: %v", err)
		}
		for slot := int64(benchFirstSlot + 1); slot <= benchFirstSlot+slotCount; slot++ {
			reports := make([]*protocol.Report, nodeCount)
			for i := range reports {
				reports[i] = newBenchReport(i, users, slot)
			}

			b.StartTimer()
			for _, r := range reports {
				result, err := e.Ingest(r)
				if err != nil {
					b.Fatalf("Ingest(%s, slot %d): %v", r.NodeID, slot, err)
				}
				if result.Duplicate || result.Users != userCount {
					b.Fatalf("Ingest(%s, slot %d) = %+v, want %d users applied", r.NodeID, slot, result, userCount)
				}
			}
			b.StopTimer()
			// The assignment in the middle of the slot makes the compact
			// copies, off the burst of reports; timed apart.
			start := time.Now()
			e.history.compact()
			compacting += time.Since(start)
		}
		b.StartTimer()
	}

	reports := b.N * nodeCount * slotCount
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(reports), "ns/report")
	b.ReportMetric(float64(compacting.Nanoseconds())/float64(reports), "compact-ns/report")
	b.ReportMetric(liveHeapMB(), "heap-MB")
	start := time.Now()
	runtime.GC()
	b.ReportMetric(float64(time.Since(start).Microseconds())/1e3, "gc-ms")
	runtime.KeepAlive(e)
}

// BenchmarkReportCounts measures the compact copy of one report about
// 1,000 users x 4 resources that the monitor history makes in Ingest.
func BenchmarkReportCounts(b *testing.B) {
	const userCount = 1000
	r := newBenchReport(0, benchUserNames(userCount), benchFirstSlot)
	want := userCount * len(benchResources)
	b.ReportAllocs()
	for b.Loop() {
		counts := newReportCounts(r)
		if len(counts.consumption) != want {
			b.Fatalf("newReportCounts kept %d consumption counts, want %d", len(counts.consumption), want)
		}
	}
}

// BenchmarkMonitor measures one monitor query of one slot in which 200
// nodes reported 1,000 users x 4 resources, for each counts subject, and
// for consumption_sum filtered to one user.
func BenchmarkMonitor(b *testing.B) {
	const (
		nodeCount = 200
		userCount = 1000
	)
	users := benchUserNames(userCount)
	e, err := New(Config{})
	if err != nil {
		b.Fatalf("New: %v", err)
	}
	sent := int64(benchFirstSlot + 1)
	for i := range nodeCount {
		r := newBenchReport(i, users, sent)
		if _, err := e.Ingest(r); err != nil {
			b.Fatalf("Ingest(%s, slot %d): %v", r.NodeID, sent, err)
		}
	}

	queries := []struct {
		name  string
		query MonitorQuery
	}{
		{"reported", MonitorQuery{Subject: SubjectReported}},
		{"consumption_sum", MonitorQuery{Subject: SubjectConsumptionSum}},
		{"consumption_sum/user", MonitorQuery{Subject: SubjectConsumptionSum, User: users[userCount/2]}},
		{"rejection_sum", MonitorQuery{Subject: SubjectRejectionSum}},
		{"distribution", MonitorQuery{Subject: SubjectDistribution}},
	}
	for _, q := range queries {
		b.Run(q.name, func(b *testing.B) {
			q.query.Start, q.query.End = sent-1, sent-1
			b.ReportAllocs()
			for b.Loop() {
				data, err := e.Monitor(q.query)
				if err != nil {
					b.Fatalf("Monitor(%+v): %v", q.query, err)
				}
				if len(data) != 1 {
					b.Fatalf("Monitor(%+v) returned %d slots, want 1", q.query, len(data))
				}
			}
		})
	}
}
