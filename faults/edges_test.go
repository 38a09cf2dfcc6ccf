//go:build linux

package faults

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

const (
	// reportLead is how far into each second an edge node reports, as the
	// Lua client and the Go edge library do.
	reportLead = 50 * time.Millisecond
	// reportTimeout bounds one report request to one central, as in the
	// edge library.
	reportTimeout = 200 * time.Millisecond
	// reportWindow is how far into the second a node keeps trying other
	// centrals, as in the edge library: a later report would be counted
	// in the next second.
	reportWindow = 500 * time.Millisecond
)

// simEdge is one simulated edge node. Each second it admits what its
// quota allows of a fixed demand for one user, reports the previous
// second's counts (version 2) and keeps the quota of the reply. Without a
// quota for a second it admits its safe share, and without a share the
// whole demand, as the edge library's safe-share fallback does.
type simEdge struct {
	id string
	// skew is how many whole seconds the node's clock is ahead of the real
	// clock, so its slot numbers are the real ones plus skew.
	skew int64
	// demand is what the node's users ask for per second.
	demand float64
	// order lists the centrals in the order the node tries them, starting
	// with the one that replied last.
	order []int

	mu sync.Mutex
	// quotas holds the quota of each slot in the node's numbering, and
	// quotaLeader the leader whose reply carried it.
	quotas      map[int64]float64
	quotaLeader map[int64]string
	// admitted holds the amount admitted in each slot, and fallback the
	// slots admitted without a quota.
	admitted map[int64]float64
	fallback map[int64]bool
	share    float64
	next     int // index into order of the central to try first
	// sent holds every report body, and replies every reply, by the
	// report's slot number. sentAt holds when the attempt that got the
	// reply was sent.
	sent    map[int64][]byte
	replies map[int64]reportReply
	sentAt  map[int64]time.Time
}

// fleet is a set of simulated edge nodes reporting one user's
// consumption of one resource to a cluster.
type fleet struct {
	c                       *cluster
	service, user, resource string
	// requestSize converts the demand an edge could not admit into a
	// number of rejected requests.
	requestSize float64
	edges       []*simEdge
}

// newFleet returns n edge nodes with the same demand, node k trying
// central k mod 3 first.
func newFleet(c *cluster, n int, service, user, resource string, demand float64) *fleet {
	f := &fleet{c: c, service: service, user: user, resource: resource, requestSize: demand / 100}
	for k := range n {
		f.edges = append(f.edges, f.newEdge("edge-"+strconv.Itoa(k+1), 0, demand, k))
	}
	return f
}

func (f *fleet) newEdge(id string, skew int64, demand float64, first int) *simEdge {
	e := &simEdge{
		id:          id,
		skew:        skew,
		demand:      demand,
		quotas:      make(map[int64]float64),
		quotaLeader: make(map[int64]string),
		admitted:    make(map[int64]float64),
		fallback:    make(map[int64]bool),
		sent:        make(map[int64][]byte),
		replies:     make(map[int64]reportReply),
		sentAt:      make(map[int64]time.Time),
	}
	for k := range f.c.nodes {
		e.order = append(e.order, (first+k)%len(f.c.nodes))
	}
	return e
}

// run reports from every edge node once a second, reportLead into the
// second, until ctx ends.
func (f *fleet) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, e := range f.edges {
		wg.Go(func() {
			for {
				now := time.Now()
				at := now.Truncate(time.Second).Add(reportLead)
				if !at.After(now) {
					at = at.Add(time.Second)
				}
				timer := time.NewTimer(time.Until(at))
				select {
				case <-ctx.Done():
					timer.Stop()
					return
				case <-timer.C:
				}
				f.report(ctx, e, at.Unix()+e.skew, at.Truncate(time.Second).Add(reportWindow))
			}
		})
	}
	wg.Wait()
}

// admit decides what node e admitted in slot (the node's numbering): the
// demand up to the quota, else up to the safe share, else all of it.
func (e *simEdge) admit(slot int64) (admitted float64, fallback bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if q, ok := e.quotas[slot]; ok {
		admitted = min(e.demand, q)
	} else if e.share > 0 {
		admitted, fallback = min(e.demand, e.share), true
	} else {
		admitted, fallback = e.demand, true
	}
	e.admitted[slot], e.fallback[slot] = admitted, fallback
	return admitted, fallback
}

// report sends node e's report of slot-1 to the centrals in turn until
// one returns 200 or deadline passes, and keeps the reply's quota for
// slot+1. A report that no central accepted leaves no reply.
func (f *fleet) report(ctx context.Context, e *simEdge, slot int64, deadline time.Time) {
	admitted, _ := e.admit(slot - 1)
	rejected := math.Ceil(max(0, e.demand-admitted) / f.requestSize)
	body, err := json.Marshal(newReport(e.id, slot, f.service, f.user, f.resource, admitted, rejected))
	if err != nil {
		panic(err) // a map of plain values always encodes
	}

	e.mu.Lock()
	first := e.next
	e.sent[slot] = body
	e.mu.Unlock()

	for attempt := 0; ; attempt++ {
		remaining := time.Until(deadline)
		if remaining <= 0 || ctx.Err() != nil {
			break
		}
		k := (first + attempt) % len(e.order)
		sentAt := time.Now()
		reqCtx, cancel := context.WithTimeout(ctx, min(reportTimeout, remaining))
		r, err := f.c.transport.do(reqCtx, f.c.nodes[e.order[k]], http.MethodPost, "/v1/report", body)
		cancel()
		if err != nil || r.status != http.StatusOK {
			continue
		}
		var reply reportReply
		if json.Unmarshal(r.body, &reply) != nil {
			continue
		}
		e.store(slot, k, sentAt, reply, f.service, f.user, f.resource)
		return
	}
}

// store keeps a reply: the quota for slot+1 when it has one for the user,
// and the user's safe share.
func (e *simEdge) store(slot int64, next int, sentAt time.Time, reply reportReply, service, user, resource string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.next = next
	e.replies[slot] = reply
	e.sentAt[slot] = sentAt
	if q, ok := reply.Quotas[service][strconv.FormatInt(slot+1, 10)][user][resource]; ok {
		e.quotas[slot+1] = q
		e.quotaLeader[slot+1] = reply.Leader
	}
	if s, ok := reply.Shares[service][user][resource]; ok {
		e.share = s
	}
}

// second is the fleet's record of one real second.
type second struct {
	slot int64
	// quotaSum is the sum of the quotas the nodes held for the second,
	// and withQuota how many nodes held one.
	quotaSum  float64
	withQuota int
	// admitted is the sum of what the nodes admitted, and fallback how
	// many of them admitted without a quota.
	admitted float64
	fallback int
	// leaders lists the leaders whose replies carried the second's quotas.
	leaders map[string]bool
}

// second returns the record of the real second slot.
func (f *fleet) second(slot int64) second {
	s := second{slot: slot, leaders: make(map[string]bool)}
	for _, e := range f.edges {
		e.mu.Lock()
		local := slot + e.skew
		if q, ok := e.quotas[local]; ok {
			s.quotaSum += q
			s.withQuota++
			s.leaders[e.quotaLeader[local]] = true
		}
		s.admitted += e.admitted[local]
		if e.fallback[local] {
			s.fallback++
		}
		e.mu.Unlock()
	}
	return s
}
