package quota

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/throttlecentral/throttle-central/protocol"
)

// The concurrency tests run many edge nodes against one engine, each node on
// its own goroutine, and check afterwards that the monitor history and the
// quotas account for every report exactly once.

const (
	concurrentNodes     = 200
	concurrentNodeUsers = 50
	// concurrentUserPool is the number of distinct users. Node n reports
	// users 5n to 5n+49 modulo the pool, so each user is reported by 10
	// nodes and neighboring nodes share 45 users.
	concurrentUserPool = concurrentNodes * concurrentStride
	concurrentStride   = 5
	concurrentSlots    = 10
	// concurrentFirstSlot is the slot in which the first concurrent reports
	// are sent. They carry the counts of the slot before.
	concurrentFirstSlot = 2001
	// concurrentTimeout bounds each wait for the other goroutines. Under
	// -race on 2 cores a slot takes well under a second.
	concurrentTimeout = 30 * time.Second
)

var (
	concurrentServices = []string{"front", "api"}
	// concurrentResources are the resources every report names. Limited
	// users have a limit on the first two only, so the third is recorded for
	// the monitor without a bucket.
	concurrentResources = []string{"traffic_up", "requests", "database_read"}
)

func concurrentNodeID(node int) string { return fmt.Sprintf("edge-%03d", node) }

// concurrentUser returns the service and name of user i of the pool.
func concurrentUser(i int) (service, user string) {
	return concurrentServices[i%len(concurrentServices)], fmt.Sprintf("user-%d", i)
}

// concurrentUserLimited reports whether user i of the pool has limits. One
// user in four has none and is only recorded for the monitor.
func concurrentUserLimited(i int) bool { return i%4 != 3 }

// concurrentNodeUserIndexes returns the pool indexes of the users node reports.
func concurrentNodeUserIndexes(node int) []int {
	users := make([]int, concurrentNodeUsers)
	for k := range users {
		users[k] = (node*concurrentStride + k) % concurrentUserPool
	}
	return users
}

// concurrentAmounts returns what node reports about user i of the pool in
// the report sent in slot: an integer consumption per resource, some of
// them zero, and on some (node, user, slot) a rejection of the first
// resource.
func concurrentAmounts(node int, slot int64, i int) (consumption, rejection map[string]float64) {
	consumption = make(map[string]float64, len(concurrentResources))
	for j, resource := range concurrentResources {
		consumption[resource] = float64((node*31 + int(slot)*17 + i*7 + j*3) % 1000)
	}
	if (node+i+int(slot))%7 == 0 {
		rejection = map[string]float64{concurrentResources[0]: float64((node+i)%5 + 1)}
	}
	return consumption, rejection
}

// concurrentReport builds the report node sends in slot.
func concurrentReport(node int, slot int64) *protocol.Report {
	r := &protocol.Report{
		NodeID:      concurrentNodeID(node),
		Slot:        slot,
		Consumption: protocol.Counts{},
		Rejection:   protocol.Counts{},
	}
	for _, i := range concurrentNodeUserIndexes(node) {
		service, user := concurrentUser(i)
		consumption, rejection := concurrentAmounts(node, slot, i)
		for resource, amount := range consumption {
			r.Consumption.Add(service, user, resource, amount)
		}
		for resource, amount := range rejection {
			r.Rejection.Add(service, user, resource, amount)
		}
	}
	return r
}

// newConcurrentEngine returns an engine in mode in which every limited user
// of the pool has a limit on the first two resources.
func newConcurrentEngine(t *testing.T, mode Mode) *Engine {
	t.Helper()
	e, err := New(Config{Mode: mode})
	if err != nil {
		t.Fatalf("New(%q): %v", mode, err)
	}
	limits := map[string]Limit{
		concurrentResources[0]: {Rate: 5000},
		concurrentResources[1]: {Rate: 800},
	}
	for i := range concurrentUserPool {
		if !concurrentUserLimited(i) {
			continue
		}
		service, user := concurrentUser(i)
		if err := e.SetLimits(service, user, limits, concurrentFirstSlot-1); err != nil {
			t.Fatalf("SetLimits(%s, %s): %v", service, user, err)
		}
	}
	return e
}

