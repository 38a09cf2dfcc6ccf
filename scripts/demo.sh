#!/usr/bin/env bash
# End-to-end demonstration. It builds the binaries, then runs
# bin/throttle-demo, which starts three centrals and four throttle-agent
# edge nodes on 127.0.0.1 (ports chosen free at start) and sets a limit of
# 100 MB/s for user alice. Skewed demand at 3x the limit moves between the
# agents; one agent and later the leader are killed with SIGKILL. It prints
# one line per second, stops everything it started and ends with
#   RESULT mean=<x> p5=<x> p95=<x> max=<x>
# (the per-second admitted amount over the limit, after 5 s of warm-up).
#
#   scripts/demo.sh [throttle-demo flags...]    e.g. --short, --dir ./demo-logs
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/ ./cmd/throttle-central ./cmd/throttle-agent ./cmd/throttle-demo
exec bin/throttle-demo --bin-dir bin "$@"
