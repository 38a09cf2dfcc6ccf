#!/usr/bin/env bash
# Checks the dashboard (/ui) in headless Chromium against a real cluster.
# It builds throttle-central, starts three centrals on 127.0.0.1 with free
# ports (scripts/cluster.sh), sets a limit for user alice in service front,
# sends reports from two edge node IDs for about 6 s, then loads
# /ui?service=front&user=alice in Chromium and checks that the rendered DOM
# shows the leader, the limit, the gossip states and non-empty charts, and
# takes a screenshot. It stops every process it started, by PID.
#
#   scripts/ui-check.sh [--screenshot FILE] [--keep]
#
#   --screenshot FILE   where to save the PNG (default: in the work directory);
#                       docs/ui.png is the one the README shows
#   --keep              keep the work directory (logs, DOM dump) after a pass
#
# Exit status: 0 when the check passes, 1 when it fails (the work directory
# is kept and named), 2 when Chromium is missing or an argument is invalid.
# Environment: UI_CHECK_SKIP_MISSING=1 makes a missing Chromium a skip with
# status 0; CHROMIUM names the browser binary (default: chromium, then
# chromium-browser on the PATH); UI_CHECK_REPORT_SECONDS sets how long the
# reports run (default 6, at most 60).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICE=front
USER_NAME=alice
LIMIT_TRAFFIC_UP=1048576
LIMIT_DATABASE_READ=200
# No node reports database_write: its chart must show 0, not "no data".
LIMIT_DATABASE_WRITE=50
REPORT_SECONDS=${UI_CHECK_REPORT_SECONDS:-6}
DATA_WAIT_SECONDS=10
# Virtual time Chromium gives the page before it dumps the DOM or takes the
# screenshot, enough for several polls of the API. Virtual time does not
# advance while network fetches are pending (Chromium's description of
# --virtual-time-budget).
BROWSER_BUDGET_MS=5000
BROWSER_TIMEOUT_SECONDS=60
MAX_SCREENSHOT_BYTES=$((300 * 1024))

