// Package fsm is the replicated state machine of a throttle-central cluster.
// It owns the state that every central holds identically: the limits of each
// (service, user), the quota engine's latest bucket checkpoint, and the
// servers' addresses and tombstones. It also owns the encoding of the
// commands that change that state. FSM implements raft.FSM of
// github.com/hashicorp/raft v1.7.2.
//
// Apply is deterministic: it never reads the clock or random numbers, and
// the leader stamps every time and slot into the command before raft.Apply.
package fsm

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/quota"
)

// Listener receives the limit changes that the FSM applies, so the leader's
// quota engine can follow them. The FSM calls it synchronously from Apply and
// Restore, in log order, after releasing its own lock, so a Listener may read
// the FSM. A Listener must not block for long, because Raft applies the next
// entry only after it returns.
type Listener interface {
	// LimitsSet is called after a user's whole limit set was replaced.
	// limits is a copy the Listener may keep, and slot is the slot of the
	// change.
	LimitsSet(service, user string, limits map[string]quota.Limit, slot int64)
	// LimitsDeleted is called after every limit of a user was removed. It is
	// also called when the user had no limits.
	LimitsDeleted(service, user string)
	// Restored is called after Restore replaced the whole state. The
	// Listener should drop what it holds and reload it from AllLimits.
	Restored()
}

// Options configures an FSM. The zero value is usable.
type Options struct {
	// Listener, if set, receives every limit change and every restore.
	Listener Listener
	// OnCorrupt is called when a log entry cannot be decoded, has an unknown
	// version or an unknown type. The default logs one error line and
	// panics, which stops the node: applying some entries and skipping
	// others would make the replicas diverge. If OnCorrupt returns, Apply
	// returns the error and leaves the state unchanged.
	OnCorrupt func(index uint64, err error)
	// Logger receives the FSM's log lines. Nil means slog.Default().
	Logger *slog.Logger
}

// FSM is the replicated state. Apply, Snapshot and Restore are called by
// Raft from one goroutine. The read methods are safe for concurrent use with
// them.
type FSM struct {
	listener  Listener
	onCorrupt func(index uint64, err error)
	logger    *slog.Logger

	mu    sync.RWMutex
	state state
}

var _ raft.FSM = (*FSM)(nil)

// New returns an empty FSM.
func New(opts Options) *FSM {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	f := &FSM{
		listener:  opts.Listener,
		onCorrupt: opts.OnCorrupt,
		logger:    logger.With("component", "fsm"),
		state:     newState(),
	}
	if f.onCorrupt == nil {
		f.onCorrupt = f.stopOnCorrupt
	}
	return f
}

// stopOnCorrupt is the default OnCorrupt: it logs the entry's index and the
// error, then panics with the same message.
func (f *FSM) stopOnCorrupt(index uint64, err error) {
	msg := fmt.Sprintf("corrupt log entry at index %d, stopping the node so replicas do not diverge: %v", index, err)
	f.logger.Error(msg, "index", index, "error", err)
	panic(msg)
}

// Apply decodes one committed log entry and applies it. It returns nil on
// success. A command with invalid content changes nothing but AppliedIndex
// and returns an error wrapping quota.ErrInvalid. Every replica does the same, so they stay
// identical. An entry that cannot be decoded goes to OnCorrupt.
func (f *FSM) Apply(entry *raft.Log) any {
	cmd, err := Decode(entry.Data)
	if err != nil {
		f.onCorrupt(entry.Index, err)
		return err
	}

	if err := cmd.Validate(); err != nil {
		f.mu.Lock()
		f.state.appliedIndex = entry.Index
		f.mu.Unlock()
		f.logger.Warn("skipped invalid command", "index", entry.Index, "type", cmd.Type(), "error", err)
		return fmt.Errorf("%s at index %d: %w", cmd.Type(), entry.Index, err)
	}

	f.mu.Lock()
	f.state.apply(cmd)
	f.state.appliedIndex = entry.Index
	f.mu.Unlock()

	f.notify(cmd)
	return nil
}

// notify passes a limit change to the listener. It runs after the lock is
// released, and Raft never applies two entries at once, so the listener
// receives the changes in log order.
func (f *FSM) notify(cmd Command) {
	if f.listener == nil {
		return
	}
	switch c := cmd.(type) {
	case SetLimitsCommand:
		f.listener.LimitsSet(c.Service, c.User, maps.Clone(c.Limits), c.Slot)
	case DeleteLimitsCommand:
		f.listener.LimitsDeleted(c.Service, c.User)
	}
}

