#!/usr/bin/env bash
# Starts three centrals on 127.0.0.1 with every security option on, shows
# what each one does with curl, then stops them. The options:
#
#   HTTPS for the API and the report WebSocket   --tls-cert, --tls-key, --tls-ca
#   mutual TLS on the Raft transport             --raft-tls
#   bearer tokens with scopes on the API         --token-file, --metrics-token-required
#   encrypted gossip                             --gossip-key-file
#   SigV4 presigned WebSocket handshakes         --access-keys-file
#
# It builds throttle-central, generates a CA and one certificate per
# central with openssl, a token file, a gossip key and an access key pair,
# picks free ports in 20000-29999, starts the centrals and waits for
# /readyz. Then it checks the responses:
#   tokens   401 without a token, 403 with the wrong scope, 200 with the
#            right one, open health checks, protected metrics
#   SigV4    a presigned WebSocket handshake (101), an unsigned one (403)
#   gossip   three alive members
#   Raft     a connection without a client certificate (rejected)
# It stops the centrals by PID on every exit.
#
#   scripts/secure-cluster.sh [--keep] [--dir DIR]
#
#   --keep      after a pass, leave the centrals running and print their PIDs
#   --dir DIR   put keys, certificates, tokens, data and logs in DIR
#               (default: a new temporary directory, removed after a pass)
#
# Exit status: 0 when every check passed, 1 when one failed (the directory
# is kept and named), 2 for an invalid argument or a missing tool.
# Needs: go, openssl (1.1.1 or newer), curl, timeout, and ss or bash's /dev/tcp.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
dir=""
while (($# > 0)); do
	case $1 in
	--keep) keep=1; shift ;;
	--dir)
		[[ $# -ge 2 ]] || { echo "--dir needs a directory" >&2; exit 2; }
		dir=$2
		shift 2
		;;
	-h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown argument $1; see $0 --help" >&2; exit 2 ;;
	esac
done
for tool in go openssl curl; do
	command -v "$tool" >/dev/null || { echo "$tool not found on the PATH; this script needs it" >&2; exit 2; }
done

created_dir=0
if [[ -z $dir ]]; then
	dir=$(mktemp -d "${TMPDIR:-/tmp}/secure-cluster.XXXXXX")
	created_dir=1
else
	mkdir -p "$dir"
fi
dir=$(cd "$dir" && pwd)
NODES=3
READY_SECONDS=30
pids=()
passed=0

# cleanup runs on every exit: unless --keep, it stops the centrals this
# script started, by PID (SIGTERM, SIGKILL after 10 s), and removes the
# directory after a pass when the script created it.
cleanup() {
	local pid deadline
	if ((keep && passed)); then
		echo "the centrals keep running: kill ${pids[*]}; files in $dir"
		return
	fi
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	deadline=$((SECONDS + 10))
	for pid in "${pids[@]}"; do
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "central PID $pid did not stop within 10 s of SIGTERM; sending SIGKILL" >&2
			kill -KILL "$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	done
	if ((passed && created_dir)); then
		rm -rf "$dir"
	else
		echo "keys, certificates, data and logs are in $dir"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/lib/ports.sh
. scripts/lib/ports.sh

http_addr() { echo "127.0.0.1:$((HTTP_BASE + $1 - 1))"; }
raft_addr() { echo "127.0.0.1:$((RAFT_BASE + $1 - 1))"; }
gossip_addr() { echo "127.0.0.1:$((GOSSIP_BASE + $1 - 1))"; }

echo "== building throttle-central"
go build -o "$dir/bin/" ./cmd/throttle-central
bin=$dir/bin/throttle-central

echo "== generating a CA, certificates, tokens, a gossip key and an access key pair in $dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
	-subj "/CN=throttle-central example CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
# Every central's certificate serves HTTPS and both ends of Raft's mutual
# TLS, so it needs both extended key usages, and a SAN for the host of its
# --http-addr and --raft-addr.
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth,clientAuth" \
	"keyUsage=critical,digitalSignature" "basicConstraints=critical,CA:FALSE" >"$dir/central.ext"
for n in $(seq 1 $NODES); do
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=c$n" \
		-keyout "$dir/c$n-key.pem" -out "$dir/c$n.csr" 2>/dev/null
	openssl x509 -req -in "$dir/c$n.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
		-days 2 -extfile "$dir/central.ext" -out "$dir/c$n.pem" 2>/dev/null
done
ADMIN_TOKEN=$(openssl rand -hex 32)
NODE_TOKEN=$(openssl rand -hex 32)
READ_TOKEN=$(openssl rand -hex 32)
UNKNOWN_TOKEN=$(openssl rand -hex 32) # in no token file
printf '%s\n' "# scope token" "admin $ADMIN_TOKEN" "node $NODE_TOKEN" "read $READ_TOKEN" >"$dir/tokens"
openssl rand -base64 32 >"$dir/gossip.key"
ACCESS_KEY=edge-$(openssl rand -hex 8)
SECRET_KEY=$(openssl rand -hex 20)
printf '%s %s\n' "$ACCESS_KEY" "$SECRET_KEY" >"$dir/access-keys"
umask 022

pick_port_bases || exit 1
HTTP_BASE=$HTTP_PORT_BASE RAFT_BASE=$RAFT_PORT_BASE GOSSIP_BASE=$GOSSIP_PORT_BASE
echo "== starting c1-c3: HTTPS $(http_addr 1)-$((HTTP_BASE + 2)), Raft $(raft_addr 1)-$((RAFT_BASE + 2)), gossip $(gossip_addr 1)-$((GOSSIP_BASE + 2))"
for n in $(seq 1 $NODES); do
	args=(--node-id "c$n" --data-dir "$dir/data/c$n"
		--http-addr "$(http_addr "$n")" --raft-addr "$(raft_addr "$n")" --gossip-addr "$(gossip_addr "$n")"
		--tls-cert "$dir/c$n.pem" --tls-key "$dir/c$n-key.pem" --tls-ca "$dir/ca.pem" --raft-tls
		--token-file "$dir/tokens" --metrics-token-required
		--gossip-key-file "$dir/gossip.key" --access-keys-file "$dir/access-keys")
	if ((n == 1)); then
		args+=(--bootstrap)
	else
		args+=(--join "$(http_addr 1)" --gossip-join "$(gossip_addr 1)")
	fi
	"$bin" "${args[@]}" >"$dir/c$n.log" 2>&1 &
	pids+=($!)
	echo "c$n: PID ${pids[-1]}, log $dir/c$n.log"
done

# https_status METHOD ADDR PATH TOKEN [BODY]: prints the HTTP status of one
# request over HTTPS, verified with the example CA; TOKEN may be empty.
https_status() {
	local method=$1 addr=$2 path=$3 token=$4 body=${5:-} args=()
	[[ -n $token ]] && args+=(-H "Authorization: Bearer $token")
	[[ -n $body ]] && args+=(-H "Content-Type: application/json" -d "$body")
	curl -s -o "$dir/last-body" -w '%{http_code}' --max-time 5 --cacert "$dir/ca.pem" -X "$method" "${args[@]}" "https://$addr$path" || true
}

deadline=$((SECONDS + READY_SECONDS))
for n in $(seq 1 $NODES); do
	until [[ $(https_status GET "$(http_addr "$n")" /readyz "") == 200 ]]; do
		if ! kill -0 "${pids[n - 1]}" 2>/dev/null; then
			echo "c$n exited; the end of its log:" >&2
			tail -n 20 "$dir/c$n.log" >&2
			exit 1
		fi
		if ((SECONDS >= deadline)); then
			echo "c$n is not ready after ${READY_SECONDS}s; see $dir/c$n.log" >&2
			exit 1
		fi
		sleep 0.2
	done
done
echo "== all three centrals are ready"

failures=0
# expect STATUS DESCRIPTION METHOD ADDR PATH TOKEN_NAME [BODY]: sends the
# request with the token named TOKEN_NAME (ADMIN_TOKEN, NODE_TOKEN,
# READ_TOKEN or -) and checks the status. It prints the curl command with
# the token's variable name, never its value.
expect() {
	local want=$1 what=$2 method=$3 addr=$4 path=$5 token_name=$6 body=${7:-} token="" got shown
	[[ $token_name != - ]] && token=${!token_name}
	got=$(https_status "$method" "$addr" "$path" "$token" "$body")
	shown="curl --cacert ca.pem -X $method"
	[[ $token_name != - ]] && shown+=" -H \"Authorization: Bearer \$$token_name\""
	[[ -n $body ]] && shown+=" -d '$body'"
	shown+=" https://$addr$path"
	if [[ $got == "$want" ]]; then
		printf 'ok    %s  %s\n      $ %s\n' "$got" "$what" "$shown"
	else
		printf 'FAIL  %s, want %s  %s\n      $ %s\n      %s\n' "$got" "$want" "$what" "$shown" "$(head -c 300 "$dir/last-body")" >&2
		failures=$((failures + 1))
	fi
}

c1=$(http_addr 1) c2=$(http_addr 2) c3=$(http_addr 3)
limit='{"limit":{"traffic_up":1048576}}'
echo "== access tokens"
expect 401 "a limit change without a token" PUT "$c2" /v1/limits/front/alice - "$limit"
expect 401 "a limit change with an unknown token" PUT "$c2" /v1/limits/front/alice UNKNOWN_TOKEN "$limit"
expect 403 "a limit change with a node token" PUT "$c2" /v1/limits/front/alice NODE_TOKEN "$limit"
expect 403 "a limit change with a read token" PUT "$c2" /v1/limits/front/alice READ_TOKEN "$limit"
expect 200 "a limit change with the admin token, on any central" PUT "$c2" /v1/limits/front/alice ADMIN_TOKEN "$limit"
expect 401 "a read without a token" GET "$c3" "/v1/limits/front/alice?consistent=true" -
expect 200 "a read with the read token" GET "$c3" "/v1/limits/front/alice?consistent=true" READ_TOKEN
expect 200 "a read with the admin token" GET "$c3" /v1/cluster ADMIN_TOKEN
expect 403 "a report with a read token" POST "$c1" /v1/report READ_TOKEN \
	"{\"node_id\":\"edge-1\",\"slot_number\":$(date +%s),\"consumption\":{\"front\":{\"alice\":{\"traffic_up\":1000}}},\"rejection\":{}}"
expect 200 "a report with a node token" POST "$c1" /v1/report NODE_TOKEN \
	"{\"node_id\":\"edge-1\",\"slot_number\":$(date +%s),\"consumption\":{\"front\":{\"alice\":{\"traffic_up\":1000}}},\"rejection\":{}}"
expect 200 "the liveness check, open" GET "$c1" /healthz -
expect 200 "the readiness check, open" GET "$c1" /readyz -
expect 401 "metrics without a token (--metrics-token-required)" GET "$c1" /metrics -
expect 200 "metrics with the read token" GET "$c1" /metrics READ_TOKEN
if ! grep -q 'throttle_auth_failures_total{reason="invalid"} 1' <(curl -s --cacert "$dir/ca.pem" -H "Authorization: Bearer $READ_TOKEN" "https://$c2/metrics"); then
	echo "FAIL  throttle_auth_failures_total{reason=\"invalid\"} on c2 is not 1" >&2
	failures=$((failures + 1))
else
	echo "ok    c2 counted the unknown token in throttle_auth_failures_total{reason=\"invalid\"}"
fi

# hmac_hex KEYOPT DATA: the hex HMAC-SHA256 of DATA; KEYOPT is key:TEXT or
# hexkey:HEX, as openssl's -macopt takes it.
hmac_hex() {
	printf '%s' "$2" | openssl dgst -sha256 -mac HMAC -macopt "$1" | awk '{print $NF}'
}

# presign HOST: prints the SigV4 presigned query for GET /throttle on
# HOST, as lua-resty-throttle signs it: region us-east-1, service s3,
# signed header host, UNSIGNED-PAYLOAD, valid for 60 s.
presign() {
	local host=$1 amz_date day scope query canonical string_to_sign key
	amz_date=$(date -u +%Y%m%dT%H%M%SZ)
	day=${amz_date:0:8}
	scope="$day/us-east-1/s3/aws4_request"
	query="X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=$ACCESS_KEY%2F${scope//\//%2F}&X-Amz-Date=$amz_date&X-Amz-Expires=60&X-Amz-SignedHeaders=host"
	canonical=$(printf 'GET\n/throttle\n%s\nhost:%s\n\nhost\nUNSIGNED-PAYLOAD' "$query" "$host")
	string_to_sign=$(printf 'AWS4-HMAC-SHA256\n%s\n%s\n%s' "$amz_date" "$scope" "$(printf '%s' "$canonical" | openssl dgst -sha256 | awk '{print $NF}')")
	key=$(hmac_hex "key:AWS4$SECRET_KEY" "$day")
	key=$(hmac_hex "hexkey:$key" us-east-1)
	key=$(hmac_hex "hexkey:$key" s3)
	key=$(hmac_hex "hexkey:$key" aws4_request)
	echo "$query&X-Amz-Signature=$(hmac_hex "hexkey:$key" "$string_to_sign")"
}

# handshake_status URL: prints the status of a WebSocket handshake. curl
# keeps an upgraded connection open, so --max-time ends it.
handshake_status() {
	curl -s -o /dev/null -w '%{http_code}' --http1.1 --max-time 2 --cacert "$dir/ca.pem" \
		-H "Connection: Upgrade" -H "Upgrade: websocket" -H "Sec-WebSocket-Version: 13" \
		-H "Sec-WebSocket-Key: $(openssl rand -base64 16)" "$1" || true
}

echo "== SigV4 on the report WebSocket"
got=$(handshake_status "https://$c2/throttle?$(presign "$c2")")
if [[ $got == 101 ]]; then
	echo "ok    101  a handshake presigned with the access key (as lua-resty-throttle sends it)"
else
	echo "FAIL  $got, want 101  a presigned handshake; see $dir/c2.log" >&2
	failures=$((failures + 1))
fi
got=$(handshake_status "https://$c2/throttle")
if [[ $got == 403 ]]; then
	echo "ok    403  a handshake without a signature or a node token"
else
	echo "FAIL  $got, want 403  an unsigned handshake" >&2
	failures=$((failures + 1))
fi

echo "== encrypted gossip"
deadline=$((SECONDS + 15))
alive=0
while ((SECONDS < deadline)); do
	alive=$(curl -s --cacert "$dir/ca.pem" -H "Authorization: Bearer $READ_TOKEN" "https://$c1/v1/members" | grep -o '"state":"alive"' | wc -l)
	((alive >= 3)) && break
	sleep 0.2
done
if ((alive >= 3)); then
	echo "ok    c1 sees three alive gossip members, all with the key in gossip.key"
else
	echo "FAIL  c1 sees $alive alive gossip members after 15 s, want 3" >&2
	failures=$((failures + 1))
fi

echo "== mutual TLS on Raft"
# raft_probe ARGS...: connects to c1's Raft port with openssl s_client and
# prints its output. With TLS 1.3 the server rejects a client certificate
# only after the client's side of the handshake is done. So s_client keeps
# reading (-ign_eof) until the server closes the connection, or for 2 s
# when the server accepted the client and waits for an RPC.
raft_probe() {
	timeout 2 openssl s_client -connect "$(raft_addr 1)" -CAfile "$dir/ca.pem" -verify_return_error -ign_eof "$@" </dev/null 2>&1 || true
}
raft_out=$(raft_probe)
if grep -qiE 'alert (certificate required|handshake failure|bad certificate)' <<<"$raft_out"; then
	echo "ok    c1's Raft port rejects a connection without a client certificate"
else
	echo "FAIL  c1's Raft port did not reject a connection without a client certificate:" >&2
	grep -iE 'alert|error|verify' <<<"$raft_out" | head -n 5 >&2
	failures=$((failures + 1))
fi
raft_out=$(raft_probe -cert "$dir/c2.pem" -key "$dir/c2-key.pem")
if grep -q 'Verify return code: 0 (ok)' <<<"$raft_out" && ! grep -qi 'alert' <<<"$raft_out"; then
	echo "ok    c1's Raft port accepts c2's certificate"
else
	echo "FAIL  c1's Raft port did not accept c2's certificate:" >&2
	head -n 5 <<<"$raft_out" >&2
	failures=$((failures + 1))
fi

if grep -qF -e "$ADMIN_TOKEN" -e "$NODE_TOKEN" -e "$READ_TOKEN" "$dir"/c*.log; then
	echo "FAIL  a central's log contains a token" >&2
	failures=$((failures + 1))
else
	echo "ok    no central's log contains a token"
fi

if ((failures > 0)); then
	echo "$failures checks failed" >&2
	exit 1
fi
passed=1
echo "PASS: every check passed"
