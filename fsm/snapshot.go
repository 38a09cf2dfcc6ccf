package fsm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/quota"
)

// SnapshotVersion is the snapshot format version that Persist writes and
// Restore accepts.
const SnapshotVersion = 1

// snapshotFile is the snapshot document:
//
//	{"version":1,"applied_index":42,
//	 "servers":[{"id":"c1","http_addr":"127.0.0.1:8081","raft_addr":"127.0.0.1:7001"}],
//	 "tombstones":{"c4":1700000000000},
//	 "checkpoint":{"slot":1700000000,"mode":"reserve","live_nodes":3,"buckets":[...]},
//	 "limits":{"front":{"alice":{"limits":{"traffic_up":{"limit":1024}},"ts":1700000000000,"slot":1700000000}}}}
//
// "checkpoint" is left out when the FSM has none.
type snapshotFile struct {
	Version      int                                `json:"version"`
	AppliedIndex uint64                             `json:"applied_index"`
	Servers      []Server                           `json:"servers"`
	Tombstones   map[string]int64                   `json:"tombstones"`
	Checkpoint   *quota.Checkpoint                  `json:"checkpoint,omitempty"`
	Limits       map[string]map[string]storedLimits `json:"limits"`
}

// fsmSnapshot is a deep copy of the state, taken by Snapshot and written by
// Persist while Apply goes on.
type fsmSnapshot struct {
	state state
}

// Snapshot copies the state under the read lock. It does no I/O, because
// Raft does not apply entries while Snapshot runs.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{state: f.state.clone()}, nil
}

// Persist writes the snapshot to sink as one JSON document and closes the
// sink. On any error it cancels the sink instead.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	err := s.write(sink)
	if err == nil {
		err = sink.Close()
	}
	if err != nil {
		if cancelErr := sink.Cancel(); cancelErr != nil {
			err = errors.Join(err, fmt.Errorf("cancel snapshot sink %s: %w", sink.ID(), cancelErr))
		}
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return nil
}

// Release does nothing, because the snapshot holds only memory.
func (s *fsmSnapshot) Release() {}

// write encodes the document of snapshotFile. Limits are written one user at
// a time, so a large state is never encoded into one buffer.
func (s *fsmSnapshot) write(w io.Writer) error {
	out := &jsonStream{w: bufio.NewWriter(w)}
	st := &s.state

	out.raw(`{"version":`)
	out.value(SnapshotVersion)
	out.raw(`,"applied_index":`)
	out.value(st.appliedIndex)
	out.raw(`,"servers":`)
	out.value(sortedServers(st.servers))
	out.raw(`,"tombstones":`)
	out.value(st.tombstones)
	if st.checkpoint != nil {
		out.raw(`,"checkpoint":`)
		out.value(st.checkpoint)
	}

	out.raw(`,"limits":{`)
	for i, service := range slices.Sorted(maps.Keys(st.limits)) {
		if i > 0 {
			out.raw(",")
		}
		out.value(service)
		out.raw(":{")
		users := st.limits[service]
		for j, user := range slices.Sorted(maps.Keys(users)) {
			if j > 0 {
				out.raw(",")
			}
			out.value(user)
			out.raw(":")
			out.value(users[user])
		}
		out.raw("}")
	}
	out.raw("}}\n")

	return out.flush()
}

// jsonStream writes JSON pieces and keeps the first error, so the caller
// checks once at the end.
type jsonStream struct {
	w   *bufio.Writer
	err error
}

func (s *jsonStream) raw(text string) {
	if s.err == nil {
		_, s.err = s.w.WriteString(text)
	}
}

func (s *jsonStream) value(v any) {
	if s.err != nil {
		return
	}
	data, err := json.Marshal(v)
	if err != nil {
		s.err = err
		return
	}
	_, s.err = s.w.Write(data)
}

func (s *jsonStream) flush() error {
	if s.err != nil {
		return s.err
	}
	return s.w.Flush()
}

// Restore replaces the whole state with a snapshot written by Persist. It
// never merges. A snapshot with another format version, an unknown field or
// invalid content is rejected with an error wrapping ErrCorrupt, and the
// state is left unchanged. After a successful restore it calls
// Listener.Restored.
func (f *FSM) Restore(snapshot io.ReadCloser) error {
	defer snapshot.Close()

	restored, err := readSnapshot(snapshot)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}

	f.mu.Lock()
	f.state = restored
	f.mu.Unlock()

	users := 0
	for _, byUser := range restored.limits {
		users += len(byUser)
	}
	f.logger.Info("restored snapshot", "applied_index", restored.appliedIndex,
		"services", len(restored.limits), "users", users, "servers", len(restored.servers))

	if f.listener != nil {
		f.listener.Restored()
	}
	return nil
}

// readSnapshot decodes and validates a snapshot document into a new state.
func readSnapshot(r io.Reader) (state, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return state{}, fmt.Errorf("read: %w", err)
	}

	// The version is checked before the strict decode, so a snapshot from a
	// newer build fails with a version error, not with its first new field.
	var header struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &header); err != nil {
		return state{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if header.Version != SnapshotVersion {
		return state{}, fmt.Errorf("%w: snapshot version %d is unknown; this build reads version %d",
			ErrCorrupt, header.Version, SnapshotVersion)
	}

	var file snapshotFile
	if err := decodeStrict(data, &file); err != nil {
		return state{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	st, err := file.toState()
	if err != nil {
		return state{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return st, nil
}

// toState validates every entry with the rules Apply uses and builds the
// state. Apply stores only valid content, so an invalid entry means the
// snapshot is damaged.
func (file *snapshotFile) toState() (state, error) {
	st := newState()
	st.appliedIndex = file.AppliedIndex

	for service, users := range file.Limits {
		if len(users) == 0 {
			continue
		}
		st.limits[service] = make(map[string]storedLimits, len(users))
		for user, stored := range users {
			cmd := SetLimitsCommand{Service: service, User: user, Limits: stored.Limits, TS: stored.TS, Slot: stored.Slot}
			if err := cmd.Validate(); err != nil {
				return state{}, fmt.Errorf("limits of %s/%s: %w", service, user, err)
			}
			st.limits[service][user] = stored
		}
	}

	if file.Checkpoint != nil {
		if err := (CheckpointCommand{Checkpoint: *file.Checkpoint}).Validate(); err != nil {
			return state{}, err
		}
		st.checkpoint = file.Checkpoint
	}

	for _, server := range file.Servers {
		if err := SetServerCommand(server).Validate(); err != nil {
			return state{}, fmt.Errorf("servers: %w", err)
		}
		if _, ok := st.servers[server.ID]; ok {
			return state{}, fmt.Errorf("servers: id %q is listed twice", server.ID)
		}
		st.servers[server.ID] = server
	}

	for id, ts := range file.Tombstones {
		if err := (RemoveServerCommand{ID: id, TS: ts}).Validate(); err != nil {
			return state{}, fmt.Errorf("tombstones: %w", err)
		}
		if _, ok := st.servers[id]; ok {
			return state{}, fmt.Errorf("tombstones: id %q is also a current server", id)
		}
		st.tombstones[id] = ts
	}
	return st, nil
}
