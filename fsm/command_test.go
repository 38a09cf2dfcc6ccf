package fsm

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/throttlecentral/throttle-central/quota"
)

func validCommands() []Command {
	return []Command{
		setLimits("front", "alice", testTS, map[string]quota.Limit{
			"traffic_up":    {Rate: 1048576},
			"database_read": {Rate: 100, Burst: 500},
		}),
		DeleteLimitsCommand{Service: "front", User: "alice", TS: testTS},
		CheckpointCommand{Checkpoint: quota.Checkpoint{
			Slot: testSlot, Mode: quota.ModeReserve, LiveNodes: 3,
			Buckets: []quota.BucketLevel{
				{Service: "front", User: "alice", Resource: "traffic_up", Level: -20.5, Credit: 0},
				{Service: "front", User: "bob", Resource: "traffic_up", Level: 300, Credit: 12.25},
			},
		}},
		SetServerCommand{ID: "c1", HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001"},
		RemoveServerCommand{ID: "c1", TS: testTS},
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, cmd := range validCommands() {
		t.Run(string(cmd.Type()), func(t *testing.T) {
			data, err := Encode(cmd)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := Decode(data)
			if err != nil {
				t.Fatalf("Decode(%s): %v", data, err)
			}
			if !reflect.DeepEqual(got, cmd) {
				t.Errorf("Decode(Encode(cmd)) = %#v, want %#v", got, cmd)
			}
		})
	}
}

func TestEncodeEnvelopeFormat(t *testing.T) {
	tests := []struct {
		cmd  Command
		want string
	}{
		{
			cmd:  setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: 10240, Burst: 20480}}),
			want: `{"v":1,"type":"set_limits","payload":{"service":"front","user":"alice","limits":{"traffic_up":{"limit":10240,"burst":20480}},"ts":1700000000000,"slot":1700000000}}`,
		},
		{
			cmd:  DeleteLimitsCommand{Service: "front", User: "alice", TS: testTS},
			want: `{"v":1,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1700000000000}}`,
		},
		{
			cmd:  CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: testSlot, Mode: quota.ModeClassic, LiveNodes: 2, Buckets: []quota.BucketLevel{{Service: "front", User: "alice", Resource: "traffic_up", Level: 5}}}},
			want: `{"v":1,"type":"checkpoint","payload":{"slot":1700000000,"mode":"classic","live_nodes":2,"buckets":[{"service":"front","user":"alice","resource":"traffic_up","level":5}]}}`,
		},
		{
			cmd:  SetServerCommand{ID: "c2", HTTPAddr: "10.0.0.2:8081", RaftAddr: "10.0.0.2:7001"},
			want: `{"v":1,"type":"set_server","payload":{"id":"c2","http_addr":"10.0.0.2:8081","raft_addr":"10.0.0.2:7001"}}`,
		},
		{
			cmd:  RemoveServerCommand{ID: "c2", TS: testTS},
			want: `{"v":1,"type":"remove_server","payload":{"id":"c2","ts":1700000000000}}`,
		},
	}
	for _, tt := range tests {
		t.Run(string(tt.cmd.Type()), func(t *testing.T) {
			data, err := Encode(tt.cmd)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if string(data) != tt.want {
				t.Errorf("Encode =\n%s\nwant\n%s", data, tt.want)
			}
		})
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	okLimits := map[string]quota.Limit{"traffic_up": {Rate: 100}}
	okCheckpoint := quota.Checkpoint{Slot: testSlot, Mode: quota.ModeReserve, LiveNodes: 1}
	withBucket := func(b quota.BucketLevel) CheckpointCommand {
		cp := okCheckpoint
		cp.Buckets = []quota.BucketLevel{b}
		return CheckpointCommand{Checkpoint: cp}
	}
	okBucket := quota.BucketLevel{Service: "front", User: "alice", Resource: "traffic_up", Level: 1}

	tests := []struct {
		name string
		cmd  Command
		// field is the text the error must contain to name the field.
		field string
	}{
		{"set empty service", setLimits("", "alice", testTS, okLimits), "service"},
		{"set service with slash", setLimits("front/x", "alice", testTS, okLimits), "service"},
		{"set empty user", setLimits("front", "", testTS, okLimits), "user"},
		{"set user too long", setLimits("front", strings.Repeat("u", quota.MaxNameLength+1), testTS, okLimits), "user"},
		{"set empty resource", setLimits("front", "alice", testTS, map[string]quota.Limit{"": {Rate: 1}}), "resource"},
		{"set negative limit", setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: -1}}), "limit"},
		{"set NaN limit", setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: math.NaN()}}), "limit"},
		{"set infinite burst", setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: 1, Burst: math.Inf(1)}}), "burst"},
		{"set burst below limit", setLimits("front", "alice", testTS, map[string]quota.Limit{"traffic_up": {Rate: 10, Burst: 5}}), "burst"},
		{"set empty limits", setLimits("front", "alice", testTS, map[string]quota.Limit{}), "limits"},
		{"set zero ts", SetLimitsCommand{Service: "front", User: "alice", Limits: okLimits, Slot: testSlot}, "ts"},
		{"set zero slot", SetLimitsCommand{Service: "front", User: "alice", Limits: okLimits, TS: testTS}, "slot"},
		{"delete empty user", DeleteLimitsCommand{Service: "front", TS: testTS}, "user"},
		{"delete negative ts", DeleteLimitsCommand{Service: "front", User: "alice", TS: -1}, "ts"},
		{"checkpoint unknown mode", CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: testSlot, Mode: "fair"}}, "mode"},
		{"checkpoint negative slot", CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: -1, Mode: quota.ModeReserve}}, "slot"},
		{"checkpoint negative live nodes", CheckpointCommand{Checkpoint: quota.Checkpoint{Slot: testSlot, Mode: quota.ModeReserve, LiveNodes: -1}}, "live_nodes"},
		{"checkpoint bucket empty user", withBucket(quota.BucketLevel{Service: "front", Resource: "traffic_up"}), "checkpoint.buckets[0].user"},
		{"checkpoint bucket infinite level", withBucket(quota.BucketLevel{Service: "front", User: "alice", Resource: "traffic_up", Level: math.Inf(-1)}), "checkpoint.buckets[0].level"},
		{"checkpoint bucket negative credit", withBucket(quota.BucketLevel{Service: okBucket.Service, User: okBucket.User, Resource: okBucket.Resource, Credit: -1}), "checkpoint.buckets[0].credit"},
		{"server empty id", SetServerCommand{HTTPAddr: "127.0.0.1:8081", RaftAddr: "127.0.0.1:7001"}, "id"},
		{"server http addr without port", SetServerCommand{ID: "c1", HTTPAddr: "127.0.0.1", RaftAddr: "127.0.0.1:7001"}, "http_addr"},
		{"server raft addr without host", SetServerCommand{ID: "c1", HTTPAddr: "127.0.0.1:8081", RaftAddr: ":7001"}, "raft_addr"},
		{"remove empty id", RemoveServerCommand{TS: testTS}, "id"},
		{"remove zero ts", RemoveServerCommand{ID: "c1"}, "ts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := Encode(tt.cmd)
			if err == nil {
				t.Fatalf("Encode(%#v) = %s, want an error", tt.cmd, data)
			}
			if !errors.Is(err, quota.ErrInvalid) {
				t.Errorf("Encode error %q does not wrap quota.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("Encode error %q does not name the field %q", err, tt.field)
			}
		})
	}
}

