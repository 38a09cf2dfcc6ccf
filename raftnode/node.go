package raftnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

const (
	// storeFile is the bolt file in DataDir that holds the Raft log and the
	// stable store (current term, last vote).
	storeFile = "raft.db"

	// retainSnapshots is how many snapshots the file snapshot store keeps.
	// Two leave one to fall back on if the newest is damaged.
	retainSnapshots = 2

	// boltOpenTimeout bounds the wait for the bolt file lock, so a second
	// process on the same DataDir fails instead of hanging.
	boltOpenTimeout = time.Second

	// logCacheSize is how many recent log entries are cached in memory, so
	// replication to followers rarely reads from bolt.
	logCacheSize = 512

	// transportMaxPool is how many idle connections to each peer the TCP
	// transport keeps.
	transportMaxPool = 3

	// transportTimeout is the I/O deadline of one transport RPC. Snapshot
	// transfers get a longer deadline scaled to their size by raft.
	transportTimeout = 10 * time.Second
)

// Node is one server of the Raft group: hashicorp/raft with its stores,
// transport and leadership feed. All methods are safe for concurrent use.
type Node struct {
	cfg    Config
	logger *slog.Logger

	raft      *raft.Raft
	transport *raft.NetworkTransport
	// tlsLayer is the transport's stream layer under mutual TLS, nil
	// without TLS.
	tlsLayer *tlsStreamLayer
	store    *raftboltdb.BoltStore
	addr     string // advertised Raft address, resolved by the listener

	leadership *leadershipFeed

	// membershipMu serializes Join and Remove, so each reads the
	// configuration and changes it without another change in between.
	membershipMu sync.Mutex

	closed    chan struct{} // closed when Close starts
	stopped   chan struct{} // closed when raft has shut down
	closeOnce sync.Once
	closeErr  error
}

// Open starts a Raft server with the stores in cfg.DataDir and a TCP
// transport on cfg.RaftAddr, with mutual TLS when cfg.TLS is set. With cfg.Bootstrap and an empty DataDir it
// creates a one-server cluster of this node. Otherwise the node starts as a
// follower: a new node waits until the leader adds it with Join, and a node
// with existing state rejoins the cluster its configuration names.
func Open(cfg Config) (*Node, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger.With("component", "raftnode", "node_id", cfg.NodeID)
	raftLogger := newHCLogAdapter(cfg.Logger.With("component", "raft", "node_id", cfg.NodeID))

	// closers undo the steps done so far when a later one fails, in reverse.
	var closers []func() error
	fail := func(err error) (*Node, error) {
		for i := len(closers) - 1; i >= 0; i-- {
			if closeErr := closers[i](); closeErr != nil {
				logger.Error("failed to clean up after a failed open", "error", closeErr)
			}
		}
		return nil, err
	}

	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("raftnode: create data dir: %w", err)
	}
	storePath := filepath.Join(cfg.DataDir, storeFile)
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        storePath,
		BoltOptions: &bbolt.Options{Timeout: boltOpenTimeout},
	})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("raftnode: open log store %s: file is locked, is another process using DataDir? %w", storePath, err)
	}
	if err != nil {
		return nil, fmt.Errorf("raftnode: open log store %s: %w", storePath, err)
	}
	closers = append(closers, store.Close)

	logs, err := raft.NewLogCache(logCacheSize, store)
	if err != nil {
		return fail(fmt.Errorf("raftnode: create log cache: %w", err))
	}
	snapshots, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, retainSnapshots, raftLogger.Named("snapshot"))
	if err != nil {
		return fail(fmt.Errorf("raftnode: open snapshot store in %s: %w", cfg.DataDir, err))
	}

	transport, tlsLayer, err := newTransport(cfg, raftLogger)
	if err != nil {
		return fail(fmt.Errorf("raftnode: listen on RaftAddr %s: %w", cfg.RaftAddr, err))
	}
	closers = append(closers, transport.Close)
	addr := string(transport.LocalAddr())

	hasState, err := raft.HasExistingState(logs, store, snapshots)
	if err != nil {
		return fail(fmt.Errorf("raftnode: read existing state in %s: %w", cfg.DataDir, err))
	}

	feed := newLeadershipFeed(logger)
	r, err := raft.NewRaft(cfg.raftConfig(raftLogger, feed.raftCh), cfg.FSM, logs, store, snapshots, transport)
	if err != nil {
		return fail(fmt.Errorf("raftnode: start raft: %w", err))
	}
	go feed.run(r)
	closers = append(closers, func() error {
		err := r.Shutdown().Error()
		feed.stop(context.Background())
		return err
	})

	n := &Node{
		cfg:        cfg,
		logger:     logger,
		raft:       r,
		transport:  transport,
		tlsLayer:   tlsLayer,
		store:      store,
		addr:       addr,
		leadership: feed,
		closed:     make(chan struct{}),
		stopped:    make(chan struct{}),
	}

	bootstrapped := false
	if cfg.Bootstrap && !hasState {
		if err := n.bootstrap(); err != nil {
			return fail(err)
		}
		bootstrapped = true
	}
	if err := n.checkOwnAddress(); err != nil {
		return fail(err)
	}

	logger.Info("raft node started", "raft_addr", addr, "data_dir", cfg.DataDir,
		"existing_state", hasState, "bootstrapped", bootstrapped, "tls", cfg.TLS != nil)
	return n, nil
}

