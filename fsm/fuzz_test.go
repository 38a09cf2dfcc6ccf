package fsm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"slices"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/throttlecentral/throttle-central/quota"
)

// fixtureReports is the file of report frames recorded from the
// lua-resty-throttle client, one JSON object a line. It lies outside the
// repository, so its seeds are added only when it is present.
const fixtureReports = "../../shared/fixtures/lua-resty-throttle/reports.jsonl"

// commandSeeds are envelopes that Decode must reject, or that test the
// edges of what it accepts.
var commandSeeds = []string{
	``,
	`null`,
	`{}`,
	`[]`,
	`{"v":1}`,
	`{"v":2,"type":"set_limits","payload":{}}`,
	`{"v":1,"type":"set_limits"}`,
	`{"v":1,"type":"set_limits","payload":null}`,
	`{"v":1,"type":"set_limits","payload":[]}`,
	`{"v":1,"type":"set_limits","payload":{}}`,
	`{"v":1,"type":"grant","payload":{}}`,
	`{"v":1,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1},"extra":1}`,
	`{"v":1,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1,"slot":2}}`,
	`{"v":1,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1}} {}`,
	`{"V":1,"TYPE":"delete_limits","PAYLOAD":{"SERVICE":"front","USER":"alice","TS":1}}`,
	`{"v":1,"type":"set_limits","payload":{"service":"front","user":"alice","limits":{"traffic_up":{"limit":1,"burst":0}},"ts":1,"slot":1}}`,
	`{"v":1,"type":"set_limits","payload":{"service":"front","user":"alice","limits":{"traffic_up":{"limit":-0}},"ts":1,"slot":1}}`,
	`{"v":1,"type":"set_limits","payload":{"service":"front","user":"alice","limits":{"traffic_up":{"limit":1e400}},"ts":1,"slot":1}}`,
	`{"v":1,"type":"set_limits","payload":{"service":"fr\u00e9nt","user":"al\ud800ice","limits":{"traffic_up":{"limit":1}},"ts":1,"slot":1}}`,
	`{"v":1,"type":"checkpoint","payload":{"slot":0,"mode":"reserve","live_nodes":0,"buckets":null}}`,
	`{"v":1,"type":"checkpoint","payload":{"slot":0,"mode":"reserve","live_nodes":0,"buckets":[]}}`,
	`{"v":1,"type":"checkpoint","payload":{"slot":1,"mode":"classic","live_nodes":1,"buckets":[{"service":"s","user":"u","resource":"r","level":-1,"credit":-0}]}}`,
	`{"v":1,"type":"set_server","payload":{"id":"c1","http_addr":"[::1]:8081","raft_addr":"127.0.0.1:7001"}}`,
	`{"v":1,"type":"remove_server","payload":{"id":"c1","ts":9223372036854775807}}`,
	`{"v":1,"type":"remove_server","payload":{"id":"c1","ts":9223372036854775808}}`,
}

// FuzzFSMCommand checks Decode. It never panics, and every error wraps
// ErrCorrupt and makes Apply call OnCorrupt. A decoded command that
// validates encodes again to an equal command and applies without error. A
// decoded command that does not validate changes nothing but the applied
// index.
func FuzzFSMCommand(f *testing.F) {
	for _, cmd := range validCommands() {
		addEncoded(f, cmd)
	}
	for _, cmd := range fixtureCommands(f) {
		addEncoded(f, cmd)
	}
	for _, seed := range commandSeeds {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decode(%q) returned %v, which does not wrap ErrCorrupt", data, err)
			}
			checkApplyCorrupt(t, data)
			return
		}
		if err := cmd.Validate(); err != nil {
			if !errors.Is(err, quota.ErrInvalid) {
				t.Fatalf("Validate of the command decoded from %q returned %v, which does not wrap quota.ErrInvalid", data, err)
			}
			checkApplyInvalid(t, data)
			return
		}

		encoded, err := Encode(cmd)
		if err != nil {
			t.Fatalf("Encode rejects %#v, decoded from %q and valid: %v", cmd, data, err)
		}
		again, err := Decode(encoded)
		if err != nil {
			t.Fatalf("Decode rejects %s, the encoding of the command decoded from %q: %v", encoded, data, err)
		}
		if !reflect.DeepEqual(again, cmd) {
			t.Fatalf("command from %q changed when encoded again:\nfirst %#v\nagain %#v", data, cmd, again)
		}

		state := newTestFSM(t, Options{})
		if response := state.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data}); response != nil {
			t.Fatalf("Apply(%q) of a valid command returned %v, want nil", data, response)
		}
		if got := state.AppliedIndex(); got != 1 {
			t.Fatalf("AppliedIndex after applying %q is %d, want 1", data, got)
		}
	})
}

