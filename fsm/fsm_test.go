package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/quota"
)

func TestApplySetLimits(t *testing.T) {
	f := newTestFSM(t, Options{})
	limits := map[string]quota.Limit{"traffic_up": {Rate: 1024}, "database_read": {Rate: 10, Burst: 50}}
	applyOK(t, f, 1, setLimits("front", "alice", testTS, limits))

	got, ok := f.Limits("front", "alice")
	if !ok {
		t.Fatalf("Limits(front, alice) found nothing after set_limits")
	}
	if !reflect.DeepEqual(got.Limits, limits) {
		t.Errorf("Limits(front, alice).Limits = %v, want %v", got.Limits, limits)
	}
	if got.TS != testTS {
		t.Errorf("Limits(front, alice).TS = %d, want %d", got.TS, testTS)
	}
	if got.Slot != testSlot {
		t.Errorf("Limits(front, alice).Slot = %d, want %d", got.Slot, testSlot)
	}
	if got.Service != "front" || got.User != "alice" {
		t.Errorf("Limits(front, alice) names %s/%s, want front/alice", got.Service, got.User)
	}
	if services := f.Services(); !reflect.DeepEqual(services, []string{"front"}) {
		t.Errorf("Services() = %v, want [front]", services)
	}
	if _, ok := f.Limits("front", "bob"); ok {
		t.Errorf("Limits(front, bob) found limits for a user that has none")
	}
	if _, ok := f.Limits("back", "alice"); ok {
		t.Errorf("Limits(back, alice) found limits in a service that has none")
	}
}

func TestApplySetLimitsReplacesWholeSet(t *testing.T) {
	f := newTestFSM(t, Options{})
	applyOK(t, f, 1, setLimits("front", "alice", testTS, map[string]quota.Limit{
		"traffic_up": {Rate: 1024}, "traffic_down": {Rate: 2048},
	}))
	second := map[string]quota.Limit{"traffic_up": {Rate: 512, Burst: 1024}, "database_write": {Rate: 5}}
	applyOK(t, f, 2, setLimits("front", "alice", testTS+1500, second))

	got, _ := f.Limits("front", "alice")
	if !reflect.DeepEqual(got.Limits, second) {
		t.Errorf("Limits after the second set = %v, want exactly %v", got.Limits, second)
	}
	if _, ok := got.Limits["traffic_down"]; ok {
		t.Errorf("traffic_down survived a set that did not name it")
	}
	if got.TS != testTS+1500 {
		t.Errorf("TS after the second set = %d, want %d", got.TS, testTS+1500)
	}
	if got.Slot != testSlot+1 {
		t.Errorf("Slot after the second set = %d, want %d", got.Slot, testSlot+1)
	}
}

func TestApplySetLimitsCopiesInput(t *testing.T) {
	f := newTestFSM(t, Options{})
	applyOK(t, f, 1, setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: 1}}))

	got, _ := f.Limits("front", "alice")
	got.Limits["traffic_up"] = quota.Limit{Rate: 999}
	again, _ := f.Limits("front", "alice")
	if again.Limits["traffic_up"].Rate != 1 {
		t.Errorf("changing a returned map changed the FSM: rate is %v, want 1", again.Limits["traffic_up"].Rate)
	}
}

func TestApplyDeleteLimits(t *testing.T) {
	f := newTestFSM(t, Options{})
	oneLimit := map[string]quota.Limit{"traffic_up": {Rate: 1}}
	applyOK(t, f, 1, setLimits("front", "alice", testTS, oneLimit))
	applyOK(t, f, 2, setLimits("front", "bob", testTS, oneLimit))
	applyOK(t, f, 3, setLimits("back", "carol", testTS, oneLimit))

	applyOK(t, f, 4, DeleteLimitsCommand{Service: "front", User: "alice", TS: testTS + 1})
	if _, ok := f.Limits("front", "alice"); ok {
		t.Errorf("Limits(front, alice) still found after delete_limits")
	}
	if _, ok := f.Limits("front", "bob"); !ok {
		t.Errorf("Limits(front, bob) gone after deleting alice")
	}
	if services := f.Services(); !reflect.DeepEqual(services, []string{"back", "front"}) {
		t.Errorf("Services() after deleting one of two users = %v, want [back front]", services)
	}

	applyOK(t, f, 5, DeleteLimitsCommand{Service: "front", User: "bob", TS: testTS + 2})
	if services := f.Services(); !reflect.DeepEqual(services, []string{"back"}) {
		t.Errorf("Services() after deleting the last user of front = %v, want [back]", services)
	}
	if records := f.ServiceLimits("front"); records != nil {
		t.Errorf("ServiceLimits(front) after deleting every user = %v, want nil", records)
	}

	applyOK(t, f, 6, DeleteLimitsCommand{Service: "front", User: "nobody", TS: testTS + 3})
	if services := f.Services(); !reflect.DeepEqual(services, []string{"back"}) {
		t.Errorf("Services() after deleting an unknown user = %v, want [back]", services)
	}
}

