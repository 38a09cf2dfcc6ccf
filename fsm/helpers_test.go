package fsm

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/quota"
)

// Leader-stamped times used across the tests: ts in unix milliseconds and
// the matching slot in unix seconds.
const (
	testTS   int64 = 1_700_000_000_000
	testSlot int64 = 1_700_000_000
)

// newTestFSM returns an FSM whose OnCorrupt fails the test, so a test that
// expects corrupt entries must set its own hook. Log lines are discarded
// unless opts sets a Logger.
func newTestFSM(t *testing.T, opts Options) *FSM {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.OnCorrupt == nil {
		opts.OnCorrupt = func(index uint64, err error) {
			t.Errorf("OnCorrupt(%d, %v) called for an entry the test expected to apply", index, err)
		}
	}
	return New(opts)
}

// applyCommand encodes cmd and applies it at index, failing the test when
// encoding fails. It returns Apply's response.
func applyCommand(t *testing.T, f *FSM, index uint64, cmd Command) any {
	t.Helper()
	data, err := Encode(cmd)
	if err != nil {
		t.Fatalf("Encode(%#v): %v", cmd, err)
	}
	return f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data})
}

// applyOK applies cmd and fails the test unless Apply returns nil.
func applyOK(t *testing.T, f *FSM, index uint64, cmd Command) {
	t.Helper()
	if resp := applyCommand(t, f, index, cmd); resp != nil {
		t.Fatalf("Apply(%s) at index %d returned %v, want nil", cmd.Type(), index, resp)
	}
}

func setLimits(service, user string, ts int64, limits map[string]quota.Limit) SetLimitsCommand {
	return SetLimitsCommand{Service: service, User: user, Limits: limits, TS: ts, Slot: ts / 1000}
}

// memorySink is a raft.SnapshotSink that keeps the snapshot in memory.
// When failWrite is set, every Write returns it.
type memorySink struct {
	bytes.Buffer
	failWrite error
	closed    bool
	cancelled bool
}

func (s *memorySink) Write(p []byte) (int, error) {
	if s.failWrite != nil {
		return 0, s.failWrite
	}
	return s.Buffer.Write(p)
}

func (s *memorySink) ID() string { return "memory" }

func (s *memorySink) Close() error {
	s.closed = true
	return nil
}

func (s *memorySink) Cancel() error {
	s.cancelled = true
	return nil
}

var errSinkFull = errors.New("sink is full")

// persist takes a snapshot of f and returns the persisted bytes.
func persist(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	sink := &memorySink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed {
		t.Fatalf("Persist did not close the sink")
	}
	if sink.cancelled {
		t.Fatalf("Persist cancelled the sink after a successful write")
	}
	return sink.Bytes()
}

// restore restores data into f and fails the test on error.
func restore(t *testing.T, f *FSM, data []byte) {
	t.Helper()
	if err := f.Restore(readCloser{bytes.NewReader(data)}); err != nil {
		t.Fatalf("Restore: %v", err)
	}
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// listenerEvent is one call a recordingListener received.
type listenerEvent struct {
	Method  string
	Service string
	User    string
	Limits  map[string]quota.Limit
	Slot    int64
	// Stored is what the FSM returned for the user during the call, which
	// shows that the change was visible and the lock released.
	Stored map[string]quota.Limit
	// Users is how many users had limits when Restored was called.
	Users int
}

// recordingListener records every call. It reads the FSM during each call,
// so a listener that is called under the FSM's lock deadlocks the test.
type recordingListener struct {
	fsm *FSM

	mu     sync.Mutex
	events []listenerEvent
}

func (l *recordingListener) LimitsSet(service, user string, limits map[string]quota.Limit, slot int64) {
	stored, _ := l.fsm.Limits(service, user)
	l.record(listenerEvent{Method: "LimitsSet", Service: service, User: user, Limits: maps.Clone(limits), Slot: slot, Stored: stored.Limits})
}

func (l *recordingListener) LimitsDeleted(service, user string) {
	stored, _ := l.fsm.Limits(service, user)
	l.record(listenerEvent{Method: "LimitsDeleted", Service: service, User: user, Stored: stored.Limits})
}

func (l *recordingListener) Restored() {
	l.record(listenerEvent{Method: "Restored", Users: len(l.fsm.AllLimits())})
}

func (l *recordingListener) record(e listenerEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *recordingListener) recorded() []listenerEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]listenerEvent(nil), l.events...)
}