// newTransport listens on cfg.RaftAddr with plain TCP, or with mutual TLS
// when cfg.TLS is set. Either way the transport advertises the listener's
// address, which has the real port when RaftAddr has port 0.
func newTransport(cfg Config, raftLogger *hclogAdapter) (*raft.NetworkTransport, *tlsStreamLayer, error) {
	transportConfig := &raft.NetworkTransportConfig{
		MaxPool: transportMaxPool,
		Timeout: transportTimeout,
		Logger:  raftLogger.Named("transport"),
	}
	if cfg.TLS == nil {
		transport, err := raft.NewTCPTransportWithConfig(cfg.RaftAddr, nil, transportConfig)
		return transport, nil, err
	}
	stream, err := newTLSStreamLayer(cfg.RaftAddr, cfg.TLS)
	if err != nil {
		return nil, nil, err
	}
	transportConfig.Stream = stream
	return raft.NewNetworkTransportWithConfig(transportConfig), stream, nil
}

// bootstrap writes the first configuration: this node as the only voter.
func (n *Node) bootstrap() error {
	configuration := raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter,
		ID:       raft.ServerID(n.cfg.NodeID),
		Address:  raft.ServerAddress(n.addr),
	}}}
	err := n.raft.BootstrapCluster(configuration).Error()
	if errors.Is(err, raft.ErrCantBootstrap) {
		// Raft found state that HasExistingState did not. The cluster
		// exists, which is all that bootstrapping is for.
		n.logger.Info("cluster already bootstrapped", "error", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("raftnode: bootstrap cluster: %w", err)
	}
	return nil
}

// checkOwnAddress warns when the stored configuration lists this node at
// another address than the one it listens on. The other servers keep
// dialing the old address until the node is joined again with the new one.
func (n *Node) checkOwnAddress() error {
	future := n.raft.GetConfiguration()
	if err := future.Error(); err != nil {
		return fmt.Errorf("raftnode: read configuration: %w", err)
	}
	for _, server := range future.Configuration().Servers {
		if string(server.ID) == n.cfg.NodeID && string(server.Address) != n.addr {
			n.logger.Warn("configuration lists this node at another address, join it again with the new address",
				"configured_addr", server.Address, "raft_addr", n.addr)
		}
	}
	return nil
}

// ID returns this node's server ID.
func (n *Node) ID() string { return n.cfg.NodeID }

// Addr returns the Raft address this node listens on and advertises.
func (n *Node) Addr() string { return n.addr }