// UserLimits is the limit set of one user.
type UserLimits struct {
	Service string
	User    string
	// Limits maps a resource to its limit.
	Limits map[string]quota.Limit
	// TS is the leader-stamped time of the last change, in unix milliseconds.
	TS int64
	// Slot is the slot (unix second) of the last change.
	Slot int64
}

// LimitRecord is the API form of one user's limits. Limit maps a resource
// to tokens per second. Burst lists only the resources with an explicit
// burst and is omitted when every burst is the default.
type LimitRecord struct {
	Service  string             `json:"service"`
	Username string             `json:"username"`
	Limit    map[string]float64 `json:"limit"`
	Burst    map[string]float64 `json:"burst,omitempty"`
	// TS is the leader-stamped time of the last change, in unix milliseconds.
	TS int64 `json:"ts"`
}

// Record converts u to its API form.
func (u UserLimits) Record() LimitRecord {
	rec := LimitRecord{
		Service:  u.Service,
		Username: u.User,
		Limit:    make(map[string]float64, len(u.Limits)),
		TS:       u.TS,
	}
	for resource, l := range u.Limits {
		rec.Limit[resource] = l.Rate
		if l.Burst != 0 {
			if rec.Burst == nil {
				rec.Burst = make(map[string]float64)
			}
			rec.Burst[resource] = l.Burst
		}
	}
	return rec
}

// Server is the addresses of one Raft server, recorded when it joined.
type Server struct {
	// ID is the Raft server ID.
	ID string `json:"id"`
	// HTTPAddr is the host:port of the server's HTTP API.
	HTTPAddr string `json:"http_addr"`
	// RaftAddr is the host:port of the server's Raft transport.
	RaftAddr string `json:"raft_addr"`
}

// Limits returns the limits of one user and whether the user has any.
func (f *FSM) Limits(service, user string) (UserLimits, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	stored, ok := f.state.limits[service][user]
	if !ok {
		return UserLimits{}, false
	}
	return stored.userLimits(service, user), true
}

// ServiceLimits returns the limits of every user of service, sorted by
// username, or nil when the service has none.
func (f *FSM) ServiceLimits(service string) []LimitRecord {
	f.mu.RLock()
	defer f.mu.RUnlock()
	users := f.state.limits[service]
	if len(users) == 0 {
		return nil
	}
	records := make([]LimitRecord, 0, len(users))
	for _, user := range slices.Sorted(maps.Keys(users)) {
		records = append(records, users[user].userLimits(service, user).Record())
	}
	return records
}

// Services returns the names of the services that have limits, sorted.
func (f *FSM) Services() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Sorted(maps.Keys(f.state.limits))
}

// AllLimits returns the limits of every user, sorted by service and then by
// user. A Listener uses it to reload after Restored.
func (f *FSM) AllLimits() []UserLimits {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var all []UserLimits
	for service, users := range f.state.limits {
		for user, stored := range users {
			all = append(all, stored.userLimits(service, user))
		}
	}
	slices.SortFunc(all, func(a, b UserLimits) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.User, b.User))
	})
	return all
}

// Checkpoint returns the latest bucket checkpoint and whether there is one.
func (f *FSM) Checkpoint() (quota.Checkpoint, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.state.checkpoint == nil {
		return quota.Checkpoint{}, false
	}
	return cloneCheckpoint(*f.state.checkpoint), true
}

// Servers returns the addresses of every server, sorted by ID.
func (f *FSM) Servers() []Server {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedServers(f.state.servers)
}

// Server returns the addresses of the server with the given Raft ID and
// whether they are known.
func (f *FSM) Server(id string) (Server, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s, ok := f.state.servers[id]
	return s, ok
}

// Tombstone returns the leader-stamped removal time of a server ID, in unix
// milliseconds, and whether the ID is tombstoned: removed and not joined
// again since.
func (f *FSM) Tombstone(id string) (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	ts, ok := f.state.tombstones[id]
	return ts, ok
}

// AppliedIndex returns the Raft index of the last command log entry this FSM
// applied, or the one recorded in the last restored snapshot. Raft passes
// only command entries to Apply, so this can be below raft.Raft's
// AppliedIndex, which also counts configuration and no-op entries.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.appliedIndex
}