func TestEncodeRejectsNil(t *testing.T) {
	_, err := Encode(nil)
	if !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("Encode(nil) error = %v, want one wrapping quota.ErrInvalid", err)
	}
}

func TestDecodeRejectsCorrupt(t *testing.T) {
	tests := []struct {
		name string
		data string
	}{
		{"empty", ``},
		{"malformed JSON", `{"v":1,"type":"set_limits","payload":{`},
		{"not an object", `[1,2,3]`},
		{"version 0", `{"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1}}`},
		{"version 2", `{"v":2,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1}}`},
		{"unknown type", `{"v":1,"type":"set_colour","payload":{}}`},
		{"missing payload", `{"v":1,"type":"delete_limits"}`},
		{"null payload", `{"v":1,"type":"delete_limits","payload":null}`},
		{"payload of wrong type", `{"v":1,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":"soon"}}`},
		{"unknown payload field", `{"v":1,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1,"reason":"x"}}`},
		{"unknown envelope field", `{"v":1,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1},"trace":"x"}`},
		{"trailing data", `{"v":1,"type":"delete_limits","payload":{"service":"front","user":"alice","ts":1}}{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, err := Decode([]byte(tt.data))
			if err == nil {
				t.Fatalf("Decode(%s) = %#v, want an error", tt.data, cmd)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("Decode(%s) error %q does not wrap ErrCorrupt", tt.data, err)
			}
		})
	}
}

func TestDecodeLeavesContentUnchecked(t *testing.T) {
	data := `{"v":1,"type":"set_limits","payload":{"service":"front","user":"alice","limits":{"traffic_up":{"limit":-5}},"ts":1,"slot":1}}`
	cmd, err := Decode([]byte(data))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if err := cmd.Validate(); !errors.Is(err, quota.ErrInvalid) {
		t.Errorf("Validate of a negative limit = %v, want an error wrapping quota.ErrInvalid", err)
	}
}
