package raftnode

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
)

// Sentinel errors for the states that callers branch on. Match them with
// errors.Is.
var (
	// ErrNotLeader means that the operation must run on the leader and this
	// node is not the leader. The error is a *NotLeaderError, which carries
	// the leader's ID and address when they are known.
	ErrNotLeader = errors.New("not the leader")

	// ErrNoLeader means that no leader is known, because an election is in
	// progress or this node cannot reach a quorum. Retry later.
	ErrNoLeader = errors.New("no leader")

	// ErrTimeout means that the operation did not finish within the apply
	// timeout or the context deadline. A command that timed out may still be
	// committed and applied later.
	ErrTimeout = errors.New("timed out")

	// ErrClosed means that the node has been closed. An entry that was
	// being applied when the node closed may still be committed by the
	// other servers.
	ErrClosed = errors.New("raft node is closed")

	// ErrUnknownServer means that no server with the given ID is in the
	// cluster configuration.
	ErrUnknownServer = errors.New("unknown server")

	// ErrPeerRejected means that a joining server failed the mutual TLS
	// check of the Raft transport, so the leader did not add it: its
	// certificate is not signed by the cluster CA, or it does not accept
	// the leader's.
	ErrPeerRejected = errors.New("joining server failed the Raft TLS check")

	// ErrPeerUnreachable means that the leader could not connect to the
	// Raft address of a joining server to check its TLS, so it did not
	// add it. The join may succeed when retried.
	ErrPeerUnreachable = errors.New("joining server's Raft address cannot be reached")
)

// NotLeaderError is returned when an operation that needs the leader runs
// on another node. errors.Is matches it with ErrNotLeader, and also with
// ErrNoLeader when no leader is known. A caller that forwards requests to
// the leader tests ErrNoLeader first, then uses LeaderAddr.
type NotLeaderError struct {
	// LeaderID is the leader's server ID, or empty when no leader is known.
	LeaderID string
	// LeaderAddr is the leader's Raft address, or empty when no leader is
	// known.
	LeaderAddr string
	// Err is the error hashicorp/raft returned: raft.ErrNotLeader, or
	// raft.ErrLeadershipLost when this node lost leadership before the
	// command was committed. In that case the command may still be
	// committed by the next leader.
	Err error
}

func (e *NotLeaderError) Error() string {
	msg := "not the leader and no leader is known"
	if e.LeaderAddr != "" {
		msg = fmt.Sprintf("not the leader, the leader is %q at %s", e.LeaderID, e.LeaderAddr)
	}
	if e.Err != nil && !errors.Is(e.Err, raft.ErrNotLeader) {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is reports whether target is ErrNotLeader, or ErrNoLeader when no leader
// is known.
func (e *NotLeaderError) Is(target error) bool {
	switch target {
	case ErrNotLeader:
		return true
	case ErrNoLeader:
		return e.LeaderAddr == ""
	default:
		return false
	}
}

func (e *NotLeaderError) Unwrap() error { return e.Err }

// LeaderAddr returns the leader's Raft address carried by a
// *NotLeaderError in err's chain, or "" when err carries none.
func LeaderAddr(err error) string {
	var notLeader *NotLeaderError
	if errors.As(err, &notLeader) {
		return notLeader.LeaderAddr
	}
	return ""
}

// notLeaderError builds the error for an operation that reached a node
// that is not (or no longer) the leader.
func (n *Node) notLeaderError(cause error) error {
	id, addr := n.Leader()
	if id == n.cfg.NodeID {
		// The leader this node remembers is itself, which it no longer is.
		id, addr = "", ""
	}
	return &NotLeaderError{LeaderID: id, LeaderAddr: addr, Err: cause}
}

// mapRaftError translates an error from hashicorp/raft into this package's
// sentinels. op names the operation for the message.
func (n *Node) mapRaftError(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader),
		errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%s: %w", op, n.notLeaderError(err))
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%s: %w: %w", op, ErrTimeout, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%s: %w", op, ErrClosed)
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
}

// contextError translates the end of ctx into ErrTimeout when its deadline
// passed. A canceled context is returned as context.Canceled.
func contextError(ctx context.Context, op string) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w: %w", op, ErrTimeout, ctx.Err())
	}
	return fmt.Errorf("%s: %w", op, ctx.Err())
}
