package central

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/throttlecentral/throttle-central/api"
	"github.com/throttlecentral/throttle-central/fsm"
	"github.com/throttlecentral/throttle-central/protocol"
	"github.com/throttlecentral/throttle-central/quota"
	"github.com/throttlecentral/throttle-central/raftnode"
)

// errNotAllocating is returned for a report that reaches a central whose
// allocator is not running: it is not the leader, or has just become it
// and is still restoring. It matches raftnode.ErrNotLeader, so the API
// forwards the report to the leader.
var errNotAllocating = fmt.Errorf("%w: this central assigns no quotas", raftnode.ErrNotLeader)

const (
	// DefaultCheckpointEvery is how often, in slots, the leader replicates a
	// bucket checkpoint for its successor.
	DefaultCheckpointEvery = 5
	// checkpointTimeout bounds the replication of one checkpoint.
	checkpointTimeout = 2 * time.Second
	// reportLead is how far into its second an edge node sends its report:
	// the Lua client and the Go library send about 50 ms after the second
	// starts. The slot offset of a node is measured against it.
	reportLead = 50 * time.Millisecond
	// maxClockOffset is the largest clock error, in seconds, that the
	// leader maps away. A report further off is rejected: its node's clock
	// is broken, or slot_number is not a unix second.
	maxClockOffset = 24 * 60 * 60
)

// allocator runs the quota engine while this central leads: it ingests
// reports, assigns the quotas of slot S+2 at the middle of every slot S,
// and replicates a checkpoint every few slots. It follows limit changes as
// the FSM's Listener. On losing leadership it stops at once and drops the
// engine, so a deposed leader hands out no further quota.
type allocator struct {
	log             *slog.Logger
	node            *raftnode.Node
	state           *fsm.FSM
	config          quota.Config
	checkpointEvery int64
	now             func() time.Time
	// liveness is the gossip view of which edge nodes are live, or nil
	// when gossip is off. It is set before Raft starts and never changed.
	liveness quota.Liveness

	// mu orders limit changes against the load of all limits into a new
	// engine, so a change applied during the load is never overwritten by
	// the older copy.
	mu     sync.Mutex
	engine atomic.Pointer[quota.Engine]

	// runMu serializes start and stop, which run on the leadership
	// goroutine and in Close, and guards cancel and done.
	runMu  sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}

	checkpointing atomic.Bool
	metrics       *allocatorMetrics
	replies       replyCache

	// offsets is each node's clock offset in whole seconds, kept for one
	// leadership term.
	offsets clockOffsets
}

// newAllocator returns an allocator; the caller sets node and state before
// Raft starts applying entries.
func newAllocator(log *slog.Logger, config quota.Config, checkpointEvery int64) *allocator {
	if checkpointEvery <= 0 {
		checkpointEvery = DefaultCheckpointEvery
	}
	if config.Mode == "" {
		config.Mode = quota.DefaultMode
	}
	return &allocator{
		log:             log.With(slog.String("component", "allocator")),
		config:          config,
		checkpointEvery: checkpointEvery,
		now:             time.Now,
	}
}

// LimitsSet passes a committed limit change to the running engine.
func (a *allocator) LimitsSet(service, user string, limits map[string]quota.Limit, slot int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := a.engine.Load(); e != nil {
		if err := e.SetLimits(service, user, limits, slot); err != nil {
			a.log.Error("engine rejected committed limits", slog.String("service", service),
				slog.String("user", user), slog.Any("error", err))
		}
	}
}

// LimitsDeleted passes a committed deletion to the running engine.
func (a *allocator) LimitsDeleted(service, user string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := a.engine.Load(); e != nil {
		e.DeleteLimits(service, user)
	}
}

// Restored reloads the limits after a snapshot replaced the state. A leader
// does not normally restore snapshots; if it does, the running engine
// reloads every limit and drops those that are gone.
func (a *allocator) Restored() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := a.engine.Load(); e != nil {
		a.log.Warn("state restored from a snapshot while allocating; reloading limits")
		a.loadLimits(e)
	}
}