func TestServiceLimitsRecords(t *testing.T) {
	f := newTestFSM(t, Options{})
	applyOK(t, f, 1, setLimits("front", "zoe", testTS, map[string]quota.Limit{"traffic_up": {Rate: 100}}))
	applyOK(t, f, 2, setLimits("front", "alice", testTS+1000, map[string]quota.Limit{
		"traffic_up": {Rate: 10, Burst: 40}, "database_read": {Rate: 3},
	}))
	applyOK(t, f, 3, setLimits("back", "bob", testTS, map[string]quota.Limit{"traffic_up": {Rate: 1}}))

	records := f.ServiceLimits("front")
	want := []LimitRecord{
		{
			Service: "front", Username: "alice",
			Limit: map[string]float64{"traffic_up": 10, "database_read": 3},
			Burst: map[string]float64{"traffic_up": 40},
			TS:    testTS + 1000,
		},
		{Service: "front", Username: "zoe", Limit: map[string]float64{"traffic_up": 100}, TS: testTS},
	}
	if !reflect.DeepEqual(records, want) {
		t.Fatalf("ServiceLimits(front) = %+v, want %+v", records, want)
	}

	data, err := json.Marshal(records)
	if err != nil {
		t.Fatalf("marshal records: %v", err)
	}
	wantJSON := `[{"service":"front","username":"alice","limit":{"database_read":3,"traffic_up":10},"burst":{"traffic_up":40},"ts":1700000001000},` +
		`{"service":"front","username":"zoe","limit":{"traffic_up":100},"ts":1700000000000}]`
	if string(data) != wantJSON {
		t.Errorf("records as JSON =\n%s\nwant\n%s", data, wantJSON)
	}
}

func TestAllLimitsSorted(t *testing.T) {
	f := newTestFSM(t, Options{})
	oneLimit := map[string]quota.Limit{"traffic_up": {Rate: 1}}
	applyOK(t, f, 1, setLimits("front", "bob", testTS, oneLimit))
	applyOK(t, f, 2, setLimits("back", "zoe", testTS, oneLimit))
	applyOK(t, f, 3, setLimits("front", "alice", testTS, oneLimit))

	var got []string
	for _, u := range f.AllLimits() {
		got = append(got, u.Service+"/"+u.User)
	}
	want := []string{"back/zoe", "front/alice", "front/bob"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("AllLimits() order = %v, want %v", got, want)
	}
}

func TestApplyCheckpoint(t *testing.T) {
	f := newTestFSM(t, Options{})
	if cp, ok := f.Checkpoint(); ok {
		t.Errorf("Checkpoint() on a new FSM = %+v, want none", cp)
	}

	first := quota.Checkpoint{Slot: testSlot, Mode: quota.ModeReserve, LiveNodes: 3,
		Buckets: []quota.BucketLevel{{Service: "front", User: "alice", Resource: "traffic_up", Level: 12.5, Credit: 2}}}
	applyOK(t, f, 1, CheckpointCommand{Checkpoint: first})
	got, ok := f.Checkpoint()
	if !ok {
		t.Fatalf("Checkpoint() found none after a checkpoint command")
	}
	if !reflect.DeepEqual(got, first) {
		t.Errorf("Checkpoint() = %+v, want %+v", got, first)
	}

	got.Buckets[0].Level = -1
	again, _ := f.Checkpoint()
	if again.Buckets[0].Level != 12.5 {
		t.Errorf("changing a returned checkpoint changed the FSM: level is %v, want 12.5", again.Buckets[0].Level)
	}

	second := quota.Checkpoint{Slot: testSlot + 5, Mode: quota.ModeReserve, LiveNodes: 2}
	applyOK(t, f, 2, CheckpointCommand{Checkpoint: second})
	got, _ = f.Checkpoint()
	if !reflect.DeepEqual(got, second) {
		t.Errorf("Checkpoint() after a second checkpoint = %+v, want %+v", got, second)
	}
}

