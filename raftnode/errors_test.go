package raftnode

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
)

func TestNotLeaderErrorMatching(t *testing.T) {
	known := fmt.Errorf("raftnode: apply: %w", &NotLeaderError{LeaderID: "b", LeaderAddr: "127.0.0.1:7002", Err: raft.ErrNotLeader})
	if !errors.Is(known, ErrNotLeader) {
		t.Errorf("error with a known leader does not match ErrNotLeader: %v", known)
	}
	if errors.Is(known, ErrNoLeader) {
		t.Errorf("error with a known leader matches ErrNoLeader: %v", known)
	}
	if got := LeaderAddr(known); got != "127.0.0.1:7002" {
		t.Errorf("LeaderAddr = %q, want 127.0.0.1:7002", got)
	}
	if want := `raftnode: apply: not the leader, the leader is "b" at 127.0.0.1:7002`; known.Error() != want {
		t.Errorf("message = %q, want %q", known.Error(), want)
	}

	unknown := &NotLeaderError{Err: raft.ErrLeadershipLost}
	if !errors.Is(unknown, ErrNotLeader) {
		t.Errorf("error without a leader does not match ErrNotLeader: %v", unknown)
	}
	if !errors.Is(unknown, ErrNoLeader) {
		t.Errorf("error without a leader does not match ErrNoLeader: %v", unknown)
	}
	if !errors.Is(unknown, raft.ErrLeadershipLost) {
		t.Errorf("error does not unwrap to raft's cause: %v", unknown)
	}
	if got := LeaderAddr(unknown); got != "" {
		t.Errorf("LeaderAddr = %q, want empty", got)
	}
	if got := LeaderAddr(ErrTimeout); got != "" {
		t.Errorf("LeaderAddr of ErrTimeout = %q, want empty", got)
	}
}