// loadLimits copies every limit of the replicated state into e. The caller
// holds a.mu.
func (a *allocator) loadLimits(e *quota.Engine) {
	for _, u := range a.state.AllLimits() {
		if err := e.SetLimits(u.Service, u.User, u.Limits, u.Slot); err != nil {
			a.log.Error("engine rejected stored limits", slog.String("service", u.Service),
				slog.String("user", u.User), slog.Any("error", err))
		}
	}
}

// start builds a new engine from the replicated limits and the latest
// checkpoint and starts the slot loop. The caller has run a barrier, so the
// state holds every committed entry.
func (a *allocator) start() error {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	e, err := quota.New(a.config)
	if err != nil {
		return err
	}
	first := a.firstSlot()

	a.mu.Lock()
	a.engine.Store(e)
	a.loadLimits(e)
	a.mu.Unlock()

	cp, ok := a.state.Checkpoint()
	switch {
	case !ok:
		a.log.Info("no checkpoint yet; starting with fresh buckets", slog.Int64("first_slot", first))
	case cp.Mode != e.Mode():
		a.log.Warn("checkpoint is of another allocation mode; starting with fresh buckets",
			slog.String("checkpoint_mode", string(cp.Mode)), slog.String("mode", string(e.Mode())))
	case cp.Slot >= first:
		a.log.Warn("checkpoint is newer than this central's clock; starting with fresh buckets",
			slog.Int64("checkpoint_slot", cp.Slot), slog.Int64("first_slot", first))
	default:
		if err := e.Restore(cp, first); err != nil {
			return fmt.Errorf("restore checkpoint of slot %d: %w", cp.Slot, err)
		}
		a.log.Info("resumed from checkpoint", slog.Int64("checkpoint_slot", cp.Slot),
			slog.Int64("first_slot", first), slog.Int("buckets", len(cp.Buckets)))
	}

	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.done = make(chan struct{})
	go func() {
		defer close(a.done)
		a.loop(ctx, e, first)
	}()
	return nil
}

// stop ends the slot loop and drops the engine. Reports get
// ErrNotAllocating from then on, and the accuracy gauges disappear, so that
// only the leader exports them.
func (a *allocator) stop() {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	a.mu.Lock()
	a.engine.Store(nil)
	a.mu.Unlock()
	if a.cancel != nil {
		a.cancel()
		<-a.done
		a.cancel = nil
	}
	a.replies.clear()
	a.offsets.reset()
	if a.metrics != nil {
		a.metrics.clearAccuracy()
	}
}

// firstSlot is the slot of the first assignment that can still run at its
// middle.
func (a *allocator) firstSlot() int64 {
	now := a.now()
	slot := now.Unix()
	if now.Sub(time.Unix(slot, 0)) >= 500*time.Millisecond {
		slot++
	}
	return slot
}

// loop assigns each slot at its middle. A slot whose middle has passed by
// more than a slot (the process was paused) is skipped, so quotas are never
// assigned late.
func (a *allocator) loop(ctx context.Context, e *quota.Engine, slot int64) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		at := time.Unix(slot, int64(500*time.Millisecond))
		timer.Reset(max(at.Sub(a.now()), 0))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if behind := a.now().Unix() - slot; behind > 0 {
			a.log.Warn("assignment is behind the clock; skipping slots", slog.Int64("slot", slot), slog.Int64("skipped", behind))
			slot += behind
		}
		if !a.node.IsLeader() {
			return
		}
		start := time.Now()
		result, err := e.Assign(slot, a.liveness)
		a.metrics.observeAssign(result, err, time.Since(start))
		if err != nil {
			a.log.Error("assignment failed", slog.Int64("slot", slot), slog.Any("error", err))
		} else {
			a.log.Debug("assigned", slog.Int64("slot", result.Slot), slog.Int("users", result.Users),
				slog.Int("nodes", result.Nodes), slog.Int("entries", result.Entries), slog.Duration("duration", time.Since(start)))
		}
		if err == nil {
			go a.replies.fill(e, result.Slot)
		}
		if slot%a.checkpointEvery == 0 {
			a.checkpoint(e)
		}
		slot++
	}
}

