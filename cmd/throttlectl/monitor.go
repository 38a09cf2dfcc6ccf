package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/throttlecentral/throttle-central/quota"
)

const (
	// settleSeconds is how far behind the clock the newest printed slot is.
	// Edge nodes send the counts of slot S about 50 ms into S+1, and the
	// leader takes them until about 550 ms into S+1, so S is complete at
	// S+2.
	settleSeconds = 2
	// pollOffset places each poll this far after a multiple of --interval,
	// so that with --interval 1s a slot is printed about 100 ms after it is
	// complete.
	pollOffset = 100 * time.Millisecond
	// maxCatchUpSlots is how many past slots one poll prints at most after
	// polls failed; older slots are skipped with a message.
	maxCatchUpSlots = 10
	// maxPerNodeShown is how many nodes the table's per-node column lists.
	maxPerNodeShown = 3
)

func monitorCommand() *command {
	return &command{
		name:      "monitor",
		arguments: "<service> <user>",
		summary:   "show a user's consumption against the limit, second by second",
		details: `Polls the leader's monitor data (followers forward) and prints one line per
second and resource, or with -o json one JSON object per second and line.
A second is printed once it is complete: 2 s after it began, by this
machine's clock. Each line has:
  SLOT         the second, in unix time
  TIME         its start on this machine's clock
  CONSUMPTION  the sum that the edge nodes reported ("-" when no node reported
               this second to the leader, for example after a leader change)
  LIMIT/S      the limit when the line is printed ("-" without a limit)
  RATIO        consumption / limit
  REJECTIONS   requests rejected because this resource ran out
  QUOTA        the sum of the nodes' quotas for this second
  NODES        how many edge nodes reported this second
  PER NODE     consumption/quota of the nodes with the largest quotas
               (k = 1000, M = 10^6, G = 10^9)
The monitor keeps running through a leader change: failed polls are
reported on stderr and retried, and seconds the new leader has no data for
show "-". It stops on Ctrl-C or after --count seconds; it ends with exit
code 1 when the first poll fails or a central rejects a request with a 4xx
status.

JSON lines have this shape; consumption, rejections and ratio are left out
when no node reported the second, limit and ratio when there is no limit,
and quota when the leader assigned none:
  {"slot": 1796422184, "time": "2026-12-04T10:09:44Z", "service": "front",
   "user": "alice", "reported_nodes": 2, "resources": {"traffic_up": {
   "consumption": 300000, "limit": 1048576, "ratio": 0.286, "rejections": 0,
   "quota": 699050.6, "quota_by_node": {"edge-1": 349525.3, ...},
   "consumption_by_node": {"edge-1": 300000}}}}`,
		minArgs: 2,
		maxArgs: 2,
		setup: func(flags *flag.FlagSet) func(context.Context, *invocation) error {
			m := &monitor{now: time.Now}
			flags.Var(newDurationValue(&m.interval, time.Second), "interval", "time between polls, a `duration` from 100ms to 30s; each poll prints every second completed since the last one")
			flags.Var(newIntValue(&m.count, 0), "count", "`number` of seconds to print before stopping; 0 runs until Ctrl-C")
			flags.StringVar(&m.resource, "resource", "", "show only this resource (default: every resource the user has a limit or data for)")
			return m.run
		},
	}
}

// monitor is one run of the monitor command.
type monitor struct {
	interval time.Duration
	count    int
	resource string
	now      func() time.Time

	inv           *invocation
	service, user string
	// next is the next slot to print; 0 before the first poll.
	next    int64
	printed int
	// resourceWidth is the width of the RESOURCE column, set with the
	// header.
	resourceWidth int
}

// monitorSlot is the data of one slot for the user; every map is keyed by
// resource.
type monitorSlot struct {
	consumption       map[string]float64
	rejection         map[string]float64
	quotaByNode       map[string]map[string]float64
	consumptionByNode map[string]map[string]float64
	reported          int
}

// monitorData is the data of one poll.
type monitorData struct {
	slots map[int64]*monitorSlot
	// limits is nil when the user has no limit.
	limits map[string]float64
}

