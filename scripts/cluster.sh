#!/usr/bin/env bash
# Starts, stops and shows a three-central cluster on this machine.
#
#   scripts/cluster.sh up       start three centrals in the background and wait for a leader
#   scripts/cluster.sh down     stop them (SIGTERM by PID, SIGKILL after 10 s)
#   scripts/cluster.sh status   show each central's PID and the cluster view of the first central that responds
#   scripts/cluster.sh run      start them in the foreground; Ctrl-C stops all three
#   scripts/cluster.sh restart N   stop central N (SIGTERM) and start it again, as in a rolling upgrade
#
# Defaults: HTTP 127.0.0.1:8081-8083, Raft 127.0.0.1:7001-7003, gossip
# 127.0.0.1:7946-7948 (TCP and UDP), data under ./data. Override with
# HTTP_PORT_BASE, RAFT_PORT_BASE, GOSSIP_PORT_BASE (the first node's ports;
# the others add 1 and 2), DATA_DIR, HOST (an IP address, because gossip
# binds IPs only) and BIN (the throttle-central binary, default
# bin/throttle-central). WAIT_SECONDS (default 30) bounds the wait for a
# ready cluster. With THROTTLE_TOKEN_FILE set, the centrals require tokens,
# and this script reads the cluster with the file's first read or admin
# token (or CLUSTER_TOKEN when set).
set -euo pipefail

HOST=${HOST:-127.0.0.1}
HTTP_PORT_BASE=${HTTP_PORT_BASE:-8081}
RAFT_PORT_BASE=${RAFT_PORT_BASE:-7001}
GOSSIP_PORT_BASE=${GOSSIP_PORT_BASE:-7946}
DATA_DIR=${DATA_DIR:-./data}
BIN=${BIN:-bin/throttle-central}
NODES=3
SETSID=$(command -v setsid || true)
WAIT_SECONDS=${WAIT_SECONDS:-30}

# auth is the curl arguments that send the token of GET /v1/cluster, set
# by load_token. The header goes through a file, so the token does not show
# in the process list.
auth=()
auth_header=""
load_token() {
	local token=${CLUSTER_TOKEN:-}
	[[ -z $auth_header ]] || return 0
	if [[ -z $token && -n ${THROTTLE_TOKEN_FILE:-} ]]; then
		[[ -r $THROTTLE_TOKEN_FILE ]] || { echo "THROTTLE_TOKEN_FILE $THROTTLE_TOKEN_FILE is not readable" >&2; exit 1; }
		token=$(awk '$1 == "read" || $1 == "admin" { print $2; exit }' "$THROTTLE_TOKEN_FILE")
		[[ -n $token ]] || { echo "THROTTLE_TOKEN_FILE $THROTTLE_TOKEN_FILE has no read or admin token" >&2; exit 1; }
	fi
	[[ -n $token ]] || return 0
	auth_header=$(mktemp)
	chmod 600 "$auth_header"
	printf 'Authorization: Bearer %s\n' "$token" >"$auth_header"
	trap 'rm -f "$auth_header"' EXIT
	auth=(-H "@$auth_header")
}

http_addr() { echo "$HOST:$((HTTP_PORT_BASE + $1 - 1))"; }
raft_addr() { echo "$HOST:$((RAFT_PORT_BASE + $1 - 1))"; }
gossip_addr() { echo "$HOST:$((GOSSIP_PORT_BASE + $1 - 1))"; }
node_dir() { echo "$DATA_DIR/c$1"; }
pid_file() { echo "$DATA_DIR/c$1.pid"; }
log_file() { echo "$DATA_DIR/c$1.log"; }

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
	local state
	state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
	[[ $state != Z* ]]
}

running() {
	[[ -f $(pid_file "$1") ]] || return 1
	alive "$(cat "$(pid_file "$1")")"
}

# new_cluster: true when no central has data yet.
new_cluster() {
	local n
	for n in $(seq 1 $NODES); do
		[[ -e $(node_dir "$n")/raft.db ]] && return 1
	done
	return 0
}

# start_node N: starts central N in the background. Node 1 bootstraps a
# brand-new cluster and starts the gossip pool. Every other start joins
# through the others' APIs and gossip addresses, so a central whose data
# was deleted rejoins instead of founding a second cluster.
start_node() {
	local n=$1 args peers=() gossip_peers=() m
	if running "$n"; then
		echo "c$n is already running (PID $(cat "$(pid_file "$n")"))"
		return
	fi
	args=(--node-id "c$n" --http-addr "$(http_addr "$n")" --raft-addr "$(raft_addr "$n")"
		--gossip-addr "$(gossip_addr "$n")" --data-dir "$(node_dir "$n")")
	if [[ $n == 1 ]] && new_cluster; then
		args+=(--bootstrap)
	else
		for m in $(seq 1 $NODES); do
			[[ $m == "$n" ]] && continue
			peers+=("$(http_addr "$m")")
			gossip_peers+=("$(gossip_addr "$m")")
		done
		args+=(--join "$(IFS=,; echo "${peers[*]}")" --gossip-join "$(IFS=,; echo "${gossip_peers[*]}")")
	fi
	mkdir -p "$(node_dir "$n")"
	# A session of its own keeps a Ctrl-C in the terminal away from the
	# central, so `run` stops the three in order through down. setsid
	# executes the central in place (a background job of this script is
	# not a process group leader), so $! is the central's PID.
	$SETSID "$BIN" "${args[@]}" >>"$(log_file "$n")" 2>&1 &
	echo $! >"$(pid_file "$n")"
	echo "started c$n (PID $!): HTTP $(http_addr "$n"), Raft $(raft_addr "$n"), gossip $(gossip_addr "$n"), log $(log_file "$n")"
}