func TestApplyServersAndTombstones(t *testing.T) {
	f := newTestFSM(t, Options{})
	c1 := SetServerCommand{ID: "c1", HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001"}
	c2 := SetServerCommand{ID: "c2", HTTPAddr: "127.0.0.1:8082", RaftAddr: "127.0.0.1:7002"}
	applyOK(t, f, 1, c2)
	applyOK(t, f, 2, c1)

	want := []Server{
		{ID: "c1", HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001"},
		{ID: "c2", HTTPAddr: "127.0.0.1:8082", RaftAddr: "127.0.0.1:7002"},
	}
	if got := f.Servers(); !reflect.DeepEqual(got, want) {
		t.Errorf("Servers() = %+v, want %+v", got, want)
	}
	if got, ok := f.Server("c2"); !ok || got != want[1] {
		t.Errorf("Server(c2) = %+v, %v, want %+v, true", got, ok, want[1])
	}

	moved := SetServerCommand{ID: "c2", HTTPAddr: "10.0.0.2:8082", RaftAddr: "10.0.0.2:7002"}
	applyOK(t, f, 3, moved)
	if got, _ := f.Server("c2"); got.HTTPAddr != moved.HTTPAddr || got.RaftAddr != moved.RaftAddr {
		t.Errorf("Server(c2) after a new join = %+v, want the addresses of %+v", got, moved)
	}

	applyOK(t, f, 4, RemoveServerCommand{ID: "c2", TS: testTS})
	if got, ok := f.Server("c2"); ok {
		t.Errorf("Server(c2) after remove_server = %+v, want none", got)
	}
	if ts, ok := f.Tombstone("c2"); !ok || ts != testTS {
		t.Errorf("Tombstone(c2) = %d, %v, want %d, true", ts, ok, testTS)
	}
	if ts, ok := f.Tombstone("c1"); ok {
		t.Errorf("Tombstone(c1) = %d, true for a server that was never removed", ts)
	}
	if got := f.Servers(); !reflect.DeepEqual(got, want[:1]) {
		t.Errorf("Servers() after removing c2 = %+v, want %+v", got, want[:1])
	}

	applyOK(t, f, 5, c2)
	if ts, ok := f.Tombstone("c2"); ok {
		t.Errorf("Tombstone(c2) after c2 joined again = %d, true, want none", ts)
	}
	if _, ok := f.Server("c2"); !ok {
		t.Errorf("Server(c2) not found after c2 joined again")
	}

	applyOK(t, f, 6, RemoveServerCommand{ID: "c9", TS: testTS + 1})
	if ts, ok := f.Tombstone("c9"); !ok || ts != testTS+1 {
		t.Errorf("Tombstone(c9) after removing an unknown ID = %d, %v, want %d, true", ts, ok, testTS+1)
	}
}

func TestApplyTracksAppliedIndex(t *testing.T) {
	f := newTestFSM(t, Options{})
	if got := f.AppliedIndex(); got != 0 {
		t.Errorf("AppliedIndex() on a new FSM = %d, want 0", got)
	}
	applyOK(t, f, 7, SetServerCommand{ID: "c1", HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001"})
	if got := f.AppliedIndex(); got != 7 {
		t.Errorf("AppliedIndex() after index 7 = %d, want 7", got)
	}
	applyOK(t, f, 9, RemoveServerCommand{ID: "c1", TS: testTS})
	if got := f.AppliedIndex(); got != 9 {
		t.Errorf("AppliedIndex() after index 9 = %d, want 9", got)
	}
}

func TestApplyCorruptEntryCallsOnCorrupt(t *testing.T) {
	tests := []struct {
		name string
		data string
	}{
		{"bad JSON", `{"v":1,"type":`},
		{"unknown version", `{"v":2,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1}}`},
		{"unknown type", `{"v":1,"type":"reset_everything","payload":{}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type call struct {
				index uint64
				err   error
			}
			var calls []call
			f := New(Options{OnCorrupt: func(index uint64, err error) { calls = append(calls, call{index, err}) }})
			applyOK(t, f, 1, setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: 1}}))
			before := f.state.clone()

			resp := f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: []byte(tt.data)})

			if len(calls) != 1 {
				t.Fatalf("OnCorrupt called %d times, want 1", len(calls))
			}
			if calls[0].index != 2 {
				t.Errorf("OnCorrupt index = %d, want 2", calls[0].index)
			}
			if !errors.Is(calls[0].err, ErrCorrupt) {
				t.Errorf("OnCorrupt error %q does not wrap ErrCorrupt", calls[0].err)
			}
			if err, ok := resp.(error); !ok || !errors.Is(err, ErrCorrupt) {
				t.Errorf("Apply response = %v, want an error wrapping ErrCorrupt", resp)
			}
			if !reflect.DeepEqual(f.state, before) {
				t.Errorf("state changed by a corrupt entry: %+v, want %+v", f.state, before)
			}
			if got := f.AppliedIndex(); got != 1 {
				t.Errorf("AppliedIndex() after a corrupt entry = %d, want 1", got)
			}
		})
	}
}

func TestApplyCorruptEntryDefaultPanics(t *testing.T) {
	var logs bytes.Buffer
	f := New(Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	var recovered any
	func() {
		defer func() { recovered = recover() }()
		f.Apply(&raft.Log{Index: 42, Type: raft.LogCommand, Data: []byte("not json")})
	}()

	if recovered == nil {
		t.Fatalf("Apply of a corrupt entry with the default OnCorrupt did not panic")
	}
	msg := fmt.Sprint(recovered)
	if !strings.Contains(msg, "index 42") {
		t.Errorf("panic message %q does not name index 42", msg)
	}
	if !strings.Contains(msg, ErrCorrupt.Error()) {
		t.Errorf("panic message %q does not contain the error %q", msg, ErrCorrupt)
	}
	line := logs.String()
	if strings.Count(line, "\n") != 1 {
		t.Errorf("default OnCorrupt logged %d lines, want 1:\n%s", strings.Count(line, "\n"), line)
	}
	if !strings.Contains(line, "level=ERROR") {
		t.Errorf("log line %q is not at level ERROR", line)
	}
	if !strings.Contains(line, "index=42") {
		t.Errorf("log line %q has no index=42 attribute", line)
	}
	if !strings.Contains(line, "component=fsm") {
		t.Errorf("log line %q has no component=fsm attribute", line)
	}
}

func TestApplyInvalidPayloadIsNoop(t *testing.T) {
	tests := []struct {
		name string
		data string
		// field is the text the error must contain to name the field.
		field string
	}{
		{"negative limit", `{"v":1,"type":"set_limits","payload":{"service":"front","user":"alice","limits":{"traffic_up":{"limit":-5}},"ts":1700000000000,"slot":1700000000}}`, "limit"},
		{"empty limits", `{"v":1,"type":"set_limits","payload":{"service":"front","user":"alice","limits":{},"ts":1700000000000,"slot":1700000000}}`, "limits"},
		{"service with slash", `{"v":1,"type":"delete_limits","payload":{"service":"a/b","user":"alice","ts":1700000000000}}`, "service"},
		{"unstamped delete", `{"v":1,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":0}}`, "ts"},
		{"checkpoint unknown mode", `{"v":1,"type":"checkpoint","payload":{"slot":5,"mode":"fair","live_nodes":1,"buckets":null}}`, "mode"},
		{"server without port", `{"v":1,"type":"set_server","payload":{"id":"c1","http_addr":"localhost","raft_addr":"localhost:7001"}}`, "http_addr"},
		{"unstamped remove", `{"v":1,"type":"remove_server","payload":{"id":"c1","ts":0}}`, "ts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			listener := &recordingListener{}
			f := newTestFSM(t, Options{Listener: listener})
			listener.fsm = f
			applyOK(t, f, 1, setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: 1}}))
			applyOK(t, f, 2, SetServerCommand{ID: "c1", HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001"})
			applyOK(t, f, 3, CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: 1, Mode: quota.ModeReserve}})
			before := f.state.clone()
			eventsBefore := len(listener.recorded())

			resp := f.Apply(&raft.Log{Index: 4, Type: raft.LogCommand, Data: []byte(tt.data)})

			err, ok := resp.(error)
			if !ok {
				t.Fatalf("Apply response = %v, want an error", resp)
			}
			if !errors.Is(err, quota.ErrInvalid) {
				t.Errorf("Apply error %q does not wrap quota.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("Apply error %q does not name the field %q", err, tt.field)
			}
			before.appliedIndex = 4
			if !reflect.DeepEqual(f.state, before) {
				t.Errorf("state after an invalid command = %+v, want %+v", f.state, before)
			}
			if got := f.AppliedIndex(); got != 4 {
				t.Errorf("AppliedIndex() after an invalid command = %d, want 4", got)
			}
			if got := len(listener.recorded()); got != eventsBefore {
				t.Errorf("listener received %d events for an invalid command, want 0", got-eventsBefore)
			}
		})
	}
}

func TestListenerReceivesEveryChange(t *testing.T) {
	listener := &recordingListener{}
	f := newTestFSM(t, Options{Listener: listener})
	listener.fsm = f

	first := map[string]quota.Limit{"traffic_up": {Rate: 10}}
	second := map[string]quota.Limit{"traffic_down": {Rate: 20, Burst: 40}}
	applyOK(t, f, 1, setLimits("front", "alice", testTS, first))
	applyOK(t, f, 2, SetServerCommand{ID: "c1", HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001"})
	applyOK(t, f, 3, setLimits("front", "alice", testTS+2000, second))
	applyOK(t, f, 4, CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: testSlot, Mode: quota.ModeReserve}})
	applyOK(t, f, 5, DeleteLimitsCommand{Service: "front", User: "alice", TS: testTS + 3000})
	applyOK(t, f, 6, DeleteLimitsCommand{Service: "front", User: "nobody", TS: testTS + 4000})

	source := newTestFSM(t, Options{})
	applyOK(t, source, 1, setLimits("back", "bob", testTS, first))
	restore(t, f, persist(t, source))

	want := []listenerEvent{
		{Method: "LimitsSet", Service: "front", User: "alice", Limits: first, Slot: testSlot, Stored: first},
		{Method: "LimitsSet", Service: "front", User: "alice", Limits: second, Slot: testSlot + 2, Stored: second},
		{Method: "LimitsDeleted", Service: "front", User: "alice"},
		{Method: "LimitsDeleted", Service: "front", User: "nobody"},
		{Method: "Restored", Users: 1},
	}
	got := listener.recorded()
	if len(got) != len(want) {
		t.Fatalf("listener received %d events, want %d:\n got %+v\nwant %+v", len(got), len(want), got, want)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("listener event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestListenerGetsCopyOfLimits(t *testing.T) {
	var received map[string]quota.Limit
	listener := &mutatingListener{onSet: func(limits map[string]quota.Limit) {
		received = limits
		limits["traffic_up"] = quota.Limit{Rate: 999}
	}}
	f := newTestFSM(t, Options{Listener: listener})
	applyOK(t, f, 1, setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: 1}}))

	if received == nil {
		t.Fatalf("listener did not receive LimitsSet")
	}
	got, _ := f.Limits("front", "alice")
	if got.Limits["traffic_up"].Rate != 1 {
		t.Errorf("listener changing its map changed the FSM: rate is %v, want 1", got.Limits["traffic_up"].Rate)
	}
}

// mutatingListener changes the maps it receives, to show they are copies.
type mutatingListener struct {
	onSet func(map[string]quota.Limit)
}

func (l *mutatingListener) LimitsSet(_, _ string, limits map[string]quota.Limit, _ int64) {
	l.onSet(limits)
}
func (l *mutatingListener) LimitsDeleted(_, _ string) {}
func (l *mutatingListener) Restored()                 {}

func TestConcurrentReadsDuringApply(t *testing.T) {
	f := newTestFSM(t, Options{})
	const commands = 500

	done := make(chan struct{})
	var readers sync.WaitGroup
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				f.Limits("front", "user-1")
				f.ServiceLimits("front")
				f.Services()
				f.AllLimits()
				f.Checkpoint()
				f.Servers()
				f.Server("c1")
				f.Tombstone("c1")
				f.AppliedIndex()
				if snap, err := f.Snapshot(); err == nil {
					snap.Release()
				}
			}
		}()
	}

	for i := uint64(1); i <= commands; i++ {
		user := fmt.Sprintf("user-%d", i%7)
		ts := testTS + int64(i)*1000
		var cmd Command
		switch i % 5 {
		case 0:
			cmd = setLimits("front", user, ts, map[string]quota.Limit{"traffic_up": {Rate: float64(i)}})
		case 1:
			cmd = DeleteLimitsCommand{Service: "front", User: user, TS: ts}
		case 2:
			cmd = CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: ts / 1000, Mode: quota.ModeReserve,
				Buckets: []quota.BucketLevel{{Service: "front", User: user, Resource: "traffic_up", Level: float64(i)}}}}
		case 3:
			cmd = SetServerCommand{ID: "c1", HTTPAddr: fmt.Sprintf("127.0.0.1:%d", 8000+i), RaftAddr: "127.0.0.1:7001"}
		case 4:
			cmd = RemoveServerCommand{ID: "c1", TS: ts}
		}
		applyOK(t, f, i, cmd)
	}
	close(done)
	readers.Wait()

	if got := f.AppliedIndex(); got != commands {
		t.Errorf("AppliedIndex() after %d commands = %d, want %d", commands, got, commands)
	}
}
