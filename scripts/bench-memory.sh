#!/usr/bin/env bash
# Memory after churn (BENCHMARKS.md, "Memory after churn"): imcloud
# standalone (release) holds 2,000 WebSocket clients while 14,000 more
# connect, authenticate and leave (7 x 2,000); then everyone leaves. Prints
# the node's RSS at start, while holding, at its peak (VmHWM) and once
# empty: a node that empties should come back near where it started.
# IMCLOUD=path/to/imcloud compares another build (another allocator).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${IMCLOUD:-}" ]; then
  cargo build --release -q -p imcloud -p imcloud-bench
  IMCLOUD=$PWD/target/release/imcloud
fi
IMBENCH=${IMBENCH:-$PWD/target/release/imbench}
ulimit -n 20000 || true
"$IMCLOUD" standalone --log warn 2>/dev/null &
imcloud=$!
trap 'kill $imcloud $holder 2>/dev/null || true' EXIT
holder=
for _ in $(seq 50); do curl -sf http://127.0.0.1:3111/health >/dev/null && break; sleep 0.1; done
rss() { awk "/^$1:/ {print \$2}" /proc/$imcloud/status; }
connections() {
  curl -s http://127.0.0.1:3104/metrics \
    | awk '/^imcloud_cloud_connections\{/ {s += $2} END {print s + 0}'
}
sleep 1
start=$(rss VmRSS)
# 2,000 clients held for a minute (one room message every half second).
"$IMBENCH" fanout --clients 2000 --messages 120 --rate 2 >/dev/null &
holder=$!
until [ "$(connections)" -ge 2000 ]; do sleep 0.2; done
held=$(rss VmRSS)
for _ in 1 2 3 4 5 6 7; do
  "$IMBENCH" conns --clients 2000 >/dev/null
done
churned=$(rss VmRSS)
wait $holder
until [ "$(connections)" -eq 0 ]; do sleep 0.2; done
sleep "${SETTLE:-2}"
empty=$(rss VmRSS)
peak=$(rss VmHWM)
echo "{\"imcloud\":\"$IMCLOUD\",\"start_kib\":$start,\"holding_2000_kib\":$held,\"after_churn_kib\":$churned,\"peak_kib\":$peak,\"empty_kib\":$empty}"
