package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/throttlecentral/throttle-central/quota"
)

// clusterStatus is the body of GET /v1/cluster: one central's view.
type clusterStatus struct {
	NodeID       string `json:"node_id"`
	State        string `json:"state"`
	Leader       string `json:"leader"`
	LeaderHTTP   string `json:"leader_http_addr"`
	Term         uint64 `json:"term"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	Servers      []struct {
		ID       string `json:"id"`
		RaftAddr string `json:"raft_addr"`
		HTTPAddr string `json:"http_addr"`
		Suffrage string `json:"suffrage"`
		Leader   bool   `json:"leader"`
		// Gossip is empty when gossip is off on the central.
		Gossip string `json:"gossip"`
	} `json:"servers"`
}

// memberList is the body of GET /v1/members.
type memberList struct {
	NodeID  string `json:"node_id"`
	Gossip  bool   `json:"gossip"`
	Members []struct {
		NodeID     string    `json:"node_id"`
		Role       string    `json:"role"`
		GossipAddr string    `json:"gossip_addr"`
		HTTPAddr   string    `json:"http_addr"`
		RaftAddr   string    `json:"raft_addr"`
		State      string    `json:"state"`
		Since      time.Time `json:"since"`
	} `json:"members"`
}

// joinRequest is the body of POST /v1/cluster/join.
type joinRequest struct {
	NodeID   string `json:"node_id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
	HasState bool   `json:"has_state,omitempty"`
}

func clusterStatusCommand() *command {
	return &command{
		name:    "cluster status",
		summary: "show the Raft cluster as the first central that responds sees it",
		details: `Prints the responding central's Raft state, the leader, the term, the
commit and applied index, and every server with its addresses, suffrage
and gossip state (alive, dead, left, or unknown when gossip has not seen
it; "-" when gossip is off).`,
		maxArgs: 0,
		setup: func(*flag.FlagSet) func(context.Context, *invocation) error {
			return runClusterStatus
		},
	}
}

func runClusterStatus(ctx context.Context, inv *invocation) error {
	var status clusterStatus
	resp, err := inv.client.getJSON(ctx, "/v1/cluster", nil, &status)
	if err != nil {
		return err
	}
	if inv.output == outputJSON {
		return writeRawJSON(inv.stdout, resp.body)
	}

	leader := "none"
	if status.Leader != "" {
		leader = status.Leader
		if status.LeaderHTTP != "" {
			leader += " (HTTP " + status.LeaderHTTP + ")"
		}
	}
	fmt.Fprintf(inv.stdout, "Central %s at %s is %s. Leader: %s. Term %d, commit index %d, applied index %d.\n\n",
		status.NodeID, resp.central, status.State, leader, status.Term, status.CommitIndex, status.AppliedIndex)
	table := newTable(inv.stdout)
	fmt.Fprintln(table, "ID\tRAFT ADDRESS\tHTTP ADDRESS\tSUFFRAGE\tLEADER\tGOSSIP")
	for _, server := range status.Servers {
		isLeader := ""
		if server.Leader {
			isLeader = "yes"
		}
		fmt.Fprintf(table, "%s\t%s\t%s\t%s\t%s\t%s\n", server.ID, server.RaftAddr, orDash(server.HTTPAddr),
			server.Suffrage, orDash(isLeader), orDash(server.Gossip))
	}
	return table.Flush()
}

func clusterJoinCommand() *command {
	return &command{
		name:      "cluster join",
		arguments: "<id> <raft-addr> <http-addr>",
		summary:   "add a central to the Raft cluster as a voter",
		details: `The addresses are host:port; other centrals connect to them, so they
must not be a wildcard such as 0.0.0.0. A central started with
throttle-central --join sends this request itself. The same ID and
addresses again change nothing.

Example:
  throttlectl cluster join c4 10.0.0.4:7001 10.0.0.4:8081`,
		minArgs: 3,
		maxArgs: 3,
		setup: func(flags *flag.FlagSet) func(context.Context, *invocation) error {
			hasState := flags.Bool("has-state", false, "the central already has Raft data; the leader then rejects a central that was removed and kept its data (409)")
			return func(ctx context.Context, inv *invocation) error {
				request := joinRequest{NodeID: inv.args[0], RaftAddr: inv.args[1], HTTPAddr: inv.args[2], HasState: *hasState}
				if err := request.validate(); err != nil {
					return err
				}
				body, err := json.Marshal(request)
				if err != nil {
					return err
				}
				resp, err := inv.client.do(ctx, http.MethodPost, "/v1/cluster/join", nil, body)
				if err != nil {
					return err
				}
				if inv.output == outputJSON {
					return writeRawJSON(inv.stdout, resp.body)
				}
				var joined struct {
					Leader string `json:"leader"`
				}
				if err := json.Unmarshal(resp.body, &joined); err != nil {
					return fmt.Errorf("the response of %s to the join is not the expected JSON: %v", resp.central, err)
				}
				fmt.Fprintf(inv.stdout, "Server %s (Raft %s, HTTP %s) is a voter; the leader is %s.\n",
					request.NodeID, request.RaftAddr, request.HTTPAddr, orDash(joined.Leader))
				return nil
			}
		},
	}
}

