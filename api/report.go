package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// Reporter ingests reports on the leader and returns the node's quotas.
// It returns an error matching raftnode.ErrNotLeader when this central
// does not assign quotas, and the API forwards the report to the leader.
type Reporter interface {
	Report(r *protocol.Report) (ReportReply, error)
}

// ReportReply is the response to one report.
type ReportReply struct {
	// NodeSlot is the slot the quotas are for, in the node's numbering:
	// the report's slot_number + 1.
	NodeSlot int64
	// CentralSlot is the same slot in the central's numbering.
	CentralSlot int64
	// Offset is CentralSlot - NodeSlot: the node's clock error in whole
	// seconds.
	Offset int64
	// Duplicate is true when the report had been counted before.
	Duplicate bool
	// Quotas holds every service the report named, possibly empty.
	Quotas map[string]protocol.Quotas
	// Encoded, when not nil, replaces Quotas: every service the report
	// named, each with its quotas encoded ahead by AppendQuotas. The leader
	// encodes them after each assignment, so a report's reply is mostly a
	// copy.
	Encoded map[string][]byte
	// Shares holds, for a version 2 report only, the safe fallback of the
	// users the report named, by service: what the node may admit per slot
	// while it has no quota. Users without a limit are left out.
	Shares map[string]protocol.Shares
}

// errEngineStarting is the message of a report that reaches a new leader
// before its quota engine runs.
const errEngineStarting = "this central has just become the leader and is starting its quota engine; retry in a second"

// ReportVersion2 is the report version of clients that understand the
// extended reply.
const ReportVersion2 = 2

// wireReport is a report as it arrives, with the counts kept raw so an
// invalid number can be named by its field path.
type wireReport struct {
	Version     *json.RawMessage                                 `json:"version"`
	NodeID      *string                                          `json:"node_id"`
	Slot        *json.RawMessage                                 `json:"slot_number"`
	Consumption map[string]map[string]map[string]json.RawMessage `json:"consumption"`
	Rejection   map[string]map[string]map[string]json.RawMessage `json:"rejection"`
}

// DecodeReport parses and validates one report. Errors wrap quota.ErrInvalid
// and name the field, for example consumption.front.alice.traffic_up.
// Numbers are read as float64, because the Lua client writes large counts
// in exponent form.
func DecodeReport(body []byte) (*protocol.Report, error) {
	if r, ok := parseReport(body); ok {
		if err := quota.ValidateReport(r); err != nil {
			return nil, err
		}
		return r, nil
	}
	return decodeReportChecked(body)
}

// decodeReportChecked decodes with every count kept raw first, so an
// invalid value is named by its field path.
func decodeReportChecked(body []byte) (*protocol.Report, error) {
	var w wireReport
	if err := decodeJSON(body, &w); err != nil {
		return nil, err
	}
	if w.NodeID == nil {
		return nil, fmt.Errorf("%w: node_id is missing", quota.ErrInvalid)
	}
	if w.Slot == nil {
		return nil, fmt.Errorf("%w: slot_number is missing", quota.ErrInvalid)
	}
	r := &protocol.Report{NodeID: *w.NodeID}
	slot, err := parseInteger("slot_number", *w.Slot)
	if err != nil {
		return nil, err
	}
	r.Slot = slot
	if w.Version != nil {
		version, err := parseInteger("version", *w.Version)
		if err != nil {
			return nil, err
		}
		if version != 0 && version != ReportVersion2 {
			return nil, fmt.Errorf("%w: version is %d; this central speaks versions 0 and %d", quota.ErrInvalid, version, ReportVersion2)
		}
		r.Version = int(version)
	}
	if r.Consumption, err = parseCounts("consumption", w.Consumption); err != nil {
		return nil, err
	}
	if r.Rejection, err = parseCounts("rejection", w.Rejection); err != nil {
		return nil, err
	}
	if err := quota.ValidateReport(r); err != nil {
		return nil, err
	}
	return r, nil
}

func parseCounts(field string, raw map[string]map[string]map[string]json.RawMessage) (protocol.Counts, error) {
	counts := make(protocol.Counts, len(raw))
	for service, users := range raw {
		byUser := make(map[string]map[string]float64, len(users))
		for user, resources := range users {
			byResource := make(map[string]float64, len(resources))
			for resource, value := range resources {
				amount, err := parseAmount(field+"."+service+"."+user+"."+resource, value)
				if err != nil {
					return nil, err
				}
				byResource[resource] = amount
			}
			byUser[user] = byResource
		}
		counts[service] = byUser
	}
	return counts, nil
}

// parseInteger reads a JSON number that must be a whole number, also in
// exponent form such as 1.796411856e+09.
func parseInteger(field string, raw json.RawMessage) (int64, error) {
	text := bytes.TrimSpace(raw)
	v, err := strconv.ParseFloat(string(text), 64)
	if err != nil || len(text) == 0 || text[0] == '"' {
		return 0, fmt.Errorf("%w: %s is %s; it must be a number", quota.ErrInvalid, field, text)
	}
	if v != math.Trunc(v) || math.Abs(v) > quota.MaxAmount {
		return 0, fmt.Errorf("%w: %s is %s; it must be a whole number", quota.ErrInvalid, field, text)
	}
	return int64(v), nil
}