func (m *monitor) run(ctx context.Context, inv *invocation) error {
	m.inv = inv
	m.service, m.user = inv.args[0], inv.args[1]
	if err := m.validate(); err != nil {
		return err
	}
	for {
		if err := m.poll(ctx); err != nil {
			return err
		}
		if m.count > 0 && m.printed >= m.count {
			return nil
		}
		now := m.now()
		nextPoll := now.Add(-pollOffset).Truncate(m.interval).Add(m.interval + pollOffset)
		timer := time.NewTimer(nextPoll.Sub(now))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}
}

func (m *monitor) validate() error {
	if err := validateNames(m.service, m.user); err != nil {
		return err
	}
	switch {
	case m.interval < 100*time.Millisecond || m.interval > 30*time.Second:
		return usagef("--interval %v is out of range; give a duration from 100ms to 30s, for example 1s", m.interval)
	case m.count < 0:
		return usagef("--count %d is negative; give the number of seconds to print, or 0 to run until Ctrl-C", m.count)
	}
	if m.resource != "" {
		if err := quota.ValidateName("--resource", m.resource); err != nil {
			return usagef("%v", err)
		}
	}
	return nil
}

// poll fetches and prints every complete slot since the last poll. It
// returns an error only when the monitor must stop: the first poll failed,
// or a central rejected the request with a 4xx status.
func (m *monitor) poll(ctx context.Context) error {
	last := m.now().Unix() - settleSeconds
	if m.next == 0 {
		m.next = last
	}
	if last < m.next {
		return nil
	}
	if last-m.next >= maxCatchUpSlots {
		skipTo := last - maxCatchUpSlots + 1
		fmt.Fprintf(m.inv.stderr, "throttlectl: monitor: skipped %s to catch up; after failed polls the monitor prints at most the last %d seconds\n",
			slotRange(m.next, skipTo-1), maxCatchUpSlots)
		m.next = skipTo
	}

	data, err := m.fetch(ctx, m.next, last)
	switch {
	case ctx.Err() != nil:
		return nil
	case err != nil && m.printed == 0:
		return err
	case err != nil:
		var status *statusError
		if errors.As(err, &status) && status.status < 500 {
			return err
		}
		fmt.Fprintf(m.inv.stderr, "throttlectl: monitor: %s: %v; retrying\n", slotRange(m.next, last), err)
		return nil
	}

	for slot := m.next; slot <= last; slot++ {
		if err := m.print(slot, data); err != nil {
			return err
		}
		m.printed++
		m.next = slot + 1
		if m.count > 0 && m.printed >= m.count {
			return nil
		}
	}
	return nil
}

func slotRange(first, last int64) string {
	if first == last {
		return fmt.Sprintf("slot %d", first)
	}
	return fmt.Sprintf("slots %d to %d", first, last)
}