// validate checks the join request as the central does.
func (r joinRequest) validate() error {
	if err := quota.ValidateName("server ID", r.NodeID); err != nil {
		return usagef("%v", err)
	}
	for _, field := range []struct{ name, addr string }{{"raft-addr", r.RaftAddr}, {"http-addr", r.HTTPAddr}} {
		host, port, err := net.SplitHostPort(field.addr)
		if err != nil || host == "" {
			return usagef("<%s> %q is not host:port; use for example 10.0.0.4:7001", field.name, field.addr)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return usagef("<%s> %q has port %q; the port must be a number from 1 to 65535", field.name, field.addr, port)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return usagef("<%s> %q has a wildcard host; give the address other centrals connect to", field.name, field.addr)
		}
	}
	return nil
}

func clusterRemoveCommand() *command {
	return &command{
		name:      "cluster remove",
		arguments: "<id>",
		summary:   "remove a central from the Raft cluster",
		details: `Removing the leader makes it step down. A removed central must delete its
data directory before it joins again. With -o json the output is
{"removed": "<id>"}.`,
		minArgs: 1,
		maxArgs: 1,
		setup: func(*flag.FlagSet) func(context.Context, *invocation) error {
			return func(ctx context.Context, inv *invocation) error {
				id := inv.args[0]
				if err := quota.ValidateName("server ID", id); err != nil {
					return usagef("%v", err)
				}
				if _, err := inv.client.do(ctx, http.MethodDelete, "/v1/cluster/servers/"+pathSegment(id), nil, nil); err != nil {
					return err
				}
				if inv.output == outputJSON {
					return writeJSON(inv.stdout, map[string]string{"removed": id})
				}
				fmt.Fprintf(inv.stdout, "Removed server %s from the cluster.\n", id)
				return nil
			}
		},
	}
}

func membersCommand() *command {
	return &command{
		name:    "members",
		summary: "list the gossip members as the first central that responds sees them",
		details: `Lists centrals and edge nodes with their role, addresses and state: alive,
dead (stopped answering probes) or left (announced its departure). SINCE is
when the central saw the state begin. Dead and left members stay listed
for 10 minutes.`,
		maxArgs: 0,
		setup: func(*flag.FlagSet) func(context.Context, *invocation) error {
			return runMembers
		},
	}
}

func runMembers(ctx context.Context, inv *invocation) error {
	var list memberList
	resp, err := inv.client.getJSON(ctx, "/v1/members", nil, &list)
	if err != nil {
		return err
	}
	if inv.output == outputJSON {
		return writeRawJSON(inv.stdout, resp.body)
	}
	if !list.Gossip {
		fmt.Fprintf(inv.stdout, "Gossip is off on central %s (%s), so it has no members to list; start the centrals with --gossip-addr to turn it on.\n",
			list.NodeID, resp.central)
		return nil
	}
	if len(list.Members) == 0 {
		fmt.Fprintf(inv.stdout, "Central %s (%s) knows no gossip members yet.\n", list.NodeID, resp.central)
		return nil
	}
	table := newTable(inv.stdout)
	fmt.Fprintln(table, "NODE\tROLE\tSTATE\tSINCE (UTC)\tGOSSIP ADDRESS\tHTTP ADDRESS\tRAFT ADDRESS")
	for _, m := range list.Members {
		since := "-"
		if !m.Since.IsZero() {
			since = m.Since.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(table, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.NodeID, m.Role, m.State, since,
			m.GossipAddr, orDash(m.HTTPAddr), orDash(m.RaftAddr))
	}
	return table.Flush()
}
