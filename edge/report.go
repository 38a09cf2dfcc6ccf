package edge

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
)

const (
	// reportVersion is the report version that gets the extended reply.
	reportVersion = 2
	// maxReplyBytes bounds a reply body. A version 2 reply takes about 60
	// bytes per user and resource, so this fits about a million entries.
	maxReplyBytes = 64 << 20
	// maxErrorBytes bounds the body read from a central's error reply.
	maxErrorBytes = 64 << 10
	// failureLogEvery is how often a run of failed report rounds is logged:
	// the first failure, then every failureLogEvery-th.
	failureLogEvery = 60
	// shareKeepReplies is how many slots of replies a user's safe share is
	// kept without being refreshed. It is counted in reply slots, not in
	// wall time, so shares do not expire while no central replies.
	shareKeepReplies = 60
)

// reporter is the report state of a Client. mu serializes reports. The
// statistics have their own lock, so Stats never waits for a report.
type reporter struct {
	mu sync.Mutex
	// current is the index of the central that replied last, where the
	// next report starts.
	current int
	// lastSlot is the slot_number of the last report taken, 0 before the
	// first.
	lastSlot int64
	// shares is the merged safe shares: service -> user -> share.
	shares map[string]map[string]shareEntry
	// failedRounds counts reports in a row that reached no central, and
	// rejectedRounds reports in a row that a central rejected.
	failedRounds   int
	rejectedRounds int
	// offset is the node's clock offset the last reply stated.
	offset int64

	statsMu sync.Mutex
	stats   Stats
}

// shareEntry is one user's safe share and the reply slot that carried it.
type shareEntry struct {
	resources map[string]float64
	slot      int64
}

// Stats is a snapshot of a Client's report outcomes. The counters only
// grow, and their number is fixed, so keeping them costs no memory over
// time.
type Stats struct {
	// ReportsSent counts reports a central replied to with quotas.
	ReportsSent uint64 `json:"reports_sent"`
	// ReportsFailed counts reports that reached no central in their
	// second. Their counts were dropped.
	ReportsFailed uint64 `json:"reports_failed"`
	// ReportsRejected counts reports a central rejected as invalid (400)
	// or too large (413). Their counts were dropped.
	ReportsRejected uint64 `json:"reports_rejected"`
	// ReportsSkipped counts seconds in which the loop sent no report,
	// because it ran late. Their counts were dropped.
	ReportsSkipped uint64 `json:"reports_skipped"`
	// Failovers counts moves to the next central after a failed request.
	Failovers uint64 `json:"failovers"`
	// InvalidEntries counts report entries left out because a name or an
	// amount would make the central reject the whole report.
	InvalidEntries uint64 `json:"invalid_entries"`
	// LastCentral is the base URL of the central that replied last.
	LastCentral string `json:"last_central,omitempty"`
	// Leader is the central leader the last reply named.
	Leader string `json:"leader,omitempty"`
	// LastReportSlot is the slot_number of the last report a central
	// replied to. Its counts were those of the slot before.
	LastReportSlot int64 `json:"last_report_slot,omitempty"`
	// LastError describes the last failed or rejected report, and
	// LastErrorSlot is the slot_number of that report, so a reader can tell
	// an old error from a current one.
	LastError     string `json:"last_error,omitempty"`
	LastErrorSlot int64  `json:"last_error_slot,omitempty"`
	// QuotaSlots is how many slots have quotas cached, for any service.
	QuotaSlots int `json:"quota_slots"`
	// NewestQuotaSlot is the newest slot with quotas cached, 0 when none.
	NewestQuotaSlot int64 `json:"newest_quota_slot,omitempty"`
}

// Stats returns the report outcomes so far and the cached quota slots.
func (c *Client) Stats() Stats {
	c.reporter.statsMu.Lock()
	stats := c.reporter.stats
	c.reporter.statsMu.Unlock()
	stats.QuotaSlots, stats.NewestQuotaSlot = c.throttler.quotaSlots()
	return stats
}