// addEncoded adds the envelope of cmd as a seed.
func addEncoded(f *testing.F, cmd Command) {
	f.Helper()
	data, err := Encode(cmd)
	if err != nil {
		f.Fatalf("Encode(%#v): %v", cmd, err)
	}
	f.Add(data)
}

// checkApplyCorrupt fails the test unless applying data, which Decode
// rejects, goes to OnCorrupt and returns an error wrapping ErrCorrupt.
func checkApplyCorrupt(t *testing.T, data []byte) {
	t.Helper()
	var corrupt []uint64
	state := newTestFSM(t, Options{OnCorrupt: func(index uint64, err error) { corrupt = append(corrupt, index) }})
	response := state.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: data})
	if err, ok := response.(error); !ok || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Apply(%q) returned %v, want an error wrapping ErrCorrupt", data, response)
	}
	if !slices.Equal(corrupt, []uint64{7}) {
		t.Fatalf("Apply(%q) called OnCorrupt for the indexes %v, want [7]", data, corrupt)
	}
	if got := state.AppliedIndex(); got != 0 {
		t.Fatalf("AppliedIndex after a corrupt entry is %d, want 0", got)
	}
}

// checkApplyInvalid fails the test unless applying data, which decodes but
// does not validate, returns an error wrapping quota.ErrInvalid and changes
// nothing but the applied index.
func checkApplyInvalid(t *testing.T, data []byte) {
	t.Helper()
	state := newTestFSM(t, Options{})
	response := state.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: data})
	if err, ok := response.(error); !ok || !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("Apply(%q) returned %v, want an error wrapping quota.ErrInvalid", data, response)
	}
	if got := state.AppliedIndex(); got != 3 {
		t.Fatalf("AppliedIndex after an invalid command is %d, want 3", got)
	}
	if services := state.Services(); len(services) != 0 {
		t.Fatalf("invalid command %q stored limits of the services %v", data, services)
	}
	if servers := state.Servers(); len(servers) != 0 {
		t.Fatalf("invalid command %q stored the servers %v", data, servers)
	}
	if _, ok := state.Checkpoint(); ok {
		t.Fatalf("invalid command %q stored a checkpoint", data)
	}
}

// fixtureCommands returns, for every user in the recorded reports, a
// set_limits command with the user's counts as limits, and one checkpoint
// with a bucket per recorded count.
func fixtureCommands(f *testing.F) []Command {
	f.Helper()
	file, err := os.Open(fixtureReports)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		f.Fatalf("opening %s: %v", fixtureReports, err)
	}
	defer file.Close()

	var commands []Command
	checkpoint := CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: testSlot, Mode: quota.ModeReserve, LiveNodes: 1}}
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		line := bytes.TrimSpace(scanner.Bytes())
		if len(line) == 0 {
			continue
		}
		var report struct {
			Consumption map[string]map[string]map[string]float64 `json:"consumption"`
		}
		if err := json.Unmarshal(line, &report); err != nil {
			f.Fatalf("decoding the recorded report %s: %v", line, err)
		}
		for service, users := range report.Consumption {
			for user, counts := range users {
				if len(counts) == 0 {
					continue
				}
				limits := make(map[string]quota.Limit, len(counts))
				for resource, count := range counts {
					limits[resource] = quota.Limit{Rate: count}
					checkpoint.Buckets = append(checkpoint.Buckets, quota.BucketLevel{
						Service: service, User: user, Resource: resource, Level: -count, Credit: count / 2,
					})
				}
				commands = append(commands, setLimits(service, user, testTS, limits))
			}
		}
	}
	if err := scanner.Err(); err != nil {
		f.Fatalf("reading %s: %v", fixtureReports, err)
	}
	return append(commands, checkpoint)
}
