package membership

import (
	"encoding/json"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// metaVersion is the version of the metadata encoding. A later version
// may add fields but must keep these, because members accept any version
// from 1 on and ignore fields they do not know.
const metaVersion = 1

// nodeMeta is a member's metadata: compact JSON, at most
// memberlist.MetaMaxSize (512) bytes.
type nodeMeta struct {
	Version  int    `json:"v"`
	Role     Role   `json:"role"`
	NodeID   string `json:"id"`
	HTTPAddr string `json:"http,omitempty"`
	RaftAddr string `json:"raft,omitempty"`
	// Leaving is set in the update a member gossips just before it leaves,
	// so the others can tell a departure from a failure, because memberlist
	// v0.5.4 reports both through the same EventDelegate.NotifyLeave.
	Leaving bool `json:"leaving,omitempty"`
}

// encodeMeta encodes meta and checks that it fits memberlist's limit.
func encodeMeta(meta nodeMeta) ([]byte, error) {
	data, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("membership: encoding the node metadata: %w", err)
	}
	if len(data) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("membership: node metadata is %d bytes, over memberlist's limit of %d; shorten the node ID (%d bytes) or the addresses (HTTP %d bytes, Raft %d bytes)",
			len(data), memberlist.MetaMaxSize, len(meta.NodeID), len(meta.HTTPAddr), len(meta.RaftAddr))
	}
	return data, nil
}

// decodeMeta decodes and checks the metadata of the member called name.
func decodeMeta(name string, data []byte) (nodeMeta, error) {
	var meta nodeMeta
	if err := json.Unmarshal(data, &meta); err != nil {
		return meta, fmt.Errorf("metadata of member %q is not valid JSON: %w", name, err)
	}
	switch {
	case meta.Version < 1:
		return meta, fmt.Errorf("metadata of member %q has version %d; the first version is 1", name, meta.Version)
	case meta.Role != RoleCentral && meta.Role != RoleEdge:
		return meta, fmt.Errorf("metadata of member %q has role %q; expected %q or %q", name, meta.Role, RoleCentral, RoleEdge)
	case meta.NodeID != name:
		return meta, fmt.Errorf("metadata of member %q carries node ID %q; they must be equal", name, meta.NodeID)
	}
	return meta, nil
}
