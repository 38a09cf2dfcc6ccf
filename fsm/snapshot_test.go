package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/throttlecentral/throttle-central/quota"
)

// populate applies one of every command to f, including a user whose limits
// are deleted and a server that is removed, and returns the last index.
func populate(t *testing.T, f *FSM) uint64 {
	t.Helper()
	applyOK(t, f, 1, setLimits("front", "alice", testTS, map[string]quota.Limit{
		"traffic_up": {Rate: 1048576}, "database_read": {Rate: 100, Burst: 400},
	}))
	applyOK(t, f, 2, setLimits("front", "bob", testTS+1000, map[string]quota.Limit{"traffic_down": {Rate: 0.5}}))
	applyOK(t, f, 3, setLimits("back", "carol", testTS+2000, map[string]quota.Limit{"database_write": {Rate: 7}}))
	applyOK(t, f, 4, setLimits("front", "dave", testTS+3000, map[string]quota.Limit{"traffic_up": {Rate: 1}}))
	applyOK(t, f, 5, DeleteLimitsCommand{Service: "front", User: "dave", TS: testTS + 4000})
	applyOK(t, f, 6, CheckpointCommand{Checkpoint: quota.Checkpoint{
		Slot: testSlot + 4, Mode: quota.ModeReserve, LiveNodes: 3,
		Buckets: []quota.BucketLevel{
			{Service: "front", User: "alice", Resource: "traffic_up", Level: -1234.5},
			{Service: "front", User: "bob", Resource: "traffic_down", Level: 0.25, Credit: 0.125},
		},
	}})
	applyOK(t, f, 7, SetServerCommand{ID: "c1", HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001"})
	applyOK(t, f, 8, SetServerCommand{ID: "c2", HTTPAddr: "127.0.0.1:8082", RaftAddr: "127.0.0.1:7002"})
	applyOK(t, f, 9, SetServerCommand{ID: "c3", HTTPAddr: "127.0.0.1:8083", RaftAddr: "127.0.0.1:7003"})
	applyOK(t, f, 10, RemoveServerCommand{ID: "c3", TS: testTS + 5000})
	return 10
}

// assertSameState checks that got holds exactly the state of want, through
// every read method and through the internal state.
func assertSameState(t *testing.T, got, want *FSM) {
	t.Helper()
	if g, w := got.AllLimits(), want.AllLimits(); !reflect.DeepEqual(g, w) {
		t.Errorf("AllLimits() = %+v, want %+v", g, w)
	}
	if g, w := got.Services(), want.Services(); !reflect.DeepEqual(g, w) {
		t.Errorf("Services() = %v, want %v", g, w)
	}
	for _, service := range want.Services() {
		if g, w := got.ServiceLimits(service), want.ServiceLimits(service); !reflect.DeepEqual(g, w) {
			t.Errorf("ServiceLimits(%s) = %+v, want %+v", service, g, w)
		}
	}
	gotCP, gotOK := got.Checkpoint()
	wantCP, wantOK := want.Checkpoint()
	if gotOK != wantOK || !reflect.DeepEqual(gotCP, wantCP) {
		t.Errorf("Checkpoint() = %+v, %v, want %+v, %v", gotCP, gotOK, wantCP, wantOK)
	}
	if g, w := got.Servers(), want.Servers(); !reflect.DeepEqual(g, w) {
		t.Errorf("Servers() = %+v, want %+v", g, w)
	}
	if g, w := got.AppliedIndex(), want.AppliedIndex(); g != w {
		t.Errorf("AppliedIndex() = %d, want %d", g, w)
	}
	if !reflect.DeepEqual(got.state, want.state) {
		t.Errorf("state = %+v, want %+v", got.state, want.state)
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	source := newTestFSM(t, Options{})
	last := populate(t, source)

	restored := newTestFSM(t, Options{})
	restore(t, restored, persist(t, source))

	assertSameState(t, restored, source)
	if got := restored.AppliedIndex(); got != last {
		t.Errorf("AppliedIndex() after restore = %d, want %d", got, last)
	}
	if _, ok := restored.Limits("front", "dave"); ok {
		t.Errorf("limits of front/dave, deleted before the snapshot, came back after restore")
	}
	if ts, ok := restored.Tombstone("c3"); !ok || ts != testTS+5000 {
		t.Errorf("Tombstone(c3) after restore = %d, %v, want %d, true", ts, ok, testTS+5000)
	}
	if _, ok := restored.Server("c3"); ok {
		t.Errorf("removed server c3 came back after restore")
	}
}

func TestRestoreReplacesExistingState(t *testing.T) {
	source := newTestFSM(t, Options{})
	populate(t, source)

	target := newTestFSM(t, Options{})
	applyOK(t, target, 1, setLimits("front", "eve", testTS, map[string]quota.Limit{"traffic_up": {Rate: 3}}))
	applyOK(t, target, 2, setLimits("other", "frank", testTS, map[string]quota.Limit{"traffic_up": {Rate: 3}}))
	applyOK(t, target, 3, setLimits("front", "alice", testTS+9000, map[string]quota.Limit{"queries": {Rate: 9}}))
	applyOK(t, target, 4, SetServerCommand{ID: "c9", HTTPAddr: "127.0.0.1:8089", RaftAddr: "127.0.0.1:7009"})
	applyOK(t, target, 5, RemoveServerCommand{ID: "c8", TS: testTS})
	applyOK(t, target, 6, RemoveServerCommand{ID: "c1", TS: testTS})
	for i := uint64(7); i <= 20; i++ {
		applyOK(t, target, i, CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: int64(i), Mode: quota.ModeClassic}})
	}

	restore(t, target, persist(t, source))

	assertSameState(t, target, source)
	if _, ok := target.Limits("front", "eve"); ok {
		t.Errorf("front/eve, only in the old state, survived the restore")
	}
	if services := target.Services(); !reflect.DeepEqual(services, []string{"back", "front"}) {
		t.Errorf("Services() after restore = %v, want [back front]", services)
	}
	alice, _ := target.Limits("front", "alice")
	if _, ok := alice.Limits["queries"]; ok {
		t.Errorf("front/alice kept the old resource queries after restore: %v", alice.Limits)
	}
	if _, ok := target.Server("c9"); ok {
		t.Errorf("server c9, only in the old state, survived the restore")
	}
	if _, ok := target.Tombstone("c8"); ok {
		t.Errorf("tombstone c8, only in the old state, survived the restore")
	}
	if _, ok := target.Tombstone("c1"); ok {
		t.Errorf("tombstone c1 survived a restore of a state where c1 is a server")
	}
	if got := target.AppliedIndex(); got != 10 {
		t.Errorf("AppliedIndex() after restore = %d, want the snapshot's 10, not the old 20", got)
	}
}

func TestRestoreEmptySnapshotClearsState(t *testing.T) {
	target := newTestFSM(t, Options{})
	populate(t, target)

	empty := newTestFSM(t, Options{})
	restore(t, target, persist(t, empty))

	assertSameState(t, target, empty)
	if cp, ok := target.Checkpoint(); ok {
		t.Errorf("Checkpoint() after restoring an empty snapshot = %+v, want none", cp)
	}
}

func TestSnapshotUnaffectedByLaterApply(t *testing.T) {
	f := newTestFSM(t, Options{})
	applyOK(t, f, 1, setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: 1}}))
	applyOK(t, f, 2, CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: 1, Mode: quota.ModeReserve,
		Buckets: []quota.BucketLevel{{Service: "front", User: "alice", Resource: "traffic_up", Level: 1}}}})
	want := f.state.clone()

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	applyOK(t, f, 3, setLimits("front", "alice", testTS+1000, map[string]quota.Limit{"traffic_up": {Rate: 2}}))
	applyOK(t, f, 4, setLimits("front", "bob", testTS+1000, map[string]quota.Limit{"traffic_up": {Rate: 2}}))
	applyOK(t, f, 5, CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: 2, Mode: quota.ModeReserve}})

	sink := &memorySink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	restored := newTestFSM(t, Options{})
	restore(t, restored, sink.Bytes())
	if !reflect.DeepEqual(restored.state, want) {
		t.Errorf("snapshot taken at index 2 restored as %+v, want %+v", restored.state, want)
	}
}

