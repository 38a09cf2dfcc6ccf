package raftnode

import (
	"context"
	"log/slog"
	"sync"

	"github.com/hashicorp/raft"
)

// raftNotifyBuffer is the capacity of the channel given to raft as
// Config.NotifyCh. Raft blocks on a full channel while running, and on
// shutdown it sends the final transition only if there is room, so the
// buffer keeps that last value for the feed to read.
const raftNotifyBuffer = 8

// leadershipBuffer is the capacity of the channel LeadershipChanges
// returns. Close puts the last transitions into it without waiting, so the
// consumer may be the goroutine that calls Close, unless it has fallen more
// than this many transitions behind.
const leadershipBuffer = 16

// leadershipFeed reads raft's NotifyCh and delivers every transition, in
// order, on one channel. Raft's LeaderCh is not used because it keeps only
// the newest value, so a consumer can miss a loss of leadership that was
// followed by a gain.
//
// The feed reads NotifyCh in every iteration of its loop and queues what
// the consumer has not received yet, so raft waits for that loop but never
// for the consumer. Transitions are queued from Open, so a consumer that
// subscribes late still receives the first gain. Consecutive equal values
// are merged, so the consumer receives true and false in turn, starting
// with true.
type leadershipFeed struct {
	logger *slog.Logger

	raftCh chan bool // given to raft as Config.NotifyCh
	out    chan bool // returned by LeadershipChanges, closed when the feed ends

	subscribeOnce sync.Once
	subscribed    chan struct{} // closed when LeadershipChanges is first called

	stopOnce sync.Once
	stopping chan struct{} // closed after raft shut down
	abandon  chan struct{} // closed when Close's ctx ended before the consumer received the rest
	done     chan struct{} // closed when run returns
}

func newLeadershipFeed(logger *slog.Logger) *leadershipFeed {
	return &leadershipFeed{
		logger:     logger,
		raftCh:     make(chan bool, raftNotifyBuffer),
		out:        make(chan bool, leadershipBuffer),
		subscribed: make(chan struct{}),
		stopping:   make(chan struct{}),
		abandon:    make(chan struct{}),
		done:       make(chan struct{}),
	}
}

// run moves transitions from raft to the consumer until stop is called.
func (f *leadershipFeed) run(r *raft.Raft) {
	defer close(f.done)
	defer close(f.out)

	var queue []bool
	leader := false
	record := func(isLeader bool, reason string) {
		if isLeader == leader {
			return
		}
		leader = isLeader
		queue = append(queue, isLeader)
		if isLeader {
			f.logger.Info("leadership gained", "term", r.CurrentTerm())
		} else {
			f.logger.Info("leadership lost", "term", r.CurrentTerm(), "reason", reason)
		}
	}

	subscribed := f.subscribed
	delivering := false
	for running := true; running; {
		// A nil channel blocks, which disables the send until there is a
		// consumer and something to send.
		var send chan bool
		var next bool
		if delivering && len(queue) > 0 {
			send, next = f.out, queue[0]
		}
		select {
		case isLeader := <-f.raftCh:
			record(isLeader, "raft stepped down")
		case send <- next:
			queue = queue[1:]
		case <-subscribed:
			delivering, subscribed = true, nil
		case <-f.stopping:
			running = false
		}
	}

	// Raft has shut down. It sent its last transition only if the buffer
	// had room, so read what is there and end on a loss of leadership.
	for drained := false; !drained; {
		select {
		case isLeader := <-f.raftCh:
			record(isLeader, "raft stepped down")
		default:
			drained = true
		}
	}
	record(false, "node closed")

	select {
	case <-f.subscribed:
	default:
		return // LeadershipChanges was never called, so no consumer exists
	}
	for i, isLeader := range queue {
		// Fill the buffer first, so an abandon never drops a transition
		// that fits.
		select {
		case f.out <- isLeader:
			continue
		default:
		}
		select {
		case f.out <- isLeader:
		case <-f.abandon:
			f.logger.Warn("leadership consumer stopped receiving, dropped the remaining transitions",
				"dropped", len(queue)-i)
			return
		}
	}
}

// subscribe returns the channel of transitions and starts delivery.
func (f *leadershipFeed) subscribe() <-chan bool {
	f.subscribeOnce.Do(func() { close(f.subscribed) })
	return f.out
}

// stop ends the feed after raft shut down. It waits until the queued
// transitions are in the channel's buffer or received, or until ctx ends.
// Calls after the first return at once.
func (f *leadershipFeed) stop(ctx context.Context) {
	f.stopOnce.Do(func() {
		close(f.stopping)
		select {
		case <-f.done:
		case <-ctx.Done():
			close(f.abandon)
			<-f.done
		}
	})
}

// LeadershipChanges returns the channel of this node's leadership
// transitions: true when it becomes the leader, false when it stops being
// the leader. Every transition since Open is delivered in order, true and
// false alternate, and the first value is true. The channel is closed by
// Close, after a final false when the node was the leader.
//
// There is one channel per node, so every call returns the same one, and
// it is meant for a single consumer. Close puts the last transitions into
// the channel's buffer and closes it without waiting for the consumer,
// unless the consumer is more than 16 transitions behind. Then Close waits
// for it until Close's ctx ends and drops the rest.
//
// NOTE: transitions are queued in memory until received, from Open on. A
// node that never calls LeadershipChanges queues one value per transition
// for its whole life.
func (n *Node) LeadershipChanges() <-chan bool {
	return n.leadership.subscribe()
}

// LeadershipTransfer hands leadership to the most up-to-date other voter
// and waits until this node has stepped down. It must run on the leader.
// Raft gives up after about two election timeouts.
func (n *Node) LeadershipTransfer() error {
	if err := n.raft.LeadershipTransfer().Error(); err != nil {
		return n.mapRaftError("raftnode: leadership transfer", err)
	}
	return nil
}
