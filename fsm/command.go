package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"slices"

	"github.com/throttlecentral/throttle-central/quota"
)

// CommandVersion is the envelope version that Encode writes and Decode
// accepts. Any change to a payload's fields or meaning needs a new version,
// because a replica that decoded the entry differently would diverge.
const CommandVersion = 1

// CommandType names a command in the envelope's "type" field.
type CommandType string

// Command types.
const (
	TypeSetLimits    CommandType = "set_limits"
	TypeDeleteLimits CommandType = "delete_limits"
	TypeCheckpoint   CommandType = "checkpoint"
	TypeSetServer    CommandType = "set_server"
	TypeRemoveServer CommandType = "remove_server"
)

// ErrCorrupt marks a log entry or snapshot that this build cannot decode:
// malformed JSON, an unknown format version, an unknown command type or an
// unknown field.
var ErrCorrupt = errors.New("corrupt data")

// Command is one change to the replicated state. The implementations are
// SetLimitsCommand, DeleteLimitsCommand, CheckpointCommand, SetServerCommand
// and RemoveServerCommand.
type Command interface {
	// Type returns the name written in the envelope.
	Type() CommandType
	// Validate checks the content. Errors wrap quota.ErrInvalid and name the
	// field.
	Validate() error
}

// SetLimitsCommand replaces the whole limit set of one user. Resources that
// are not in Limits lose their limit.
type SetLimitsCommand struct {
	Service string `json:"service"`
	User    string `json:"user"`
	// Limits maps a resource to its limit. It must not be empty: removing
	// every limit of a user is a DeleteLimitsCommand.
	Limits map[string]quota.Limit `json:"limits"`
	// TS is the leader-stamped time of the change, in unix milliseconds.
	TS int64 `json:"ts"`
	// Slot is the slot (unix second) in which the leader proposed the
	// change. The quota engine applies the change to slots assigned after it.
	Slot int64 `json:"slot"`
}

// DeleteLimitsCommand removes every limit of one user.
type DeleteLimitsCommand struct {
	Service string `json:"service"`
	User    string `json:"user"`
	// TS is the leader-stamped time of the change, in unix milliseconds.
	TS int64 `json:"ts"`
}

// CheckpointCommand stores the quota engine's latest bucket levels. Its
// payload is the quota.Checkpoint itself.
type CheckpointCommand struct {
	quota.Checkpoint
}

// SetServerCommand records the addresses of a server that joined. It also
// clears a tombstone of the same ID.
type SetServerCommand struct {
	// ID is the Raft server ID.
	ID string `json:"id"`
	// HTTPAddr is the host:port of the server's HTTP API.
	HTTPAddr string `json:"http_addr"`
	// RaftAddr is the host:port of the server's Raft transport.
	RaftAddr string `json:"raft_addr"`
}

// RemoveServerCommand drops the addresses of a removed server and records a
// tombstone for its ID.
type RemoveServerCommand struct {
	ID string `json:"id"`
	// TS is the leader-stamped time of the removal, in unix milliseconds.
	TS int64 `json:"ts"`
}

// Type returns TypeSetLimits.
func (SetLimitsCommand) Type() CommandType { return TypeSetLimits }

// Type returns TypeDeleteLimits.
func (DeleteLimitsCommand) Type() CommandType { return TypeDeleteLimits }

// Type returns TypeCheckpoint.
func (CheckpointCommand) Type() CommandType { return TypeCheckpoint }

// Type returns TypeSetServer.
func (SetServerCommand) Type() CommandType { return TypeSetServer }

// Type returns TypeRemoveServer.
func (RemoveServerCommand) Type() CommandType { return TypeRemoveServer }

// Validate checks the names, every limit, the time and the slot.
func (c SetLimitsCommand) Validate() error {
	if err := validateUser(c.Service, c.User, c.TS); err != nil {
		return err
	}
	if c.Slot <= 0 {
		return fmt.Errorf("%w: slot is %d; the leader must stamp the slot (unix seconds) of the change", quota.ErrInvalid, c.Slot)
	}
	if len(c.Limits) == 0 {
		return fmt.Errorf("%w: limits is empty; send delete_limits to remove every limit of a user", quota.ErrInvalid)
	}
	// Sorted, so every replica reports the same resource when several are
	// invalid.
	for _, resource := range slices.Sorted(maps.Keys(c.Limits)) {
		if err := quota.ValidateName("resource", resource); err != nil {
			return err
		}
		if err := c.Limits[resource].Validate(); err != nil {
			return fmt.Errorf("resource %q: %w", resource, err)
		}
	}
	return nil
}

// Validate checks the names and the time.
func (c DeleteLimitsCommand) Validate() error {
	return validateUser(c.Service, c.User, c.TS)
}