func (c *Client) updateStats(update func(*Stats)) {
	c.reporter.statsMu.Lock()
	update(&c.reporter.stats)
	c.reporter.statsMu.Unlock()
}

// errReportRejected marks a reply that rejects the report itself, so no
// other central is tried.
var errReportRejected = errors.New("report rejected")

// centralError is a non-200 reply of a central.
type centralError struct {
	status  int
	code    string
	message string
}

func (e *centralError) Error() string {
	if e.message == "" {
		return fmt.Sprintf("status %d", e.status)
	}
	return fmt.Sprintf("status %d (%s): %s", e.status, e.code, e.message)
}

// Is matches errReportRejected for 400 and 413: the central validated the
// report and found it invalid or too large, so every central would.
//
// NOTE: the central takes request bodies of at most 1 MiB, and a report
// cannot be split because the central counts one report per node and
// slot. A node whose users in one second need more, estimated at about
// 13,000 users with 4 resources each, gets 413 every second and loses
// those counts.
func (e *centralError) Is(target error) bool {
	return target == errReportRejected &&
		(e.status == http.StatusBadRequest || e.status == http.StatusRequestEntityTooLarge)
}

// errAlreadyReported is returned by report for a slot whose report was
// taken before.
var errAlreadyReported = errors.New("the report of this slot was taken before")

// report takes the report of slot (the counts of slot-1), sends it and
// applies the reply. It returns nil when a central replied, and otherwise
// an error that describes every failed attempt.
//
// The report goes first to the central that replied last. A network
// error, a timeout and any status other than 200, 400 and 413 (for
// example 503 while the cluster has no leader) move on to the next
// central. Each central is tried at most once, and only while the report
// can still arrive within sendWindow of the slot's start. A 400 or 413 is
// not tried elsewhere, because every central would reject the same report.
//
// Counts of a report that no central took are dropped and logged, as the
// Lua client drops them. They are not added to the next report: in the
// default reserve mode the central counts a grant that was never reported
// as consumed after a few slots, so consumption carried into a later
// report would be billed twice, against the lost slot's grant and the
// later one.
func (c *Client) report(slot int64) error {
	return c.sendReport(slot, false)
}

// maxFinalSlots bounds how many seconds of counts a final report gathers.
const maxFinalSlots = 10

// sendReport is report. With final, the report carries every count not
// reported yet, up to the second in progress, because no later report
// will: the final report of Close.
func (c *Client) sendReport(slot int64, final bool) error {
	r := &c.reporter
	r.mu.Lock()
	defer r.mu.Unlock()
	if slot <= r.lastSlot {
		return errAlreadyReported
	}

	if !final && r.lastSlot != 0 && slot-1 > r.lastSlot {
		// The loop missed at least one second. The counts of slot-2 are
		// still held, but a report for an earlier slot would be mapped onto
		// the current one by the central, so they are dropped.
		skipped := c.throttler.TakeReport(c.nodeID, slot-1)
		c.updateStats(func(s *Stats) { s.ReportsSkipped += uint64(slot - 1 - r.lastSlot) })
		c.log.Warn("report loop ran late; the counts of the missed seconds are dropped",
			slog.Int64("last_report_slot", r.lastSlot), slog.Int64("report_slot", slot),
			slog.Int("dropped_users", countUsers(skipped)))
	}
	var report protocol.Report
	if final {
		report = c.takeUnreported(slot, r.lastSlot)
	} else {
		report = c.throttler.TakeReport(c.nodeID, slot)
	}
	r.lastSlot = slot
	report.Version = reportVersion
	c.removeInvalidEntries(&report)

	body, err := json.Marshal(&report)
	if err != nil {
		// Names are strings and amounts are finite after
		// removeInvalidEntries, so this is not expected.
		err = fmt.Errorf("encoding the report: %w", err)
		c.reportFailed(slot, &report, err)
		return err
	}

	deadline := time.Unix(slot, 0).Add(sendWindow)
	reply, index, err := c.send(body, deadline)
	if err != nil {
		if errors.Is(err, errReportRejected) {
			c.reportRejected(slot, &report, index, err, len(body))
		} else {
			c.reportFailed(slot, &report, err)
		}
		return err
	}

	c.applyReply(slot, &report, reply)
	if r.failedRounds > 0 || r.rejectedRounds > 0 {
		c.log.Info("reports reach a central again", slog.String("central", c.centrals[index].base),
			slog.Int("failed_reports", r.failedRounds), slog.Int("rejected_reports", r.rejectedRounds))
		r.failedRounds, r.rejectedRounds = 0, 0
	}
	c.updateStats(func(s *Stats) {
		s.ReportsSent++
		s.LastCentral = c.centrals[index].base
		s.LastReportSlot = slot
		s.Leader = reply.Leader
	})
	return nil
}