screenshot=""
keep=0
while (($# > 0)); do
	case $1 in
	--screenshot)
		[[ $# -ge 2 ]] || { echo "--screenshot needs a file name" >&2; exit 2; }
		screenshot=$2
		shift 2
		;;
	--keep) keep=1; shift ;;
	-h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown argument $1; see $0 --help" >&2; exit 2 ;;
	esac
done
if ! [[ $REPORT_SECONDS =~ ^[0-9]+$ ]] || ((REPORT_SECONDS < 1 || REPORT_SECONDS > 60)); then
	echo "UI_CHECK_REPORT_SECONDS is '$REPORT_SECONDS'; it must be a whole number of seconds from 1 to 60" >&2
	exit 2
fi

chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [[ -z $chromium ]] || ! command -v "$chromium" >/dev/null; then
	echo "Chromium not found${chromium:+ at $chromium}. Install it with: apt-get update && apt-get install -y chromium (Debian), or set CHROMIUM to its binary." >&2
	if [[ ${UI_CHECK_SKIP_MISSING:-} == 1 ]]; then
		echo "UI_CHECK_SKIP_MISSING=1: skipping the dashboard check." >&2
		exit 0
	fi
	exit 2
fi

started_at=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/ui-check.XXXXXX")
[[ -n $screenshot ]] || screenshot=$work/ui.png
cluster_started=0
browser_pid=""
passed=0

# cleanup runs on every exit: it stops the browser and the centrals this
# script started, by PID, and removes the work directory after a pass.
cleanup() {
	if [[ -n $browser_pid ]] && kill -0 "$browser_pid" 2>/dev/null; then
		kill -TERM "$browser_pid" 2>/dev/null || true
		wait "$browser_pid" 2>/dev/null || true
	fi
	if ((cluster_started)); then
		scripts/cluster.sh down >/dev/null || echo "stopping the centrals failed; see the PID files in $DATA_DIR" >&2
	fi
	if ((passed && !keep)); then
		rm -rf "$work"
	else
		echo "logs, DOM dump and data are in $work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/lib/ports.sh
. scripts/lib/ports.sh

# sleep_to_report_time sleeps until about 50 ms into the next second, when
# edge nodes send their reports.
sleep_to_report_time() {
	local ms=$((10#$(date +%N) / 1000000))
	local wait_ms=$((1050 - ms))
	sleep "$((wait_ms / 1000)).$(printf '%03d' $((wait_ms % 1000)))"
}

# send_report CENTRAL NODE CONSUMPTION REJECTION: posts one report for the
# current second. CONSUMPTION and REJECTION are the user's JSON objects.
send_report() {
	local central=$1 node=$2 consumption=$3 rejection=$4
	curl -sS -f --max-time 2 -o /dev/null -X POST "http://$central/v1/report" -d "{\"node_id\":\"$node\",\"slot_number\":$(date +%s),
		\"consumption\":{\"$SERVICE\":{\"$USER_NAME\":$consumption}},\"rejection\":{\"$SERVICE\":{\"$USER_NAME\":$rejection}}}"
}

# wait_for_monitor SUBJECT: polls the monitor until it has data of the user.
wait_for_monitor() {
	local deadline=$((SECONDS + DATA_WAIT_SECONDS))
	while ((SECONDS < deadline)); do
		if curl -sf --max-time 2 "http://$http1/v1/monitor/$1?service=$SERVICE&user=$USER_NAME" | grep -q "\"$USER_NAME\""; then
			return 0
		fi
		sleep 0.2
	done
	echo "the monitor has no $1 data for $SERVICE/$USER_NAME after ${DATA_WAIT_SECONDS}s" >&2
	return 1
}

# run_browser OUTPUT FLAG...: loads the dashboard in headless Chromium with
# the given flag (--dump-dom or --screenshot=FILE) and writes stdout to
# OUTPUT. It runs in the background so that cleanup can stop it.
run_browser() {
	local output=$1
	shift
	timeout -k 5 "$BROWSER_TIMEOUT_SECONDS" "$chromium" --headless --no-sandbox --disable-gpu \
		--disable-dev-shm-usage --no-first-run --hide-scrollbars --user-data-dir="$work/chromium-profile" \
		--window-size=1280,1000 --virtual-time-budget="$BROWSER_BUDGET_MS" "$@" "$page_url" \
		>"$output" 2>>"$work/chromium.log" &
	browser_pid=$!
	if ! wait "$browser_pid"; then
		browser_pid=""
		echo "Chromium failed or timed out after ${BROWSER_TIMEOUT_SECONDS}s; see $work/chromium.log" >&2
		return 1
	fi
	browser_pid=""
}

failures=0
# check DESCRIPTION PATTERN: counts a failure unless the DOM dump matches
# the extended regular expression PATTERN.
check() {
	if grep -Eq -- "$2" "$work/dom.html"; then
		echo "ok: $1"
	else
		echo "FAILED: $1: no match for '$2' in $work/dom.html" >&2
		failures=$((failures + 1))
	fi
}

echo "== building throttle-central"
go build -o "$work/bin/" ./cmd/throttle-central

pick_port_bases
export HTTP_PORT_BASE RAFT_PORT_BASE GOSSIP_PORT_BASE
export HOST=127.0.0.1 DATA_DIR=$work/data BIN=$work/bin/throttle-central
http1=127.0.0.1:$HTTP_PORT_BASE
http2=127.0.0.1:$((HTTP_PORT_BASE + 1))
http3=127.0.0.1:$((HTTP_PORT_BASE + 2))

echo "== starting three centrals: HTTP $HTTP_PORT_BASE-$((HTTP_PORT_BASE + 2)), Raft $RAFT_PORT_BASE-$((RAFT_PORT_BASE + 2)), gossip $GOSSIP_PORT_BASE-$((GOSSIP_PORT_BASE + 2))"
cluster_started=1
scripts/cluster.sh up

echo "== setting the limit of $SERVICE/$USER_NAME"
curl -sS -f --max-time 5 --retry 5 --retry-delay 1 -X PUT "http://$http1/v1/limits/$SERVICE/$USER_NAME" \
	-d "{\"limit\":{\"traffic_up\":$LIMIT_TRAFFIC_UP,\"database_read\":$LIMIT_DATABASE_READ,\"database_write\":$LIMIT_DATABASE_WRITE}}"
echo

echo "== sending reports from edge-1 and edge-2 for ${REPORT_SECONDS}s"
sent=0
for second in $(seq 1 "$REPORT_SECONDS"); do
	sleep_to_report_time
	# The amounts vary a little from second to second, as real traffic does.
	# These nodes ignore their quotas: together they stay above the limit, so
	# the leader cuts their quotas and edge-2 reports rejections.
	send_report "$http2" edge-1 "{\"traffic_up\":$((600000 + 50000 * (second % 4))),\"database_read\":$((120 + 10 * (second % 3)))}" '{}' &&
		sent=$((sent + 1)) || echo "report $second of edge-1 failed" >&2
	send_report "$http3" edge-2 "{\"traffic_up\":$((450000 + 60000 * (second % 3))),\"database_read\":$((60 + 15 * (second % 2)))}" \
		"{\"traffic_up\":$((2 + second % 3))}" && sent=$((sent + 1)) || echo "report $second of edge-2 failed" >&2
done
echo "$sent of $((2 * REPORT_SECONDS)) reports accepted"
((sent > 0)) || { echo "FAILED: every report failed; see the curl errors above" >&2; exit 1; }
wait_for_monitor consumption_sum
wait_for_monitor rejection_sum
wait_for_monitor quota

leader=$(curl -sf --max-time 2 "http://$http1/v1/cluster" | sed -n 's/.*"leader":"\([^"]*\)".*/\1/p')
[[ -n $leader ]] || { echo "FAILED: GET /v1/cluster names no leader" >&2; exit 1; }

page_url="http://$http2/ui?service=$SERVICE&user=$USER_NAME"
echo "== loading $page_url in $("$chromium" --version 2>/dev/null | tail -n 1)"
run_browser "$work/dom.html" --dump-dom

check "the status line reports a successful update" 'id="status" data-state="ok"'
check "the cluster panel names the leader $leader" "id=\"leader\">$leader<"
check "the gossip members are alive" 'class="state-alive">alive<'
check "the limit table shows traffic_up $LIMIT_TRAFFIC_UP" "data-limit=\"$LIMIT_TRAFFIC_UP\""
check "the consumption chart draws a line" 'data-chart="consumption" data-series="consumption" d="M[0-9]'
lines=$(grep -o 'data-chart="consumption" data-series="consumption" d="M[0-9]' "$work/dom.html" | wc -l)
if ((lines == 3)); then
	echo "ok: a consumption line for each of the 3 limited resources, database_write (never reported) at 0"
else
	echo "FAILED: $lines consumption lines, want 3: one for each limited resource, database_write at 0" >&2
	failures=$((failures + 1))
fi
check "the consumption chart draws the limit line" "class=\"limit-line\" data-limit=\"$LIMIT_TRAFFIC_UP\""
check "the rejection chart draws traffic_up" 'data-chart="rejection" data-series="traffic_up" d="M[0-9]'
check "the quota chart draws a line" 'data-chart="quota" data-series="edge-[12]" d="M[0-9]'
check "the quota table lists edge-1" 'data-node="edge-1"'
check "the quota table lists edge-2" 'data-node="edge-2"'
if ((failures > 0)); then
	echo "FAILED: $failures dashboard checks failed" >&2
	exit 1
fi

echo "== taking the screenshot"
mkdir -p "$(dirname "$screenshot")"
run_browser /dev/null --screenshot="$(realpath -m "$screenshot")"
if [[ ! -s $screenshot ]] || [[ $(head -c 8 "$screenshot" | od -An -tx1 | tr -d ' \n') != 89504e470d0a1a0a ]]; then
	echo "FAILED: Chromium wrote no PNG to $screenshot; see $work/chromium.log" >&2
	exit 1
fi
size=$(wc -c <"$screenshot")
echo "screenshot: $screenshot ($((size / 1024)) KiB)"
if ((size > MAX_SCREENSHOT_BYTES)); then
	echo "note: the screenshot is over $((MAX_SCREENSHOT_BYTES / 1024)) KiB, too large for the docs" >&2
fi

passed=1
echo "PASS: the dashboard rendered the cluster and the data of $SERVICE/$USER_NAME ($((SECONDS - started_at)) s)"
