// Package raftnode runs one server of the throttle-central Raft group on
// github.com/hashicorp/raft v1.7.2. It owns the stores (a raft-boltdb/v2
// log and stable store and a file snapshot store) and the TCP transport,
// with mutual TLS when Config.TLS is set.
// It also owns bootstrap of the first server, joining and removing
// servers, the ordered feed of leadership changes, Apply with a timeout,
// and the shutdown order. The replicated state itself is the raft.FSM
// given in Config. The package does not depend on HTTP.
//
// Operations that need the leader return a *NotLeaderError on other nodes,
// which matches ErrNotLeader (and ErrNoLeader when no leader is known) and
// carries the leader's address so the caller can forward the request.
// DESIGN.md in this directory explains the choices.
package raftnode