// checkpoint replicates the engine's bucket levels in the background. A
// checkpoint still in flight makes the next one wait for its turn.
func (a *allocator) checkpoint(e *quota.Engine) {
	if !a.checkpointing.CompareAndSwap(false, true) {
		a.log.Warn("previous checkpoint still replicating; skipping this one")
		return
	}
	cp := e.Checkpoint()
	go func() {
		defer a.checkpointing.Store(false)
		data, err := fsm.Encode(fsm.CheckpointCommand{Checkpoint: cp})
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), checkpointTimeout)
			_, err = a.node.Apply(ctx, data)
			cancel()
		}
		if err != nil {
			a.metrics.checkpoints.WithLabelValues("error").Inc()
			a.log.Warn("replicating a checkpoint failed", slog.Int64("slot", cp.Slot), slog.Any("error", err))
			return
		}
		a.metrics.checkpoints.WithLabelValues("ok").Inc()
	}()
}

// Report ingests a report and returns the node's quotas for the slot after
// the one it sent in, keyed in the node's own slot numbering. A node whose
// clock is off by whole seconds is mapped onto the central's slots.
func (a *allocator) Report(r *protocol.Report) (api.ReportReply, error) {
	e := a.engine.Load()
	if e == nil {
		return api.ReportReply{}, errNotAllocating
	}
	measured := slotOffset(a.now(), r.Slot)
	if measured > maxClockOffset || measured < -maxClockOffset {
		direction := "behind"
		if measured < 0 {
			direction = "ahead of"
		}
		return api.ReportReply{}, fmt.Errorf("%w: slot_number %d is %d s %s the central's clock; an edge node's clock must be within %d s (a day) of it, so check the clock of node %q, and that slot_number is a unix second",
			quota.ErrInvalid, r.Slot, max(measured, -measured), direction, maxClockOffset, r.NodeID)
	}
	offset := a.noteOffset(r.NodeID, r.Slot, measured)
	local := *r
	local.Slot += offset
	result, err := e.Ingest(&local)
	if err != nil {
		return api.ReportReply{}, err
	}
	services := r.Services()
	reply := api.ReportReply{
		NodeSlot:    r.Slot + 1,
		CentralSlot: local.Slot + 1,
		Offset:      offset,
		Duplicate:   result.Duplicate,
	}
	if reply.Encoded = a.replies.lookup(e, local.Slot+1, r.NodeID, services); reply.Encoded == nil {
		reply.Quotas = e.Quotas(r.NodeID, local.Slot+1, services)
	}
	if r.Version == api.ReportVersion2 {
		reply.Shares = make(map[string]protocol.Shares, len(services))
		for _, service := range services {
			reply.Shares[service] = e.Shares(service, r.Users(service))
		}
	}
	return reply, nil
}

// slotOffset is the number of whole seconds to add to a node's slot to get
// the central's: the node sends reportLead into its second.
func slotOffset(now time.Time, nodeSlot int64) int64 {
	sent := time.Unix(nodeSlot, int64(reportLead))
	return int64(math.Round(now.Sub(sent).Seconds()))
}

// Monitor returns the running engine's monitor data.
func (a *allocator) Monitor(q quota.MonitorQuery) (map[int64]any, error) {
	e := a.engine.Load()
	if e == nil {
		return nil, errNotAllocating
	}
	return e.Monitor(q)
}

// noteOffset returns the offset to apply to the report of slot from node,
// whose arrival time gives measured (see clockOffsets). It exports the node's offset and
// logs a change, since the Lua client sends its own slot numbers, so an
// offset means its clock is wrong by that many seconds.
func (a *allocator) noteOffset(node string, slot, measured int64) int64 {
	offset, previous, changed, known := a.offsets.resolve(node, measured)
	a.metrics.offset.WithLabelValues(node).Set(float64(offset))
	if changed {
		a.log.Warn("edge node clock is off by whole seconds; its slots are mapped onto the central's",
			slog.String("edge_node", node), slog.Int64("offset_seconds", offset), slog.Int64("previous_offset_seconds", previous))
	} else if known && measured != offset {
		a.log.Debug("report arrived later than its node's clock offset explains; it counts for its own second",
			slog.String("edge_node", node), slog.Int64("slot_number", slot), slog.Int64("offset_seconds", offset), slog.Int64("arrival_offset_seconds", measured))
	}
	return offset
}

// running reports whether the quota engine runs on this central.
func (a *allocator) running() bool {
	return a.engine.Load() != nil
}