// fetch reads the monitor data of the slots from start to end and the
// user's limits.
func (m *monitor) fetch(ctx context.Context, start, end int64) (*monitorData, error) {
	data := &monitorData{slots: make(map[int64]*monitorSlot)}
	slot := func(s int64) *monitorSlot {
		if data.slots[s] == nil {
			data.slots[s] = &monitorSlot{}
		}
		return data.slots[s]
	}
	query := url.Values{
		"service":    {m.service},
		"user":       {m.user},
		"start_slot": {strconv.FormatInt(start, 10)},
		"end_slot":   {strconv.FormatInt(end, 10)},
	}

	for _, subject := range []string{quota.SubjectConsumptionSum, quota.SubjectRejectionSum} {
		var sums map[string]map[string]map[string]map[string]float64
		if _, err := m.inv.client.getJSON(ctx, "/v1/monitor/"+subject, query, &sums); err != nil {
			return nil, err
		}
		for key, byService := range sums {
			s, err := parseSlotKey(key)
			if err != nil {
				return nil, err
			}
			if subject == quota.SubjectConsumptionSum {
				slot(s).consumption = byService[m.service][m.user]
			} else {
				slot(s).rejection = byService[m.service][m.user]
			}
		}
	}

	for _, subject := range []string{quota.SubjectQuota, quota.SubjectDistribution} {
		var byNode map[string]map[string]map[string]map[string]map[string]float64
		if _, err := m.inv.client.getJSON(ctx, "/v1/monitor/"+subject, query, &byNode); err != nil {
			return nil, err
		}
		for key, byService := range byNode {
			s, err := parseSlotKey(key)
			if err != nil {
				return nil, err
			}
			if subject == quota.SubjectQuota {
				slot(s).quotaByNode = byService[m.service][m.user]
			} else {
				slot(s).consumptionByNode = byService[m.service][m.user]
			}
		}
	}

	reportedQuery := url.Values{"start_slot": query["start_slot"], "end_slot": query["end_slot"]}
	var reported map[string][]string
	if _, err := m.inv.client.getJSON(ctx, "/v1/monitor/"+quota.SubjectReported, reportedQuery, &reported); err != nil {
		return nil, err
	}
	for key, nodes := range reported {
		s, err := parseSlotKey(key)
		if err != nil {
			return nil, err
		}
		slot(s).reported = len(nodes)
	}

	var record limitRecord
	_, err := m.inv.client.getJSON(ctx, userLimitsPath(m.service, m.user), nil, &record)
	switch {
	case isNotFound(err):
	case err != nil:
		return nil, err
	default:
		data.limits = record.Limit
	}
	return data, nil
}

func parseSlotKey(key string) (int64, error) {
	slot, err := strconv.ParseInt(key, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("the monitor response has slot key %q, which is not a unix second", key)
	}
	return slot, nil
}

// monitorLine is one second of the JSON output.
type monitorLine struct {
	Slot          int64                      `json:"slot"`
	Time          string                     `json:"time"`
	Service       string                     `json:"service"`
	User          string                     `json:"user"`
	ReportedNodes int                        `json:"reported_nodes"`
	Resources     map[string]monitorResource `json:"resources"`
}

// monitorResource is one resource of one second. A nil pointer is left out
// of the JSON output because the value is unknown or does not apply.
type monitorResource struct {
	Consumption       *float64           `json:"consumption,omitempty"`
	Limit             *float64           `json:"limit,omitempty"`
	Ratio             *float64           `json:"ratio,omitempty"`
	Rejections        *float64           `json:"rejections,omitempty"`
	Quota             *float64           `json:"quota,omitempty"`
	QuotaByNode       map[string]float64 `json:"quota_by_node,omitempty"`
	ConsumptionByNode map[string]float64 `json:"consumption_by_node,omitempty"`
}

// line builds the output of one slot.
func (m *monitor) line(slot int64, data *monitorData) monitorLine {
	s := data.slots[slot]
	if s == nil {
		s = &monitorSlot{}
	}
	line := monitorLine{
		Slot:          slot,
		Time:          time.Unix(slot, 0).UTC().Format(time.RFC3339),
		Service:       m.service,
		User:          m.user,
		ReportedNodes: s.reported,
		Resources:     make(map[string]monitorResource),
	}
	for _, resource := range m.resources(s, data.limits) {
		var r monitorResource
		if s.reported > 0 {
			r.Consumption = ptr(s.consumption[resource])
			r.Rejections = ptr(s.rejection[resource])
			r.ConsumptionByNode = s.consumptionByNode[resource]
		}
		if limit, ok := data.limits[resource]; ok {
			r.Limit = ptr(limit)
			if r.Consumption != nil && limit > 0 {
				r.Ratio = ptr(*r.Consumption / limit)
			}
		}
		if quotas := s.quotaByNode[resource]; len(quotas) > 0 {
			sum := 0.0
			for _, q := range quotas {
				sum += q
			}
			r.Quota = ptr(sum)
			r.QuotaByNode = quotas
		}
		line.Resources[resource] = r
	}
	return line
}

// resources returns the resources to show for one slot, sorted: --resource,
// or every resource with a limit or with data in the slot.
func (m *monitor) resources(s *monitorSlot, limits map[string]float64) []string {
	if m.resource != "" {
		return []string{m.resource}
	}
	set := make(map[string]bool)
	for _, source := range []map[string]float64{limits, s.consumption, s.rejection} {
		for resource := range source {
			set[resource] = true
		}
	}
	for resource := range s.quotaByNode {
		set[resource] = true
	}
	return slices.Sorted(maps.Keys(set))
}

