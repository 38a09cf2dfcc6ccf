#!/usr/bin/env bash
# Load test: starts a three-central cluster on 127.0.0.1, drives it with
# simulated edge nodes for a bounded time (bin/throttle-load), records the
# leader's CPU time, peak memory and report wait, and stops the cluster.
#
#   scripts/load.sh [throttle-load flags...]     e.g. --nodes 200 --users 1000 --duration 60s
#
# Ports default to HTTP 127.0.0.1:9081-9083, Raft 127.0.0.1:9001-9003 and
# gossip 127.0.0.1:9946-9948, away from those of make run; override with
# HTTP_PORT_BASE, RAFT_PORT_BASE and GOSSIP_PORT_BASE. Data goes to a
# temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

export HTTP_PORT_BASE=${HTTP_PORT_BASE:-9081}
export RAFT_PORT_BASE=${RAFT_PORT_BASE:-9001}
export GOSSIP_PORT_BASE=${GOSSIP_PORT_BASE:-9946}
export DATA_DIR=${DATA_DIR:-$(mktemp -d)}
export BIN=${BIN:-bin/throttle-central}
LOAD=${LOAD:-bin/throttle-load}
[[ -x $BIN && -x $LOAD ]] || { echo "run make build first" >&2; exit 1; }

cleanup() {
	scripts/cluster.sh down || true
	rm -rf "$DATA_DIR"
}
trap cleanup EXIT

scripts/cluster.sh up
leader=$(curl -sf "http://127.0.0.1:$HTTP_PORT_BASE/v1/cluster" | sed -n 's/.*"leader":"\([^"]*\)".*/\1/p')
pid=$(cat "$DATA_DIR/$leader.pid")
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

centrals="127.0.0.1:$HTTP_PORT_BASE,127.0.0.1:$((HTTP_PORT_BASE + 1)),127.0.0.1:$((HTTP_PORT_BASE + 2))"
before=$(cpu "$pid")
start=$(date +%s.%N)
"$LOAD" --centrals "$centrals" "$@"
end=$(date +%s.%N)
after=$(cpu "$pid")

awk -v b="$before" -v a="$after" -v t="$ticks" -v s="$start" -v e="$end" -v l="$leader" \
	'BEGIN { printf "leader %s: cpu %.1f s over %.1f s wall = %.2f cores\n", l, (a-b)/t, e-s, (a-b)/t/(e-s) }'
grep -E 'VmHWM|VmRSS' "/proc/$pid/status" | sed "s/^/leader $leader: /"

# Where the leader's report time went: the mean wait for a report worker
# and the mean time to respond, from its metrics.
leader_http=$(curl -sf "http://127.0.0.1:$HTTP_PORT_BASE/v1/cluster" | sed -n 's/.*"leader_http_addr":"\([^"]*\)".*/\1/p')
if [[ -n $leader_http ]] && metrics=$(curl -sf "http://$leader_http/metrics"); then
	awk -v l="$leader" '
		/^throttle_report_wait_seconds_sum / { wait_sum = $2 }
		/^throttle_report_wait_seconds_count / { wait_count = $2 }
		/^throttle_report_duration_seconds_sum\{transport="http"\}/ { took_sum = $2 }
		/^throttle_report_duration_seconds_count\{transport="http"\}/ { took_count = $2 }
		END {
			if (wait_count > 0) printf "leader %s: %d reports decoded, mean wait for a worker %.1f ms\n", l, wait_count, 1000 * wait_sum / wait_count
			if (took_count > 0) printf "leader %s: mean time to respond to an HTTP report %.1f ms\n", l, 1000 * took_sum / took_count
		}' <<<"$metrics"
fi