# wait_for_cluster: polls until every node reports the same leader and three
# servers and returns 200 from /readyz (it has applied what the leader
# committed), or fails after WAIT_SECONDS.
wait_for_cluster() {
	load_token
	local deadline=$((SECONDS + WAIT_SECONDS)) n leaders status
	while ((SECONDS < deadline)); do
		for n in $(seq 1 $NODES); do
			if ! running "$n"; then
				echo "c$n exited during start-up; the end of $(log_file "$n"):" >&2
				tail -n 20 "$(log_file "$n")" >&2
				return 1
			fi
		done
		leaders=()
		for n in $(seq 1 $NODES); do
			status=$(curl -sf ${auth[@]+"${auth[@]}"} "http://$(http_addr "$n")/v1/cluster" 2>/dev/null) || continue
			if [[ $(grep -o '"suffrage"' <<<"$status" | wc -l) -eq $NODES ]]; then
				leaders+=("$(sed -n 's/.*"leader":"\([^"]*\)".*/\1/p' <<<"$status")")
			fi
		done
		if ((${#leaders[@]} == NODES)) && [[ -n ${leaders[0]} ]] &&
			[[ $(printf '%s\n' "${leaders[@]}" | sort -u | wc -l) -eq 1 ]] && all_ready; then
			echo "cluster ready: leader ${leaders[0]}"
			return 0
		fi
		sleep 0.2
	done
	echo "cluster not ready after ${WAIT_SECONDS}s; see the logs in $DATA_DIR" >&2
	return 1
}

# all_ready: every node returns 200 from /readyz.
all_ready() {
	local n
	for n in $(seq 1 $NODES); do
		curl -sf -o /dev/null "http://$(http_addr "$n")/readyz" 2>/dev/null || return 1
	done
}

up() {
	[[ -x $BIN ]] || { echo "$BIN not found; run make build first" >&2; exit 1; }
	mkdir -p "$DATA_DIR"
	for n in $(seq 1 $NODES); do start_node "$n"; done
	wait_for_cluster
}

down() {
	local n
	for n in $(seq 1 $NODES); do stop_node "$n"; done
}

# stop_node N: stops central N with SIGTERM, and SIGKILL after 10 s.
stop_node() {
	local n=$1 pid deadline
	if ! running "$n"; then
		rm -f "$(pid_file "$n")"
		return
	fi
	pid=$(cat "$(pid_file "$n")")
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + 10))
	while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
	if alive "$pid"; then
		echo "c$n (PID $pid) did not stop in 10 s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$(pid_file "$n")"
	echo "stopped c$n (PID $pid)"
}

restart() {
	local n=${1:-}
	if ! [[ $n =~ ^[1-9]$ ]] || ((n > NODES)); then
		echo "usage: $0 restart N, where N is a central from 1 to $NODES" >&2
		exit 2
	fi
	[[ -x $BIN ]] || { echo "$BIN not found; run make build first" >&2; exit 1; }
	stop_node "$n"
	start_node "$n"
	wait_for_cluster
}

status() {
	load_token
	local n
	for n in $(seq 1 $NODES); do
		if running "$n"; then
			echo "c$n running (PID $(cat "$(pid_file "$n")")), HTTP $(http_addr "$n"), gossip $(gossip_addr "$n")"
		else
			echo "c$n stopped"
		fi
	done
	for n in $(seq 1 $NODES); do
		if curl -sf ${auth[@]+"${auth[@]}"} "http://$(http_addr "$n")/v1/cluster"; then
			echo
			return 0
		fi
	done
	echo "no central answers on $(http_addr 1) to $(http_addr $NODES)"
}

foreground() {
	trap 'echo; down; exit 0' INT TERM
	up
	echo "press Ctrl-C to stop the cluster"
	while true; do
		sleep 1
		for n in $(seq 1 $NODES); do
			running "$n" || echo "c$n exited; see $(log_file "$n")"
		done
	done
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
run) foreground ;;
restart) restart "${2:-}" ;;
*)
	echo "usage: $0 up|down|status|run|restart N" >&2
	exit 2
	;;
esac