func ptr(v float64) *float64 { return &v }

func (m *monitor) print(slot int64, data *monitorData) error {
	line := m.line(slot, data)
	if m.inv.output == outputJSON {
		encoded, err := json.Marshal(line)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(m.inv.stdout, "%s\n", encoded)
		return err
	}

	if m.resourceWidth == 0 {
		m.printHeader(line)
	}
	clock := time.Unix(slot, 0).Format("15:04:05")
	if len(line.Resources) == 0 {
		reason := "no edge node reported this second to the leader"
		if line.ReportedNodes > 0 {
			reason = fmt.Sprintf("%d nodes reported, none with data for this user, who has no limit", line.ReportedNodes)
		}
		_, err := fmt.Fprintf(m.inv.stdout, "%-10d  %-8s  %-*s  %s\n", slot, clock, m.resourceWidth, "-", reason)
		return err
	}
	for _, resource := range slices.Sorted(maps.Keys(line.Resources)) {
		r := line.Resources[resource]
		ratio := "-"
		if r.Ratio != nil {
			ratio = strconv.FormatFloat(*r.Ratio, 'f', 3, 64)
		}
		_, err := fmt.Fprintf(m.inv.stdout, "%-10d  %-8s  %-*s  %12s  %12s  %6s  %10s  %12s  %5d  %s\n",
			slot, clock, m.resourceWidth, resource, optionalAmount(r.Consumption), optionalAmount(r.Limit), ratio,
			optionalAmount(r.Rejections), optionalAmount(r.Quota), line.ReportedNodes, perNode(r))
		if err != nil {
			return err
		}
	}
	return nil
}

// printHeader prints the column names, sizing the RESOURCE column for the
// resources of the first line.
func (m *monitor) printHeader(line monitorLine) {
	m.resourceWidth = len("RESOURCE")
	for resource := range line.Resources {
		m.resourceWidth = max(m.resourceWidth, min(len(resource), 32))
	}
	fmt.Fprintf(m.inv.stdout, "%-10s  %-8s  %-*s  %12s  %12s  %6s  %10s  %12s  %5s  %s\n",
		"SLOT", "TIME", m.resourceWidth, "RESOURCE", "CONSUMPTION", "LIMIT/S", "RATIO", "REJECTIONS", "QUOTA", "NODES",
		"PER NODE (consumption/quota)")
}

func optionalAmount(v *float64) string {
	if v == nil {
		return "-"
	}
	return formatAmount(*v)
}

// perNode lists consumption/quota of the nodes with the largest quotas,
// then how many more nodes there are.
func perNode(r monitorResource) string {
	nodes := make(map[string]bool)
	for node := range r.QuotaByNode {
		nodes[node] = true
	}
	for node := range r.ConsumptionByNode {
		nodes[node] = true
	}
	if len(nodes) == 0 {
		return "-"
	}
	sorted := slices.SortedFunc(maps.Keys(nodes), func(a, b string) int {
		if qa, qb := r.QuotaByNode[a], r.QuotaByNode[b]; qa != qb {
			if qa > qb {
				return -1
			}
			return 1
		}
		if ca, cb := r.ConsumptionByNode[a], r.ConsumptionByNode[b]; ca != cb {
			if ca > cb {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, node := range sorted[:min(len(sorted), maxPerNodeShown)] {
		quotaText := "-"
		if q, ok := r.QuotaByNode[node]; ok {
			quotaText = formatCompact(q)
		}
		consumptionText := "-"
		if r.Consumption != nil {
			consumptionText = formatCompact(r.ConsumptionByNode[node])
		}
		parts = append(parts, node+" "+consumptionText+"/"+quotaText)
	}
	text := strings.Join(parts, ", ")
	if more := len(sorted) - maxPerNodeShown; more > 0 {
		text += fmt.Sprintf(" and %d more", more)
	}
	return text
}