func TestPersistFormat(t *testing.T) {
	f := newTestFSM(t, Options{})
	applyOK(t, f, 1, setLimits("front", "bob", testTS, map[string]quota.Limit{"traffic_up": {Rate: 1024}}))
	applyOK(t, f, 2, setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: 10, Burst: 20}}))
	applyOK(t, f, 3, CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: testSlot, Mode: quota.ModeReserve, LiveNodes: 2,
		Buckets: []quota.BucketLevel{{Service: "front", User: "bob", Resource: "traffic_up", Level: 5}}}})
	applyOK(t, f, 4, SetServerCommand{ID: "c1", HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001"})
	applyOK(t, f, 5, RemoveServerCommand{ID: "c4", TS: testTS})

	want := `{"version":1,"applied_index":5,` +
		`"servers":[{"id":"c1","http_addr":"127.0.0.1:8081","raft_addr":"127.0.0.1:7001"}],` +
		`"tombstones":{"c4":1700000000000},` +
		`"checkpoint":{"slot":1700000000,"mode":"reserve","live_nodes":2,"buckets":[{"service":"front","user":"bob","resource":"traffic_up","level":5}]},` +
		`"limits":{"front":{` +
		`"alice":{"limits":{"traffic_up":{"limit":10,"burst":20}},"ts":1700000000000,"slot":1700000000},` +
		`"bob":{"limits":{"traffic_up":{"limit":1024}},"ts":1700000000000,"slot":1700000000}}}}` + "\n"
	if got := string(persist(t, f)); got != want {
		t.Errorf("persisted snapshot =\n%s\nwant\n%s", got, want)
	}

	empty := `{"version":1,"applied_index":0,"servers":[],"tombstones":{},"limits":{}}` + "\n"
	if got := string(persist(t, newTestFSM(t, Options{}))); got != empty {
		t.Errorf("persisted empty snapshot =\n%s\nwant\n%s", got, empty)
	}
}

func TestPersistCancelsSinkOnError(t *testing.T) {
	// The small state fails at the final flush. The large one is bigger than
	// the write buffer, so it fails in the middle of the limits.
	tests := []struct {
		name  string
		users int
	}{
		{"small state", 3},
		{"large state", 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTestFSM(t, Options{})
			for i := range tt.users {
				user := fmt.Sprintf("user-%04d", i)
				applyOK(t, f, uint64(i+1), setLimits("front", user, testTS, map[string]quota.Limit{"traffic_up": {Rate: 1}}))
			}
			snap, err := f.Snapshot()
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			defer snap.Release()

			sink := &memorySink{failWrite: errSinkFull}
			err = snap.Persist(sink)
			if !errors.Is(err, errSinkFull) {
				t.Errorf("Persist error = %v, want one wrapping %v", err, errSinkFull)
			}
			if !sink.cancelled {
				t.Errorf("Persist did not cancel the sink after a write error")
			}
			if sink.closed {
				t.Errorf("Persist closed the sink after a write error")
			}
		})
	}
}

