package api

import (
	"net/http"
	"sync"
	"testing"

	"github.com/throttlecentral/throttle-central/raftnode"
)

// fakeRemoval is a Removal in memory.
type fakeRemoval struct {
	mu     sync.Mutex
	notice *RemovalNotice
}

func (f *fakeRemoval) MarkRemoved(notice RemovalNotice) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notice = &notice
	return nil
}

func (f *fakeRemoval) Removed() (RemovalNotice, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.notice == nil {
		return RemovalNotice{}, false
	}
	return *f.notice, true
}

func TestRemovalNoticeMakesCentralRefuseRequests(t *testing.T) {
	removal := &fakeRemoval{}
	node := newTestNode(t, followerID, false, func(cfg *Config) { cfg.Removal = removal })

	rec := node.do(t, http.MethodPost, "/v1/cluster/removed", `{"node_id": "central-9", "leader": "central-1"}`)
	body := wantError(t, rec, http.StatusBadRequest, CodeInvalid)
	wantMessageContains(t, body, `"central-9"`, `"central-2"`)
	if _, removed := removal.Removed(); removed {
		t.Fatal("a notice for another central was recorded")
	}
	wantStatus(t, node.do(t, http.MethodGet, "/v1/limits", ""), http.StatusOK)

	rec = node.do(t, http.MethodPost, "/v1/cluster/removed", `{"node_id": "central-2", "leader": "central-1", "at": "2026-12-05T01:02:03Z"}`)
	wantStatus(t, rec, http.StatusNoContent)

	for _, target := range []string{"/v1/limits", "/v1/limits/front/alice", "/v1/cluster", "/throttle"} {
		rec := node.do(t, http.MethodGet, target, "")
		body := wantError(t, rec, http.StatusServiceUnavailable, CodeRemoved)
		wantMessageContains(t, body, `leader "central-1"`, "2026-12-05T01:02:03Z", "--join")
	}
	rec = node.do(t, http.MethodPost, "/v1/report", `{"node_id": "edge-1", "slot_number": 1796411856, "consumption": {}, "rejection": {}}`)
	wantError(t, rec, http.StatusServiceUnavailable, CodeRemoved)
	for _, target := range []string{"/healthz", "/metrics"} {
		wantStatus(t, node.do(t, http.MethodGet, target, ""), http.StatusOK)
	}
	// A repeated notice is accepted, so a leader that retries succeeds.
	rec = node.do(t, http.MethodPost, "/v1/cluster/removed", `{"node_id": "central-2", "leader": "central-1"}`)
	wantStatus(t, rec, http.StatusNoContent)
}

func TestLeaderThatRemovesItselfRefusesRequests(t *testing.T) {
	removal := &fakeRemoval{}
	node := newTestNode(t, leaderID, true, func(cfg *Config) { cfg.Removal = removal })
	node.cluster.set(func(c *fakeCluster) {
		c.servers = []raftnode.Server{
			{ID: leaderID, Address: leaderRaftAddr, Suffrage: "Voter"},
			{ID: "central-2", Address: "127.0.0.1:7002", Suffrage: "Voter"},
		}
	})

	wantStatus(t, node.do(t, http.MethodDelete, "/v1/cluster/servers/"+leaderID, ""), http.StatusNoContent)

	notice, removed := removal.Removed()
	if !removed || notice.NodeID != leaderID || notice.Leader != leaderID {
		t.Fatalf("notice %+v, removed %v; want this leader's own removal", notice, removed)
	}
	body := wantError(t, node.do(t, http.MethodGet, "/v1/limits", ""), http.StatusServiceUnavailable, CodeRemoved)
	wantMessageContains(t, body, `leader "central-1"`)
}

func TestLeaderRejectsRemovalNotice(t *testing.T) {
	removal := &fakeRemoval{}
	node := newTestNode(t, leaderID, true, func(cfg *Config) { cfg.Removal = removal })

	rec := node.do(t, http.MethodPost, "/v1/cluster/removed", `{"node_id": "central-1", "leader": "central-9"}`)

	wantError(t, rec, http.StatusConflict, CodeConflict)
	if _, removed := removal.Removed(); removed {
		t.Error("the leader recorded a removal notice")
	}
	wantStatus(t, node.do(t, http.MethodGet, "/v1/limits", ""), http.StatusOK)
}