// Close stops the node. The order is:
//
//  1. If this node is the leader and other voters exist, hand leadership
//     to one of them, so the cluster does not wait an election timeout for
//     a new leader. ctx bounds this step, and raft gives up after about
//     two election timeouts. When ctx is already done, Close skips it.
//  2. Shut raft down. This waits for raft's goroutines, including the
//     FSM's, so no Apply, Snapshot or Restore runs afterwards.
//  3. Close the transport. raft's shutdown already closes it, and closing
//     it again changes nothing.
//  4. End the leadership feed: queue a loss of leadership when this node
//     was the leader, put the queued transitions into the channel's buffer
//     and close the channel. Close waits for the consumer, bounded by ctx,
//     only when the buffer is full.
//  5. Close the bolt store, which nothing writes to any more.
//
// Close is idempotent. Later calls return the first call's error.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() { n.closeErr = n.shutdown(ctx) })
	return n.closeErr
}

func (n *Node) shutdown(ctx context.Context) error {
	start := time.Now()
	close(n.closed)
	var errs []error

	n.handOverLeadership(ctx)

	if err := n.raft.Shutdown().Error(); err != nil {
		errs = append(errs, fmt.Errorf("shut down raft: %w", err))
	}
	close(n.stopped)
	if err := n.transport.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close transport: %w", err))
	}
	n.leadership.stop(ctx)
	if err := n.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close log store: %w", err))
	}

	err := errors.Join(errs...)
	if err != nil {
		n.logger.Error("raft node stopped with errors", "duration", time.Since(start), "error", err)
		return fmt.Errorf("raftnode: close: %w", err)
	}
	n.logger.Info("raft node stopped", "duration", time.Since(start))
	return nil
}

// handOverLeadership transfers leadership to another voter when this node
// is the leader and one exists. It logs a failure and does not return it,
// because the node shuts down either way and the others then elect a
// leader after an election timeout.
func (n *Node) handOverLeadership(ctx context.Context) {
	if n.raft.State() != raft.Leader {
		return
	}
	configuration, err := n.configuration()
	if err != nil {
		n.logger.Warn("skipped leadership transfer before shutdown: cannot read configuration", "error", err)
		return
	}
	otherVoters := 0
	for _, server := range configuration.Servers {
		if string(server.ID) != n.cfg.NodeID && server.Suffrage == raft.Voter {
			otherVoters++
		}
	}
	if otherVoters == 0 {
		return
	}
	if ctx.Err() != nil {
		n.logger.Warn("skipped leadership transfer before shutdown: context done", "error", ctx.Err())
		return
	}

	start := time.Now()
	if err := n.waitFuture(ctx, n.raft.LeadershipTransfer()); err != nil {
		n.logger.Warn("leadership transfer before shutdown failed", "duration", time.Since(start), "error", err)
		return
	}
	// The new leader is known here once its first heartbeat arrives, so
	// wait a little for it before naming it.
	newID, newAddr := n.Leader()
	deadline := time.Now().Add(newLeaderWait)
	for newID == "" && ctx.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(leaderPollInterval)
		newID, newAddr = n.Leader()
	}
	n.logger.Info("transferred leadership before shutdown", "duration", time.Since(start),
		"leader_id", newID, "leader_addr", newAddr)
}

// waitFuture waits for future, for the end of ctx or for raft's shutdown,
// whichever comes first. When ctx ends first it returns ctx.Err(), and
// after the shutdown raft.ErrRaftShutdown.
//
// The shutdown case is needed because hashicorp/raft v1.7.2 does not
// resolve every future on shutdown: an entry that was committed and queued
// for the FSM when raft stopped keeps its future pending forever. The
// goroutine that waits for such a future stays blocked.
func (n *Node) waitFuture(ctx context.Context, future raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- future.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stopped:
		return raft.ErrRaftShutdown
	}
}