// Validate checks the slot, the mode, the live node count and every bucket.
// A level may be negative (debt) but must be finite, and a credit must be
// finite and not negative.
func (c CheckpointCommand) Validate() error {
	if c.Slot < 0 {
		return fmt.Errorf("%w: checkpoint slot is %d; it must not be negative", quota.ErrInvalid, c.Slot)
	}
	if _, err := quota.ParseMode(string(c.Mode)); err != nil {
		return fmt.Errorf("checkpoint mode: %w", err)
	}
	if c.LiveNodes < 0 {
		return fmt.Errorf("%w: checkpoint live_nodes is %d; it must not be negative", quota.ErrInvalid, c.LiveNodes)
	}
	for i, b := range c.Buckets {
		field := fmt.Sprintf("checkpoint.buckets[%d]", i)
		if err := quota.ValidateName(field+".service", b.Service); err != nil {
			return err
		}
		if err := quota.ValidateName(field+".user", b.User); err != nil {
			return err
		}
		if err := quota.ValidateName(field+".resource", b.Resource); err != nil {
			return err
		}
		if math.IsNaN(b.Level) || math.IsInf(b.Level, 0) {
			return fmt.Errorf("%w: %s.level is %v; it must be a finite number", quota.ErrInvalid, field, b.Level)
		}
		if math.IsNaN(b.Credit) || math.IsInf(b.Credit, 0) || b.Credit < 0 {
			return fmt.Errorf("%w: %s.credit is %v; it must be a finite number, not negative", quota.ErrInvalid, field, b.Credit)
		}
	}
	return nil
}

// Validate checks the ID and that both addresses are host:port.
func (c SetServerCommand) Validate() error {
	if err := quota.ValidateName("id", c.ID); err != nil {
		return err
	}
	if err := validateHostPort("http_addr", c.HTTPAddr); err != nil {
		return err
	}
	return validateHostPort("raft_addr", c.RaftAddr)
}

// Validate checks the ID and the time.
func (c RemoveServerCommand) Validate() error {
	if err := quota.ValidateName("id", c.ID); err != nil {
		return err
	}
	return validateTS(c.TS)
}

func validateUser(service, user string, ts int64) error {
	if err := quota.ValidateName("service", service); err != nil {
		return err
	}
	if err := quota.ValidateName("user", user); err != nil {
		return err
	}
	return validateTS(ts)
}

func validateTS(ts int64) error {
	if ts <= 0 {
		return fmt.Errorf("%w: ts is %d; the leader must stamp the time of the change in unix milliseconds", quota.ErrInvalid, ts)
	}
	return nil
}

func validateHostPort(field, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %s %q is not host:port: %v", quota.ErrInvalid, field, addr, err)
	}
	if host == "" || port == "" {
		return fmt.Errorf("%w: %s %q needs both a host and a port", quota.ErrInvalid, field, addr)
	}
	return nil
}

// envelope is the encoded form of every command:
// {"v":1,"type":"set_limits","payload":{...}}.
type envelope struct {
	V       int             `json:"v"`
	Type    CommandType     `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

// Encode validates cmd and returns its envelope as JSON, ready for
// raft.Apply. Validation errors wrap quota.ErrInvalid and name the field.
func Encode(cmd Command) ([]byte, error) {
	if cmd == nil {
		return nil, fmt.Errorf("%w: command is nil", quota.ErrInvalid)
	}
	if err := cmd.Validate(); err != nil {
		return nil, fmt.Errorf("encode %s: %w", cmd.Type(), err)
	}
	payload, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode %s payload: %w", cmd.Type(), err)
	}
	return json.Marshal(envelope{V: CommandVersion, Type: cmd.Type(), Payload: payload})
}

// Decode parses an envelope written by Encode. Errors wrap ErrCorrupt:
// malformed JSON, a version other than CommandVersion, an unknown type, a
// missing payload or a field this build does not know. Decode does not
// validate the content, so call the command's Validate before using it.
func Decode(data []byte) (Command, error) {
	var env envelope
	if err := decodeStrict(data, &env); err != nil {
		return nil, fmt.Errorf("%w: command envelope: %v", ErrCorrupt, err)
	}
	if env.V != CommandVersion {
		return nil, fmt.Errorf("%w: command version %d is unknown; this build reads version %d", ErrCorrupt, env.V, CommandVersion)
	}
	if len(env.Payload) == 0 || bytes.Equal(env.Payload, []byte("null")) {
		return nil, fmt.Errorf("%w: %s command has no payload", ErrCorrupt, env.Type)
	}

	var cmd Command
	var err error
	switch env.Type {
	case TypeSetLimits:
		cmd, err = decodePayload[SetLimitsCommand](env.Payload)
	case TypeDeleteLimits:
		cmd, err = decodePayload[DeleteLimitsCommand](env.Payload)
	case TypeCheckpoint:
		cmd, err = decodePayload[CheckpointCommand](env.Payload)
	case TypeSetServer:
		cmd, err = decodePayload[SetServerCommand](env.Payload)
	case TypeRemoveServer:
		cmd, err = decodePayload[RemoveServerCommand](env.Payload)
	default:
		return nil, fmt.Errorf("%w: command type %q is unknown", ErrCorrupt, env.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s payload: %v", ErrCorrupt, env.Type, err)
	}
	return cmd, nil
}

func decodePayload[T Command](data []byte) (Command, error) {
	var cmd T
	if err := decodeStrict(data, &cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

// decodeStrict decodes exactly one JSON value and rejects unknown fields and
// trailing data. An unknown field means the writer used a newer format, and
// ignoring it could make this replica diverge.
func decodeStrict(data []byte, v any) error {
	return decodeStrictFrom(bytes.NewReader(data), v)
}

func decodeStrictFrom(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}