// send posts body to the centrals, starting with the one that replied
// last, until one replies or deadline (on the client's clock) passes. It
// returns the reply and the index of the central that replied, or of the
// central that rejected the report.
func (c *Client) send(body []byte, deadline time.Time) (*reportReply, int, error) {
	r := &c.reporter
	var errs []error
	last := -1 // the central tried last
	for attempt := range len(c.centrals) {
		index := (r.current + attempt) % len(c.centrals)
		remaining := deadline.Sub(c.clock())
		if remaining <= 0 {
			errs = append(errs, fmt.Errorf("%s not tried: the report can no longer arrive within %v of its second", c.centrals[index].base, sendWindow))
			break
		}
		if attempt > 0 {
			c.updateStats(func(s *Stats) { s.Failovers++ })
			// During a run of failed reports this would repeat every
			// second, so it is logged at debug level then.
			level := slog.LevelWarn
			if r.failedRounds > 0 {
				level = slog.LevelDebug
			}
			c.log.Log(context.Background(), level, "report failed; trying the next central",
				slog.String("failed_central", c.centrals[last].base),
				slog.String("next_central", c.centrals[index].base), slog.Any("error", errs[len(errs)-1]))
		}

		last = index
		reply, err := c.post(c.centrals[index], body, min(c.requestTimeout, remaining))
		if err == nil {
			r.current = index
			return reply, index, nil
		}
		if errors.Is(err, errReportRejected) {
			return nil, index, fmt.Errorf("%s: %w", c.centrals[index].base, err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.centrals[index].base, err))
	}
	if last >= 0 {
		// The next report starts with the central after the one tried
		// last. After a full round that is where this one started.
		r.current = (last + 1) % len(c.centrals)
	}
	return nil, -1, errors.Join(errs...)
}

// post sends one report request and decodes the reply.
func (c *Client) post(central central, body []byte, timeout time.Duration) (*reportReply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	request, err := http.NewRequestWithContext(ctx, http.MethodPost, central.reportURL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	request.Header.Set("Content-Type", "application/json")
	request.Header.Set("Accept", "application/json")
	if c.authorization != "" {
		request.Header.Set("Authorization", c.authorization)
	}

	response, err := c.httpClient.Do(request)
	if err != nil {
		return nil, err
	}
	defer func() {
		// Draining the rest lets the connection be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(response.Body, maxErrorBytes))
		response.Body.Close()
	}()

	if response.StatusCode != http.StatusOK {
		return nil, readCentralError(response)
	}
	reply, err := decodeReply(response.Body)
	if err != nil {
		return nil, fmt.Errorf("invalid reply: %w", err)
	}
	return reply, nil
}

// readCentralError reads the central's error body:
// {"error": {"code": "...", "message": "..."}}.
func readCentralError(response *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(response.Body, maxErrorBytes))
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	e := &centralError{status: response.StatusCode}
	if json.Unmarshal(data, &body) == nil && body.Error.Message != "" {
		e.code, e.message = body.Error.Code, body.Error.Message
	} else if text := bytes.TrimSpace(data); len(text) > 0 {
		e.message = string(text[:min(len(text), 200)])
	}
	return e
}

