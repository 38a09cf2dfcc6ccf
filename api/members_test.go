package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
	"time"
)

func TestMembersWithGossipOff(t *testing.T) {
	node := newTestNode(t, followerID, false, nil)

	rec := node.do(t, http.MethodGet, "/v1/members", "")

	wantStatus(t, rec, http.StatusOK)
	var got map[string]any
	decodeJSONBody(t, rec, &got)
	want := map[string]any{"node_id": followerID, "gossip": false, "members": []any{}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("body %v, want %v", got, want)
	}
}

func TestMembersListsGossipView(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	members := []Member{
		{NodeID: "central-1", Role: "central", GossipAddr: "127.0.0.1:7946", HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001", State: "alive", Since: since},
		{NodeID: "edge-1", Role: "edge", GossipAddr: "127.0.0.1:7950", State: "dead", Since: since},
	}
	node := newTestNode(t, followerID, false, func(cfg *Config) {
		cfg.Members = func() []Member { return members }
	})

	rec := node.do(t, http.MethodGet, "/v1/members", "")

	wantStatus(t, rec, http.StatusOK)
	var got MemberList
	decodeJSONBody(t, rec, &got)
	want := MemberList{NodeID: followerID, Gossip: true, Members: members}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("body %+v, want %+v", got, want)
	}

	// The wire names are part of the API.
	var raw struct {
		Members []map[string]any `json:"members"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatalf("decoding %s: %v", rec.Body, err)
	}
	wantCentral := map[string]any{"node_id": "central-1", "role": "central", "gossip_addr": "127.0.0.1:7946",
		"http_addr": "127.0.0.1:8081", "raft_addr": "127.0.0.1:7001", "state": "alive", "since": "2026-01-02T03:04:05Z"}
	if !reflect.DeepEqual(raw.Members[0], wantCentral) {
		t.Errorf("central member %v, want %v", raw.Members[0], wantCentral)
	}
	if _, ok := raw.Members[1]["http_addr"]; ok {
		t.Errorf("edge member %v has an http_addr; it should be left out when empty", raw.Members[1])
	}
}

func TestMembersEmptyViewIsEmptyList(t *testing.T) {
	node := newTestNode(t, followerID, false, func(cfg *Config) {
		cfg.Members = func() []Member { return nil }
	})

	rec := node.do(t, http.MethodGet, "/v1/members", "")

	wantStatus(t, rec, http.StatusOK)
	if body := rec.Body.String(); body != `{"node_id":"central-2","gossip":true,"members":[]}`+"\n" {
		t.Errorf("body %q, want an empty members list", body)
	}
}
