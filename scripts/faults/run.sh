#!/usr/bin/env bash
# Runs fault tests of the faults package against real centrals and prints
# the figures they measured.
#
#   scripts/faults/run.sh leader-kill|restart-all|partition|transfer|skew|all [--long] [--dir DIR]
#
#   leader-kill   Kills the leader with SIGKILL under reports from 20 edge
#                 nodes. Measures the seconds without quotas, the quotas and
#                 the admitted amount above the limit in the 10 s around the
#                 kill, and the time to the next accepted PUT.
#   restart-all   Stops all three centrals at once (SIGTERM, then SIGKILL)
#                 and restarts them. Checks the limits, the leader, gossip
#                 and the quotas of a gossiping agent.
#   partition     Cuts the leader off in network namespaces. Needs root, ip
#                 netns and curl, and skips without them. Measures when the
#                 old leader stops handing out quotas and how fast writes to
#                 it fail, and checks the state after the heal.
#   transfer      Stops the leader with SIGTERM during a stream of limit
#                 PUTs. Every acknowledged PUT must be on every central, and
#                 every other one must have failed with a retryable error.
#   skew          Runs edge clocks 3 s ahead and 2 s behind and replays
#                 reports.
#
# Without --long each test runs its short form, the one `make test` runs
# (10 to 25 s each). --long runs more rounds: three kills, three restarts,
# three partitions and three transfers, and 20 s of skew. All of them took
# 3.5 to 4 minutes on a 2-core machine. --dir DIR keeps every process's
# log and data directory under DIR. Every process runs on 127.0.0.1 with
# ports the kernel picks, or in the test's own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
	echo "usage: $0 leader-kill|restart-all|partition|transfer|skew|all [--long] [--dir DIR]" >&2
	exit 2
}

[[ $# -ge 1 ]] || usage
case $1 in
leader-kill) pattern='^TestLeaderKillUnderReports$' ;;
restart-all) pattern='^TestRestartAllCentrals$' ;;
partition) pattern='^TestPartitionedLeader$' ;;
transfer) pattern='^TestLeadershipTransferDuringWrites$' ;;
skew) pattern='^TestClockSkewAndReplays$' ;;
all) pattern='.' ;;
*) usage ;;
esac
shift

test_args=()
while [[ $# -gt 0 ]]; do
	case $1 in
	--long) test_args+=(-long) ;;
	--dir)
		[[ $# -ge 2 ]] || usage
		mkdir -p "$2"
		test_args+=(-logdir "$(cd "$2" && pwd)")
		shift
		;;
	*) usage ;;
	esac
	shift
done

output=$(mktemp)

# cleanup removes the network namespaces that a partition test left behind
# when it was interrupted: those named tcfault<PID>-* whose test process
# has exited. Processes still in them were started by that test.
cleanup() {
	local ns pid
	if command -v ip >/dev/null && [[ $(id -u) == 0 ]]; then
		for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^tcfault[0-9]+-(hub|c[0-9])$' || true); do
			pid=${ns#tcfault}
			pid=${pid%%-*}
			[[ -d /proc/$pid ]] && continue
			for leftover in $(ip netns pids "$ns" 2>/dev/null); do
				echo "stopping process $leftover left in network namespace $ns"
				kill -KILL "$leftover" 2>/dev/null || true
			done
			echo "removing network namespace $ns"
			ip netns del "$ns" || true
		done
	fi
	rm -f "$output"
}
trap cleanup EXIT

status=0
go test -count=1 -v -timeout 30m -run "$pattern" ./faults/ -args "${test_args[@]}" 2>&1 | tee "$output" || status=$?

echo
echo "measured figures:"
grep -E '^\s+[a-z_]+_test\.go:[0-9]+: RESULT ' "$output" | sed -E 's/^\s+[a-z_]+_test\.go:[0-9]+: RESULT //' || echo "(none: see the output above)"
grep -E '^--- (PASS|FAIL|SKIP)' "$output" || true
exit "$status"