// withApplyTimeout returns ctx bounded by ApplyTimeout and the time left
// before its deadline, or ErrTimeout when no time is left.
func (n *Node) withApplyTimeout(ctx context.Context, op string) (context.Context, context.CancelFunc, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	deadline, _ := ctx.Deadline()
	remaining := time.Until(deadline)
	if err := ctx.Err(); err != nil || remaining <= 0 {
		cancel()
		if err == nil {
			err = context.DeadlineExceeded
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, nil, 0, fmt.Errorf("%s: %w: %w", op, ErrTimeout, err)
		}
		return nil, nil, 0, fmt.Errorf("%s: %w", op, err)
	}
	return ctx, cancel, remaining, nil
}

// Apply replicates data through the Raft log and returns the response of
// the FSM's Apply on this node. It must run on the leader, and it waits
// until the entry is applied, for at most ApplyTimeout or until ctx ends.
// When the FSM's response is an error, Apply returns it as err.
//
// On a follower, or when this node loses leadership before the entry is
// committed, the error is a *NotLeaderError. It matches ErrNotLeader, and
// ErrNoLeader when no leader is known. After the timeout or the ctx
// deadline the error wraps ErrTimeout, and after Close ErrClosed. After
// any of these errors except ErrNotLeader on a follower, the entry may
// still be committed and applied.
func (n *Node) Apply(ctx context.Context, data []byte) (any, error) {
	ctx, cancel, remaining, err := n.withApplyTimeout(ctx, "raftnode: apply")
	if err != nil {
		return nil, err
	}
	defer cancel()

	// The timeout given to raft bounds only the wait to enqueue the entry.
	// ctx bounds the rest.
	future := n.raft.Apply(data, remaining)
	if err := n.waitFuture(ctx, future); err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, contextError(ctx, "raftnode: apply")
		}
		return nil, n.mapRaftError("raftnode: apply", err)
	}
	response := future.Response()
	if err, ok := response.(error); ok {
		return nil, err
	}
	return response, nil
}

// Barrier waits until every entry committed before the call is applied to
// this node's FSM. It must run on the leader. A new leader should call it
// before it reads the FSM, so that the FSM contains the entries committed
// in earlier terms. The timeout and the errors are those of Apply.
func (n *Node) Barrier(ctx context.Context) error {
	ctx, cancel, remaining, err := n.withApplyTimeout(ctx, "raftnode: barrier")
	if err != nil {
		return err
	}
	defer cancel()

	if err := n.waitFuture(ctx, n.raft.Barrier(remaining)); err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return contextError(ctx, "raftnode: barrier")
		}
		return n.mapRaftError("raftnode: barrier", err)
	}
	return nil
}

// IsLeader reports whether this node is the leader now. Leadership can end
// at any moment, so a caller that acts on it must handle ErrNotLeader.
func (n *Node) IsLeader() bool {
	return n.raft.State() == raft.Leader
}

// Leader returns the server ID and Raft address of the leader as this node
// last learned them, or two empty strings when no leader is known.
func (n *Node) Leader() (id, addr string) {
	leaderAddr, leaderID := n.raft.LeaderWithID()
	return string(leaderID), string(leaderAddr)
}

// WaitForLeader polls until a leader is known and returns its server ID.
// When ctx ends first it returns an error wrapping ErrNoLeader, and after
// Close, ErrClosed.
func (n *Node) WaitForLeader(ctx context.Context) (string, error) {
	ticker := time.NewTicker(leaderPollInterval)
	defer ticker.Stop()
	for {
		if id, _ := n.Leader(); id != "" {
			return id, nil
		}
		select {
		case <-ticker.C:
		case <-n.closed:
			return "", fmt.Errorf("raftnode: wait for leader: %w", ErrClosed)
		case <-ctx.Done():
			return "", fmt.Errorf("raftnode: wait for leader: %w: %w", ErrNoLeader, ctx.Err())
		}
	}
}

// leaderPollInterval is how often WaitForLeader checks for a leader.
const leaderPollInterval = 10 * time.Millisecond

// newLeaderWait bounds the wait for the new leader's first heartbeat after
// a leadership transfer at shutdown, which only names it in the log.
const newLeaderWait = time.Second