// waitGroupWithin waits for wg and reports whether it finished before the
// timeout.
func waitGroupWithin(wg *sync.WaitGroup, timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// diffCounts lists how got differs from want, comparing the amounts
// exactly.
func diffCounts(want, got protocol.Counts) []string {
	var diffs []string
	for service, users := range want {
		for user, resources := range users {
			for resource, amount := range resources {
				gotAmount, ok := got[service][user][resource]
				switch {
				case !ok:
					diffs = append(diffs, fmt.Sprintf("%s/%s/%s missing, want %v", service, user, resource, amount))
				case gotAmount != amount:
					diffs = append(diffs, fmt.Sprintf("%s/%s/%s = %v, want %v", service, user, resource, gotAmount, amount))
				}
			}
		}
	}
	for service, users := range got {
		for user, resources := range users {
			for resource, amount := range resources {
				if _, ok := want[service][user][resource]; !ok {
					diffs = append(diffs, fmt.Sprintf("%s/%s/%s = %v, want no entry", service, user, resource, amount))
				}
			}
		}
	}
	sort.Strings(diffs)
	return diffs
}

// checkMonitorCounts compares the monitor's subject (consumption_sum or
// rejection_sum) for slot with want.
func checkMonitorCounts(t *testing.T, e *Engine, subject string, slot int64, want protocol.Counts) {
	t.Helper()
	data, err := e.Monitor(MonitorQuery{Subject: subject, Start: slot, End: slot})
	if err != nil {
		t.Fatalf("Monitor(%s, slot %d): %v", subject, slot, err)
	}
	got, _ := data[slot].(protocol.Counts)
	if diffs := diffCounts(want, got); len(diffs) > 0 {
		t.Errorf("%s of slot %d: %d amounts differ, first: %v", subject, slot, len(diffs), diffs[:min(len(diffs), 5)])
	}
}

// checkMonitorReported checks that the monitor lists every node in nodes,
// once, as having reported the counts of slot.
func checkMonitorReported(t *testing.T, e *Engine, slot int64, nodes []string) {
	t.Helper()
	data, err := e.Monitor(MonitorQuery{Subject: SubjectReported, Start: slot, End: slot})
	if err != nil {
		t.Fatalf("Monitor(reported, slot %d): %v", slot, err)
	}
	got, _ := data[slot].([]string)
	if !slices.Equal(got, nodes) {
		t.Errorf("reported of slot %d: %d nodes, want each of the %d nodes once; got %v", slot, len(got), len(nodes), got)
	}
}

// readConcurrently calls Quotas, Shares and Monitor in a loop until stop is
// closed, and returns how many rounds it ran and the first error or
// malformed result. It runs at least one round.
func readConcurrently(e *Engine, stop <-chan struct{}) (rounds int, err error) {
	for {
		node := concurrentNodeID(rounds % concurrentNodes)
		last := e.LastAssigned()
		quotas := e.Quotas(node, last+2, concurrentServices)
		if len(quotas) != len(concurrentServices) {
			return rounds, fmt.Errorf("Quotas(%s, slot %d) returned %d services, want %d", node, last+2, len(quotas), len(concurrentServices))
		}
		for _, service := range concurrentServices {
			if quotas[service] == nil {
				return rounds, fmt.Errorf("Quotas(%s, slot %d) is missing service %s", node, last+2, service)
			}
		}
		_, user := concurrentUser(rounds % concurrentUserPool)
		e.Shares(concurrentServices[0], []string{user})

		// Query one recent slot, and every slot kept once in a while, so the
		// reader holds the history lock both briefly and long.
		query := MonitorQuery{Subject: Subjects[rounds%len(Subjects)], Start: max(last-1, 1), End: last + 2}
		if rounds%10 == 0 {
			query.Start, query.End = 0, 0
		}
		if _, err := e.Monitor(query); err != nil {
			return rounds, fmt.Errorf("Monitor(%+v): %w", query, err)
		}
		rounds++

		select {
		case <-stop:
			return rounds, nil
		default:
		}
	}
}

// TestConcurrentReportsAllCounted runs 200 edge nodes, each on its own
// goroutine, that send a report about 50 users every slot for 10 slots. The
// test goroutine runs each slot's assignment as soon as the slot opens, and
// a reader calls Quotas, Shares and Monitor throughout.
func TestConcurrentReportsAllCounted(t *testing.T) {
	for _, mode := range Modes {
		t.Run(string(mode), func(t *testing.T) {
			testConcurrentReportsAllCounted(t, mode)
		})
	}
}

func testConcurrentReportsAllCounted(t *testing.T, mode Mode) {
	e := newConcurrentEngine(t, mode)
	stop := make(chan struct{})
	defer close(stop)

	// Every node sends one report before the concurrent part, because Assign
	// can drop a node from the registry while its first report is being
	// ingested (see TestNodeFirstReportDuringAssign).
	for node := range concurrentNodes {
		if _, err := e.Ingest(concurrentReport(node, concurrentFirstSlot-1)); err != nil {
			t.Fatalf("Ingest(%s, slot %d): %v", concurrentNodeID(node), concurrentFirstSlot-1, err)
		}
	}

	// Node goroutines send the reports of slot k once open[k] is closed,
	// and sent[k] counts them.
	open := make([]chan struct{}, concurrentSlots)
	sent := make([]sync.WaitGroup, concurrentSlots)
	for k := range open {
		open[k] = make(chan struct{})
		sent[k].Add(concurrentNodes)
	}
	var nodes sync.WaitGroup
	for node := range concurrentNodes {
		nodes.Go(func() {
			for k := range concurrentSlots {
				select {
				case <-open[k]:
				case <-stop:
					return
				}
				slot := int64(concurrentFirstSlot + k)
				result, err := e.Ingest(concurrentReport(node, slot))
				sent[k].Done()
				if err != nil {
					t.Errorf("Ingest(%s, slot %d): %v", concurrentNodeID(node), slot, err)
					return
				}
				if result.Duplicate {
					t.Errorf("Ingest(%s, slot %d): skipped as a duplicate", concurrentNodeID(node), slot)
				}
				if result.Users != concurrentNodeUsers {
					t.Errorf("Ingest(%s, slot %d): %d users, want %d", concurrentNodeID(node), slot, result.Users, concurrentNodeUsers)
				}
			}
		})
	}

	stopReader := make(chan struct{})
	var reader sync.WaitGroup
	var readerRounds int
	var readerErr error
	reader.Go(func() {
		readerRounds, readerErr = readConcurrently(e, stopReader)
	})

	limitedUsers := 0
	for i := range concurrentUserPool {
		if concurrentUserLimited(i) {
			limitedUsers++
		}
	}
	// Every node holds an entry for each limited user it reports.
	limitedEntries := limitedUsers * concurrentNodeUsers / concurrentStride

	for k := range concurrentSlots {
		slot := int64(concurrentFirstSlot + k)
		close(open[k])
		result, err := e.Assign(slot, nil)
		if err != nil {
			t.Fatalf("Assign(%d): %v", slot, err)
		}
		if !waitGroupWithin(&sent[k], concurrentTimeout) {
			t.Fatalf("the reports sent in slot %d did not finish within %v", slot, concurrentTimeout)
		}
		// Every node sent the report of the previous slot before this
		// assignment started, so every node is live and in every window.
		if result.Nodes != concurrentNodes {
			t.Errorf("Assign(%d): %d live nodes, want %d", slot, result.Nodes, concurrentNodes)
		}
		if result.Users != limitedUsers {
			t.Errorf("Assign(%d): %d users got quota, want %d", slot, result.Users, limitedUsers)
		}
		if result.Entries != limitedEntries {
			t.Errorf("Assign(%d): %d quota entries, want %d", slot, result.Entries, limitedEntries)
		}
	}
	if !waitGroupWithin(&nodes, concurrentTimeout) {
		t.Fatalf("the node goroutines did not return within %v", concurrentTimeout)
	}
	close(stopReader)
	if !waitGroupWithin(&reader, concurrentTimeout) {
		t.Fatalf("the reader did not return within %v", concurrentTimeout)
	}
	if readerErr != nil {
		t.Errorf("concurrent reader after %d rounds: %v", readerRounds, readerErr)
	}

	// One more assignment, with every report in, gives each node an entry
	// for every limited user it reported.
	finalSlot := int64(concurrentFirstSlot + concurrentSlots)
	if _, err := e.Assign(finalSlot, nil); err != nil {
		t.Fatalf("Assign(%d): %v", finalSlot, err)
	}
	for node := range concurrentNodes {
		quotas := e.Quotas(concurrentNodeID(node), finalSlot+2, concurrentServices)
		for _, i := range concurrentNodeUserIndexes(node) {
			service, user := concurrentUser(i)
			_, ok := quotas[service][user]
			if ok != concurrentUserLimited(i) {
				t.Errorf("Quotas(%s, slot %d): entry for %s/%s is %v, want %v",
					concurrentNodeID(node), finalSlot+2, service, user, ok, concurrentUserLimited(i))
			}
		}
	}

	allNodes := make([]string, concurrentNodes)
	for node := range allNodes {
		allNodes[node] = concurrentNodeID(node)
	}
	for k := range concurrentSlots {
		sentSlot := int64(concurrentFirstSlot + k)
		countsSlot := sentSlot - 1
		wantConsumption, wantRejection := protocol.Counts{}, protocol.Counts{}
		for node := range concurrentNodes {
			for _, i := range concurrentNodeUserIndexes(node) {
				service, user := concurrentUser(i)
				consumption, rejection := concurrentAmounts(node, sentSlot, i)
				for resource, amount := range consumption {
					wantConsumption.Add(service, user, resource, amount)
				}
				for resource, amount := range rejection {
					wantRejection.Add(service, user, resource, amount)
				}
			}
		}
		checkMonitorCounts(t, e, SubjectConsumptionSum, countsSlot, wantConsumption)
		checkMonitorCounts(t, e, SubjectRejectionSum, countsSlot, wantRejection)
		checkMonitorReported(t, e, countsSlot, allNodes)
	}
}

// TestConcurrentDuplicateReportCountedOnce sends every report twice at the
// same instant, from two goroutines, as a node that retries a report whose
// reply was lost would.
func TestConcurrentDuplicateReportCountedOnce(t *testing.T) {
	for _, mode := range Modes {
		t.Run(string(mode), func(t *testing.T) {
			testConcurrentDuplicateReportCountedOnce(t, mode)
		})
	}
}

func testConcurrentDuplicateReportCountedOnce(t *testing.T, mode Mode) {
	const (
		nodes     = 20
		slots     = 5
		users     = 10
		service   = "front"
		resource  = "traffic_up"
		rate      = 1000
		firstSlot = 3001
	)
	e, err := New(Config{Mode: mode})
	if err != nil {
		t.Fatalf("New(%q): %v", mode, err)
	}
	for u := range users {
		if err := e.SetLimits(service, fmt.Sprintf("user-%d", u), map[string]Limit{resource: {Rate: rate}}, firstSlot-1); err != nil {
			t.Fatalf("SetLimits(user-%d): %v", u, err)
		}
	}
	duplicateReport := func(node int, slot int64) *protocol.Report {
		r := &protocol.Report{NodeID: concurrentNodeID(node), Slot: slot, Consumption: protocol.Counts{}}
		for u := range users {
			r.Consumption.Add(service, fmt.Sprintf("user-%d", u), resource, 1)
		}
		return r
	}

	// Each (node, slot) report is sent by two goroutines, and all of them
	// start together when start is closed.
	type copyResult struct {
		result IngestResult
		err    error
	}
	results := make([][][2]copyResult, nodes)
	start := make(chan struct{})
	var senders sync.WaitGroup
	for node := range nodes {
		results[node] = make([][2]copyResult, slots)
		for k := range slots {
			slot := int64(firstSlot + k)
			for c := range 2 {
				r := duplicateReport(node, slot)
				senders.Go(func() {
					<-start
					result, err := e.Ingest(r)
					results[node][k][c] = copyResult{result, err}
				})
			}
		}
	}
	close(start)
	if !waitGroupWithin(&senders, concurrentTimeout) {
		t.Fatalf("the senders did not return within %v", concurrentTimeout)
	}

	for node := range nodes {
		for k := range slots {
			fresh := 0
			for c, sent := range results[node][k] {
				if sent.err != nil {
					t.Errorf("Ingest(%s, slot %d) copy %d: %v", concurrentNodeID(node), firstSlot+k, c, sent.err)
					continue
				}
				if sent.result.Duplicate {
					continue
				}
				fresh++
				if sent.result.Users != users {
					t.Errorf("Ingest(%s, slot %d) copy %d: %d users, want %d", concurrentNodeID(node), firstSlot+k, c, sent.result.Users, users)
				}
			}
			if fresh != 1 {
				t.Errorf("Ingest(%s, slot %d): %d of 2 copies applied, want 1", concurrentNodeID(node), firstSlot+k, fresh)
			}
		}
	}

	allNodes := make([]string, nodes)
	for node := range allNodes {
		allNodes[node] = concurrentNodeID(node)
	}
	for k := range slots {
		countsSlot := int64(firstSlot+k) - 1
		want := protocol.Counts{}
		for u := range users {
			want.Add(service, fmt.Sprintf("user-%d", u), resource, nodes)
		}
		checkMonitorCounts(t, e, SubjectConsumptionSum, countsSlot, want)
		checkMonitorReported(t, e, countsSlot, allNodes)
	}

	// Classic mode bills consumption when it is reported, so a bucket that
	// was never refilled holds its first second of tokens minus what was
	// billed once. Reserve mode bills nothing before the bucket's first
	// grant, so its level shows nothing here.
	if mode == ModeClassic {
		for u := range users {
			user := fmt.Sprintf("user-%d", u)
			level, ok := e.BucketLevel(service, user, resource)
			if !ok {
				t.Errorf("bucket %s/%s/%s does not exist", service, user, resource)
				continue
			}
			if want := float64(rate - nodes*slots); level != want {
				t.Errorf("bucket %s/%s/%s: level %v, want %v (each report billed once)", service, user, resource, level, want)
			}
		}
	}
}

// TestNodeFirstReportDuringAssign sends the first report of many new nodes
// while assignments run, then sends each report again, which must be
// skipped as a duplicate.
func TestNodeFirstReportDuringAssign(t *testing.T) {
	const (
		nodes     = 200
		rounds    = 20
		service   = "front"
		firstSent = 10_001
	)
	appliedTwice := 0
	for round := range rounds {
		e, err := New(Config{Mode: ModeReserve})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		firstReport := func(node int) *protocol.Report {
			r := &protocol.Report{NodeID: concurrentNodeID(node), Slot: firstSent, Consumption: protocol.Counts{}}
			r.Consumption.Add(service, "user-1", "traffic_up", 1)
			return r
		}

		start := make(chan struct{})
		var senders sync.WaitGroup
		for node := range nodes {
			r := firstReport(node)
			senders.Go(func() {
				<-start
				if _, err := e.Ingest(r); err != nil {
					t.Errorf("Ingest(%s): %v", r.NodeID, err)
				}
			})
		}
		sendersDone := make(chan struct{})
		go func() {
			senders.Wait()
			close(sendersDone)
		}()
		close(start)

		// Assign until every first report is in. The slots stay within the
		// reach of the duplicate filter, so no node is old enough to prune.
		slot := int64(firstSent - 1)
	assigning:
		for ; slot < firstSent+duplicateSlots-10; slot++ {
			select {
			case <-sendersDone:
				break assigning
			default:
			}
			if _, err := e.Assign(slot, nil); err != nil {
				t.Fatalf("Assign(%d): %v", slot, err)
			}
		}
		select {
		case <-sendersDone:
		case <-time.After(concurrentTimeout):
			t.Fatalf("round %d: the first reports did not finish within %v", round, concurrentTimeout)
		}

		for node := range nodes {
			if n := e.lookupNode(concurrentNodeID(node)); n == nil {
				t.Errorf("round %d: node %s is missing from the registry after its first report", round, concurrentNodeID(node))
			}
			result, err := e.Ingest(firstReport(node))
			if err != nil {
				t.Fatalf("Ingest(%s) again: %v", concurrentNodeID(node), err)
			}
			if !result.Duplicate {
				appliedTwice++
				t.Errorf("round %d: second copy of %s's first report was applied, want it skipped as a duplicate", round, concurrentNodeID(node))
			}
		}
	}
	t.Logf("%d of %d repeated first reports were applied again", appliedTwice, rounds*nodes)
}