// reportReply is the central's reply to a version 2 report.
type reportReply struct {
	Version int `json:"version"`
	// Slot is the slot the quotas are for, in this node's numbering.
	Slot int64 `json:"slot"`
	// CentralSlot is the same slot in the central's numbering.
	CentralSlot int64 `json:"central_slot"`
	// Offset is CentralSlot - Slot: this node's clock error in seconds.
	Offset    int64  `json:"offset"`
	Leader    string `json:"leader"`
	Duplicate bool   `json:"duplicate"`
	// Quotas is service -> slot (decimal) -> user -> resource -> quota.
	Quotas map[string]map[string]protocol.Quotas `json:"quotas"`
	// Shares is service -> user -> resource -> safe share. It is nil when
	// the central sends no shares.
	Shares map[string]protocol.Shares `json:"shares"`
}

// decodeReply decodes a version 2 reply. A central that does not know
// version 2 replies in the Lua client's shape,
// {"<service>": {"<slot>": {...}}}, which is read as the quotas.
func decodeReply(body io.Reader) (*reportReply, error) {
	data, err := io.ReadAll(io.LimitReader(body, maxReplyBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxReplyBytes {
		return nil, fmt.Errorf("the reply is larger than %d bytes", maxReplyBytes)
	}

	var reply reportReply
	errVersion2 := json.Unmarshal(data, &reply)
	switch {
	case errVersion2 == nil && reply.Version == reportVersion:
		return &reply, nil
	case errVersion2 == nil && reply.Version != 0:
		return nil, fmt.Errorf("reply version %d is unknown; this client reads version %d", reply.Version, reportVersion)
	}

	var quotas map[string]map[string]protocol.Quotas
	if err := json.Unmarshal(data, &quotas); err != nil {
		if errVersion2 != nil {
			return nil, errVersion2
		}
		return nil, fmt.Errorf("the reply has no version and is not quotas by service and slot: %w", err)
	}
	return &reportReply{Quotas: quotas}, nil
}

// applyReply stores the reply's quotas and merges its safe shares.
func (c *Client) applyReply(slot int64, report *protocol.Report, reply *reportReply) {
	r := &c.reporter
	if reply.Version == reportVersion && reply.Offset != r.offset {
		c.log.Warn("this node's clock is off by whole seconds; the central maps its slots onto its own",
			slog.Int64("offset_seconds", reply.Offset), slog.Int64("previous_offset_seconds", r.offset))
		r.offset = reply.Offset
	}
	if reply.Duplicate {
		c.log.Debug("the central had counted this report before", slog.Int64("report_slot", slot))
	}

	newestSlot := int64(0)
	for service, slots := range reply.Quotas {
		for key, quotas := range slots {
			quotaSlot, err := strconv.ParseInt(key, 10, 64)
			if err != nil {
				c.log.Warn("reply has quotas under a key that is not a slot number; they are ignored",
					slog.String("service", service), slog.String("key", key))
				continue
			}
			c.throttler.SetQuotas(service, quotaSlot, quotas)
			newestSlot = max(newestSlot, quotaSlot)
		}
	}
	if reply.Shares != nil {
		shareSlot := reply.Slot
		if shareSlot == 0 {
			shareSlot = max(newestSlot, slot+1)
		}
		c.mergeShares(report, reply.Shares, shareSlot)
	}
}

// mergeShares merges the reply's safe shares into the ones kept from
// earlier replies and hands the result to the throttler.
//
// The central sends shares only for the users the report named, but a
// share is needed most for a user who returns while no central replies. So
// a user's share is kept until shareKeepReplies slots of replies have gone
// by without it. A user the report named who has no share in the reply has
// no limit any more, and loses the kept share at once.
//
// NOTE: a user whose limit was removed while the node did not serve them
// keeps the old share until a report names them again. So, while the
// centrals reply, the node may enforce a share on a user without a limit
// for up to two slots.
func (c *Client) mergeShares(report *protocol.Report, shares map[string]protocol.Shares, slot int64) {
	r := &c.reporter
	for service, users := range shares {
		serviceShares := r.shares[service]
		if serviceShares == nil {
			serviceShares = make(map[string]shareEntry, len(users))
			r.shares[service] = serviceShares
		}
		for user, resources := range users {
			serviceShares[user] = shareEntry{resources: resources, slot: slot}
		}
		for _, counts := range []protocol.Counts{report.Consumption, report.Rejection} {
			for user := range counts[service] {
				if _, ok := users[user]; !ok {
					delete(serviceShares, user)
				}
			}
		}
	}

	for service, serviceShares := range r.shares {
		for user, entry := range serviceShares {
			if entry.slot <= slot-shareKeepReplies {
				delete(serviceShares, user)
			}
		}
		merged := make(protocol.Shares, len(serviceShares))
		for user, entry := range serviceShares {
			merged[user] = entry.resources
		}
		c.throttler.SetShares(service, merged)
		if len(serviceShares) == 0 {
			delete(r.shares, service)
		}
	}
}

// removeInvalidEntries removes from the report every entry that would make
// the central reject the whole report: a service, user or resource name
// that quota.ValidateName rejects. An amount above quota.MaxAmount is
// lowered to it. It logs what it removed.
func (c *Client) removeInvalidEntries(report *protocol.Report) {
	removed := 0
	var example error
	for _, part := range []struct {
		field  string
		counts protocol.Counts
	}{{"consumption", report.Consumption}, {"rejection", report.Rejection}} {
		// The names are checked with fixed field names, so that a valid
		// entry costs no allocation. The path is added to an error only.
		for service, users := range part.counts {
			if err := quota.ValidateName("service", service); err != nil {
				removed += len(users)
				example = cmp.Or(example, fmt.Errorf("%s: %w", part.field, err))
				delete(part.counts, service)
				continue
			}
			userCount := 0
			for user, resources := range users {
				if err := quota.ValidateName("user", user); err != nil {
					removed++
					example = cmp.Or(example, fmt.Errorf("%s.%s: %w", part.field, service, err))
					delete(users, user)
					continue
				}
				if userCount++; userCount > protocol.MaxReportUsers {
					removed++
					example = cmp.Or(example, fmt.Errorf("%s.%s: more than %d users in one report", part.field, service, protocol.MaxReportUsers))
					delete(users, user)
					continue
				}
				resourceCount := 0
				for resource, amount := range resources {
					if err := quota.ValidateName("resource", resource); err != nil {
						removed++
						example = cmp.Or(example, fmt.Errorf("%s.%s.%s: %w", part.field, service, user, err))
						delete(resources, resource)
						continue
					}
					if resourceCount++; resourceCount > protocol.MaxReportResources {
						removed++
						example = cmp.Or(example, fmt.Errorf("%s.%s.%s: more than %d resources of one user", part.field, service, user, protocol.MaxReportResources))
						delete(resources, resource)
						continue
					}
					if amount > quota.MaxAmount {
						resources[resource] = quota.MaxAmount
					}
				}
				if len(resources) == 0 {
					delete(users, user)
				}
			}
		}
	}
	// The same services are kept in both maps: the first ones by name.
	if services := report.Services(); len(services) > protocol.MaxReportServices {
		slices.Sort(services)
		for _, service := range services[protocol.MaxReportServices:] {
			removed += len(report.Consumption[service]) + len(report.Rejection[service])
			delete(report.Consumption, service)
			delete(report.Rejection, service)
		}
		example = cmp.Or(example, fmt.Errorf("%d services in one report, more than the maximum %d", len(services), protocol.MaxReportServices))
	}
	// A service removed from one map but not the other would break the
	// rule that every reported service is in both.
	for service := range report.Consumption {
		if _, ok := report.Rejection[service]; !ok {
			report.Rejection[service] = map[string]map[string]float64{}
		}
	}
	for service := range report.Rejection {
		if _, ok := report.Consumption[service]; !ok {
			report.Consumption[service] = map[string]map[string]float64{}
		}
	}

	if removed == 0 {
		return
	}
	c.updateStats(func(s *Stats) { s.InvalidEntries += uint64(removed) })
	c.log.Warn("report entries with names the central rejects, or beyond the limits of one report, are left out; fix the names and counts passed to Consume",
		slog.Int64("report_slot", report.Slot), slog.Int("entries", removed), slog.Any("example", example))
}

// reportFailed counts a report that reached no central and logs its
// dropped counts: the first failure of a run, then every
// failureLogEvery-th.
func (c *Client) reportFailed(slot int64, report *protocol.Report, err error) {
	r := &c.reporter
	r.failedRounds++
	c.updateStats(func(s *Stats) {
		s.ReportsFailed++
		s.LastError, s.LastErrorSlot = err.Error(), slot
	})
	if r.failedRounds == 1 || r.failedRounds%failureLogEvery == 0 {
		c.log.Warn("report reached no central; its counts are dropped and the node uses its cached quotas, then the fallback policy",
			slog.Int64("report_slot", slot), slog.Int("dropped_users", countUsers(*report)),
			slog.Int("failed_reports_in_a_row", r.failedRounds), slog.Any("error", err))
	}
}

// reportRejected counts and logs a report that a central rejected as
// invalid or too large: the first rejection of a run, then every
// failureLogEvery-th.
func (c *Client) reportRejected(slot int64, report *protocol.Report, index int, err error, size int) {
	r := &c.reporter
	r.rejectedRounds++
	c.updateStats(func(s *Stats) {
		s.ReportsRejected++
		s.LastError, s.LastErrorSlot = err.Error(), slot
	})
	if r.rejectedRounds == 1 || r.rejectedRounds%failureLogEvery == 0 {
		c.log.Error("central rejected the report; its counts are dropped",
			slog.String("central", c.centrals[index].base), slog.Int64("report_slot", slot),
			slog.Int("dropped_users", countUsers(*report)), slog.Int("report_bytes", size),
			slog.Int("rejected_reports_in_a_row", r.rejectedRounds), slog.Any("error", err))
	}
}

// countUsers returns how many (service, user) pairs a report names.
func countUsers(report protocol.Report) int {
	users := 0
	for service, consumption := range report.Consumption {
		users += len(consumption)
		for user := range report.Rejection[service] {
			if _, named := consumption[user]; !named {
				users++
			}
		}
	}
	for service, rejection := range report.Rejection {
		if _, named := report.Consumption[service]; !named {
			users += len(rejection)
		}
	}
	return users
}

// takeUnreported returns a report of slot with the counts of every second
// from the last reported one, lastSlot, through slot itself, at most
// maxFinalSlots of them (all of those when no report was sent). The caller
// holds the reporter's lock.
func (c *Client) takeUnreported(slot, lastSlot int64) protocol.Report {
	first := max(lastSlot, slot-maxFinalSlots)
	report := c.throttler.TakeReport(c.nodeID, first+1)
	report.Slot = slot
	for next := first + 2; next <= slot+1; next++ {
		counts := c.throttler.TakeReport(c.nodeID, next)
		addCounts(report.Consumption, counts.Consumption)
		addCounts(report.Rejection, counts.Rejection)
	}
	return report
}

// addCounts adds every amount of from to into, creating the service maps
// that into lacks.
func addCounts(into, from protocol.Counts) {
	for service, users := range from {
		if _, ok := into[service]; !ok {
			into[service] = map[string]map[string]float64{}
		}
		for user, resources := range users {
			for resource, amount := range resources {
				into.Add(service, user, resource, amount)
			}
		}
	}
}
