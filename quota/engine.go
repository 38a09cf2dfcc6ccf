package quota

import (
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// Mode selects how the engine splits a bucket among edge nodes.
type Mode string

const (
	// ModeReserve reserves each slot's grant from the bucket when it is
	// assigned and settles it when the node reports: the unused part is
	// refunded and an overrun is charged. It keeps the per-second admitted
	// rate close to the limit.
	ModeReserve Mode = "reserve"
	// ModeClassic is the rule of the original Python central: the whole
	// bucket is handed out every slot and consumption is charged when it is
	// reported.
	ModeClassic Mode = "classic"
)

// DefaultMode is the allocation mode used when none is configured.
const DefaultMode = ModeReserve

// Modes lists every allocation mode, the default first.
var Modes = []Mode{ModeReserve, ModeClassic}

// ParseMode returns the mode named s.
func ParseMode(s string) (Mode, error) {
	for _, m := range Modes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("%w: allocation mode %q is unknown; use %q or %q", ErrInvalid, s, ModeReserve, ModeClassic)
}

const (
	// DefaultHistorySlots is how many slots of monitor data are kept
	// (nr_slot of the original central).
	DefaultHistorySlots = 60

	// Window is how many slots a node's latest report about a user keeps
	// the node in that user's split.
	Window = 5

	// LateSlots is how long a grant waits for its node's report. A grant
	// for slot t that is still unsettled at the assignment of slot t+LateSlots
	// counts as fully consumed, and a report that arrives later than that is
	// not billed, so nothing is charged twice.
	LateSlots = 5

	// quotaRing is how many assigned slots each node keeps: the two slots
	// ahead of the current one, the current one, and LateSlots of grants
	// waiting for reports.
	quotaRing = LateSlots + 4

	// duplicateSlots is how far back, in slots, the engine remembers which
	// (node, slot) reports it has applied. Older reports are ignored.
	duplicateSlots = 64

	shardCount = 64
)

// Config holds the engine's settings.
type Config struct {
	// Mode is the allocation mode; empty means DefaultMode.
	Mode Mode
	// HistorySlots is how many slots of monitor data are kept; zero means
	// DefaultHistorySlots.
	HistorySlots int
	// TopUsers is how many (service, user, resource) buckets with the
	// highest admitted/limit ratio each assignment returns in
	// Accuracy.TopUsers, from 0 (none) to MaxTopUsers.
	TopUsers int
}

const (
	// DefaultTopUsers is the default of throttle-central's
	// --metrics-top-users flag, which sets TopUsers. The zero Config
	// returns no top users.
	DefaultTopUsers = 10
	// MaxTopUsers caps TopUsers, because each top user becomes one metric
	// series.
	MaxTopUsers = 1000
)

// Engine is the quota engine of the leader: it ingests reports, keeps one
// token bucket per (service, user, resource) with a limit, and assigns each
// edge node's quotas slot by slot.
//
// The engine never reads the clock: every method takes the slot it acts on.
//
// Locking. Users are spread over shardCount shards by a hash of (service,
// user), and each shard has its own mutex that guards the users in it, their
// buckets and the per-node state about them. Ingest locks one shard at a
// time, per user, so hundreds of concurrent reports contend only when they
// name users of the same shard at the same instant. Assign processes the
// shards in parallel, holding each shard's lock while it splits that shard's
// buckets, so a report waits at most for one shard's share of an assignment.
// Each node has a small mutex for its duplicate filter and its published
// quotas; assignments publish a node's quotas as an immutable list, so
// answering a report never takes a shard lock. Lock order: assignMu, then a
// shard, then a node, then the history. The registry lock (nodesMu) is taken
// only before a node's lock, never together with a shard's.
type Engine struct {
	mode         Mode
	historySlots int
	topUsers     int

	seed   maphash.Seed
	shards [shardCount]shard

	nodesMu   sync.RWMutex
	nodes     map[string]*nodeState
	nodeByIdx []*nodeState
	freeIdx   []int

	// assignMu serialises Assign, Restore and Checkpoint.
	assignMu     sync.Mutex
	lastAssigned atomic.Int64
	liveNodes    atomic.Int64

	history *history
}

type shard struct {
	mu    sync.Mutex
	users map[userKey]*userState
}

type userKey struct {
	service, user string
}

// New returns an empty engine.
func New(cfg Config) (*Engine, error) {
	mode := cfg.Mode
	if mode == "" {
		mode = DefaultMode
	}
	if _, err := ParseMode(string(mode)); err != nil {
		return nil, err
	}
	slots := cfg.HistorySlots
	if slots == 0 {
		slots = DefaultHistorySlots
	}
	if slots < 1 {
		return nil, fmt.Errorf("%w: history slots %d must be at least 1", ErrInvalid, slots)
	}
	if cfg.TopUsers < 0 || cfg.TopUsers > MaxTopUsers {
		return nil, fmt.Errorf("%w: top users %d must be from 0 to %d", ErrInvalid, cfg.TopUsers, MaxTopUsers)
	}
	e := &Engine{
		mode:         mode,
		historySlots: slots,
		topUsers:     cfg.TopUsers,
		seed:         maphash.MakeSeed(),
		nodes:        make(map[string]*nodeState),
		history:      newHistory(slots),
	}
	for i := range e.shards {
		e.shards[i].users = make(map[userKey]*userState)
	}
	return e, nil
}

// Mode returns the engine's allocation mode.
func (e *Engine) Mode() Mode { return e.mode }

// LastAssigned returns the slot of the latest assignment, or 0 before the
// first one.
func (e *Engine) LastAssigned() int64 { return e.lastAssigned.Load() }

func (e *Engine) shardOf(k userKey) *shard {
	var h maphash.Hash
	h.SetSeed(e.seed)
	h.WriteString(k.service)
	h.WriteByte(0)
	h.WriteString(k.user)
	return &e.shards[h.Sum64()%shardCount]
}

// SetLimits replaces the limits of one user: resources missing from limits
// lose their limit. setSlot is the slot in which the change was committed;
// the change applies to every slot assigned after it. A new bucket starts
// with one second of tokens; a lowered limit cuts the stored level to the
// new capacity; a raised one keeps the level.
func (e *Engine) SetLimits(service, user string, limits map[string]Limit, setSlot int64) error {
	if err := ValidateName("service", service); err != nil {
		return err
	}
	if err := ValidateName("user", user); err != nil {
		return err
	}
	for resource, l := range limits {
		if err := ValidateName("resource", resource); err != nil {
			return err
		}
		if err := l.Validate(); err != nil {
			return fmt.Errorf("resource %q: %w", resource, err)
		}
	}

	k := userKey{service, user}
	s := e.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[k]
	if u == nil {
		if len(limits) == 0 {
			return nil
		}
		u = newUserState(k)
		s.users[k] = u
	}
	for _, r := range u.resources {
		if _, ok := limits[r.name]; !ok && r.hasLimit {
			r.removeLimit()
		}
	}
	for resource, l := range limits {
		u.resource(resource).setLimit(l, setSlot)
	}
	u.countLimits()
	return nil
}

// DeleteLimits removes every limit of one user. Its buckets are dropped and
// it gets no more quota; its consumption is still recorded for the monitor.
func (e *Engine) DeleteLimits(service, user string) {
	k := userKey{service, user}
	s := e.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.users[k]; u != nil {
		for _, r := range u.resources {
			r.removeLimit()
		}
		u.countLimits()
	}
}

// Limits returns the limits the engine holds for one user, or nil.
func (e *Engine) Limits(service, user string) map[string]Limit {
	k := userKey{service, user}
	s := e.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[k]
	if u == nil || u.limited == 0 {
		return nil
	}
	out := make(map[string]Limit, u.limited)
	for _, r := range u.resources {
		if r.hasLimit {
			out[r.name] = r.limit
		}
	}
	return out
}

// BucketLevel returns the current level of one bucket, in tokens, and
// whether the bucket exists.
func (e *Engine) BucketLevel(service, user, resource string) (float64, bool) {
	k := userKey{service, user}
	s := e.shardOf(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[k]
	if u == nil {
		return 0, false
	}
	for _, r := range u.resources {
		if r.name == resource && r.hasLimit {
			return r.level, true
		}
	}
	return 0, false
}

// node returns the state of node id, creating it if needed.
func (e *Engine) node(id string) *nodeState {
	e.nodesMu.RLock()
	n := e.nodes[id]
	e.nodesMu.RUnlock()
	if n != nil {
		return n
	}
	e.nodesMu.Lock()
	defer e.nodesMu.Unlock()
	if n = e.nodes[id]; n != nil {
		return n
	}
	n = &nodeState{id: id}
	if last := len(e.freeIdx) - 1; last >= 0 {
		n.idx = e.freeIdx[last]
		e.freeIdx = e.freeIdx[:last]
		e.nodeByIdx[n.idx] = n
	} else {
		n.idx = len(e.nodeByIdx)
		e.nodeByIdx = append(e.nodeByIdx, n)
	}
	e.nodes[id] = n
	return n
}

func (e *Engine) lookupNode(id string) *nodeState {
	e.nodesMu.RLock()
	defer e.nodesMu.RUnlock()
	return e.nodes[id]
}

// snapshotNodes returns the registered nodes indexed by idx; entries of
// freed indexes are nil.
func (e *Engine) snapshotNodes() []*nodeState {
	e.nodesMu.RLock()
	defer e.nodesMu.RUnlock()
	return append([]*nodeState(nil), e.nodeByIdx...)
}