// report handles POST /v1/report.
func (s *Server) report(c echo.Context) error {
	start := time.Now()
	defer func() { s.metrics.reportSeconds.WithLabelValues("http").Observe(time.Since(start).Seconds()) }()
	body, err := readBody(c)
	if err != nil {
		s.metrics.reports.WithLabelValues("http", outcomeOf(err)).Inc()
		return err
	}
	if s.cfg.Reports == nil || !s.cfg.Cluster.IsLeader() {
		// The leader validates the report; decoding it here too would only
		// double the work.
		s.metrics.reports.WithLabelValues("http", "forwarded").Inc()
		return s.forward(c, body)
	}
	release := s.acquireWorker()
	defer release()
	r, err := DecodeReport(body)
	if err != nil {
		s.metrics.reports.WithLabelValues("http", "invalid").Inc()
		return err
	}
	reply, err := s.cfg.Reports.Report(r)
	if errors.Is(err, raftnode.ErrNotLeader) {
		if s.leaderIsSelf() {
			// The leader is still starting its quota engine; forwarding
			// would send the report back to this central.
			s.metrics.reports.WithLabelValues("http", "starting").Inc()
			return newError(http.StatusServiceUnavailable, CodeUnavailable, errEngineStarting)
		}
		release() // forwarding waits on the network, not on a core
		s.metrics.reports.WithLabelValues("http", "forwarded").Inc()
		return s.forward(c, body)
	}
	if err != nil {
		s.metrics.reports.WithLabelValues("http", outcomeOf(err)).Inc()
		return err
	}
	outcome := "ok"
	if reply.Duplicate {
		outcome = "duplicate"
	}
	s.metrics.reports.WithLabelValues("http", outcome).Inc()
	var encoded []byte
	if c.Request().Header.Get(frameReplyHeader) != "" {
		encoded = s.fitFrame(r, reply)
	} else {
		encoded = EncodeReply(r, reply, s.cfg.NodeID)
	}
	// A client that reads its reply slowly must not hold a worker.
	release()
	return c.JSONBlob(http.StatusOK, encoded)
}

// acquireWorker waits for a free report worker and returns the function
// that frees it, which may be called more than once. The Go runtime wakes
// goroutines blocked on a channel send in the order they blocked, so
// waiting reports are served about in arrival order.
func (s *Server) acquireWorker() (release func()) {
	start := time.Now()
	s.workers <- struct{}{}
	s.metrics.reportWait.Observe(time.Since(start).Seconds())
	var once sync.Once
	return func() { once.Do(func() { <-s.workers }) }
}

func outcomeOf(err error) string {
	switch toError(err).Status {
	case http.StatusBadRequest:
		return "invalid"
	case http.StatusRequestEntityTooLarge:
		return "too_large"
	}
	return "error"
}

// EncodeReply encodes the response to r. A report without a version gets
// exactly {"<service>": {"<slot>": {"<user>": {"<resource>": quota}}}}, the
// only shape the Lua client accepts: no other top-level key, and one slot
// key per service. A version 2 report gets the quotas with the central's
// slot, the clock offset and the leader's ID.
func EncodeReply(r *protocol.Report, reply ReportReply, leader string) []byte {
	slot := strconv.FormatInt(reply.NodeSlot, 10)
	if r.Version != ReportVersion2 {
		if reply.Encoded != nil {
			return appendEncodedLuaReply(make([]byte, 0, 64+encodedSize(reply.Encoded)), slot, reply.Encoded)
		}
		return appendLuaReply(make([]byte, 0, 64+128*countEntries(reply.Quotas)), slot, reply.Quotas)
	}
	// The quotas go in as encoded JSON, so they are rounded as in the
	// Lua shape (RoundQuota).
	encoded := reply.Encoded
	if encoded == nil {
		encoded = make(map[string][]byte, len(reply.Quotas))
		for service, quotas := range reply.Quotas {
			encoded[service] = AppendQuotas(nil, quotas)
		}
	}
	byService := make(map[string]map[string]json.RawMessage, len(encoded))
	for service, quotas := range encoded {
		byService[service] = map[string]json.RawMessage{slot: quotas}
	}
	data, err := json.Marshal(struct {
		Version     int                        `json:"version"`
		Slot        int64                      `json:"slot"`
		CentralSlot int64                      `json:"central_slot"`
		Offset      int64                      `json:"offset"`
		Leader      string                     `json:"leader"`
		Duplicate   bool                       `json:"duplicate,omitempty"`
		Quotas      any                        `json:"quotas"`
		Shares      map[string]protocol.Shares `json:"shares,omitempty"`
	}{ReportVersion2, reply.NodeSlot, reply.CentralSlot, reply.Offset, leader, reply.Duplicate, byService, reply.Shares})
	if err != nil {
		// Quotas are finite floats and names are strings, so this is not
		// expected to fail. An empty object leaves the client's old quotas.
		return []byte("{}")
	}
	return data
}

// quotaMaps returns the reply's quotas as maps, decoding Encoded when the
// quotas were encoded ahead.
func (reply ReportReply) quotaMaps() (map[string]protocol.Quotas, error) {
	if reply.Encoded == nil {
		return reply.Quotas, nil
	}
	out := make(map[string]protocol.Quotas, len(reply.Encoded))
	for service, encoded := range reply.Encoded {
		var quotas protocol.Quotas
		if err := json.Unmarshal(encoded, &quotas); err != nil {
			return nil, fmt.Errorf("quotas of service %q encoded ahead: %w", service, err)
		}
		out[service] = quotas
	}
	return out, nil
}

// encodedSize returns the bytes the encoded quotas take.
func encodedSize(encoded map[string][]byte) int {
	n := 0
	for service, quotas := range encoded {
		n += len(service) + len(quotas) + 32
	}
	return n
}

// leaderIsSelf reports whether Raft names this central as the leader.
func (s *Server) leaderIsSelf() bool {
	id, _ := s.cfg.Cluster.Leader()
	return id == s.cfg.NodeID
}

// countEntries returns how many (service, user) entries quotas holds, to
// size the reply buffer.
func countEntries(quotas map[string]protocol.Quotas) int {
	n := 0
	for _, users := range quotas {
		n += len(users)
	}
	return n
}