func TestRestoreRejectsBadSnapshot(t *testing.T) {
	tests := []struct {
		name string
		data string
		// reason is text the error must contain.
		reason string
	}{
		{"empty", ``, "corrupt"},
		{"malformed JSON", `{"version":1,"limits":{`, "corrupt"},
		{"version 0", `{"applied_index":1,"servers":[],"tombstones":{},"limits":{}}`, "version 0"},
		{"version 2", `{"version":2,"applied_index":1,"limits":{},"quotas":{}}`, "version 2"},
		{"unknown field", `{"version":1,"applied_index":1,"servers":[],"tombstones":{},"limits":{},"quotas":{}}`, "quotas"},
		{"trailing data", `{"version":1,"applied_index":1,"servers":[],"tombstones":{},"limits":{}} {}`, "corrupt"},
		{"negative limit", `{"version":1,"limits":{"front":{"alice":{"limits":{"traffic_up":{"limit":-1}},"ts":1,"slot":1}}}}`, "limit"},
		{"user with slash", `{"version":1,"limits":{"front":{"a/b":{"limits":{"traffic_up":{"limit":1}},"ts":1,"slot":1}}}}`, "user"},
		{"checkpoint unknown mode", `{"version":1,"checkpoint":{"slot":1,"mode":"fair","live_nodes":0,"buckets":null}}`, "mode"},
		{"server without port", `{"version":1,"servers":[{"id":"c1","http_addr":"h","raft_addr":"h:1"}]}`, "http_addr"},
		{"duplicate server", `{"version":1,"servers":[{"id":"c1","http_addr":"h:1","raft_addr":"h:2"},{"id":"c1","http_addr":"h:3","raft_addr":"h:4"}]}`, "twice"},
		{"tombstone without ts", `{"version":1,"tombstones":{"c1":0}}`, "ts"},
		{"tombstone of a current server", `{"version":1,"servers":[{"id":"c1","http_addr":"h:1","raft_addr":"h:2"}],"tombstones":{"c1":5}}`, "also a current server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			listener := &recordingListener{}
			f := newTestFSM(t, Options{Listener: listener})
			listener.fsm = f
			populate(t, f)
			before := f.state.clone()
			eventsBefore := len(listener.recorded())

			err := f.Restore(readCloser{bytes.NewReader([]byte(tt.data))})

			if err == nil {
				t.Fatalf("Restore(%s) succeeded, want an error", tt.data)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("Restore error %q does not wrap ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("Restore error %q does not contain %q", err, tt.reason)
			}
			if !reflect.DeepEqual(f.state, before) {
				t.Errorf("state changed by a rejected snapshot: %+v, want %+v", f.state, before)
			}
			if got := len(listener.recorded()); got != eventsBefore {
				t.Errorf("listener received %d events for a rejected snapshot, want 0", got-eventsBefore)
			}
		})
	}
}

func TestRestoreClosesReader(t *testing.T) {
	data := persist(t, newTestFSM(t, Options{}))
	reader := &closeRecorder{Reader: bytes.NewReader(data)}
	if err := newTestFSM(t, Options{}).Restore(reader); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if !reader.closed {
		t.Errorf("Restore did not close the snapshot reader")
	}
}

type closeRecorder struct {
	*bytes.Reader
	closed bool
}

func (r *closeRecorder) Close() error {
	r.closed = true
	return nil
}
