#!/usr/bin/env bash
# Push-by-mid throughput to online users (BENCHMARKS.md, "Pushes by mid"):
# imcloud standalone (release), 1,000 users online (`imbench conns --hold`:
# one WebSocket connection each, authenticated, not reading, so the clients
# cost nothing), and wrk posting `mids=<0..999 round robin>&msg=hi`
# (scripts/push.lua) with 2 threads and 64 connections for 10 s. For scale,
# the same wrk against `imbench http-floor` (logic's HTTP stack answering the
# same request and doing nothing else: the most any push path can reach
# here), `GET /health` and pushes to users with no session (nothing to
# deliver). Prints wrk's rate and latency, the server's CPU, and what the
# cloud node counted.
#
# Usage: scripts/bench-push.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release -q -p imcloud -p imcloud-bench
bin=target/release
ulimit -n 20000
dir=$(mktemp -d)
pids=()
trap 'kill -INT "${pids[@]}" 2>/dev/null || true' EXIT
tick=$(getconf CLK_TCK)

start() {
  "$bin/imcloud" standalone --log warn 2>"$dir/imcloud.log" &
  server=$!; pids=("$server")
  until curl -sf http://127.0.0.1:3111/health >/dev/null; do sleep 0.05; done
}
stop() { kill -INT "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
cpu() { awk '{print $14+$15}' "/proc/$server/stat"; }
# A cloud node answers once a push is queued for its buckets; wait until
# what they took stops moving. wrk counts the answers inside its window, so what was kept (logic) is
# set against what was delivered (cloud), both counted by the server.
counted() { # metric [port]
  local last=-1 now
  while :; do
    now=$(curl -s "http://127.0.0.1:${2:-3104}/metrics" | awk -v s="$1" 'index($0, s) == 1 {print $NF}')
    [ "$now" = "$last" ] && break
    last=$now; sleep 0.5
  done
  echo "$now"
}
# What a counter gained since `from` (empty where the server has no such counter).
delta() { # from metric [port]
  local now
  now=$(counted "$2" "${3:-}")
  [ -n "$now" ] && [ -n "$1" ] && awk -v a="$1" -v b="$now" 'BEGIN {printf "%d", b - a}'
}

run() { # name wrk-args...
  local name=$1; shift
  local before after kept0 delivered0
  kept0=$(counted 'imcloud_logic_inbox_stored_total' 3111)
  delivered0=$(counted 'imcloud_cloud_delivered_total{kind="key"}')
  before=$(cpu)
  wrk -t2 -c64 -d10s --latency "$@" > "$dir/wrk.out" 2>&1
  after=$(cpu)
  local rate p50 p99 requests
  rate=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.out")
  p50=$(awk '$1 == "50%" {print $2}' "$dir/wrk.out")
  p99=$(awk '$1 == "99%" {print $2}' "$dir/wrk.out")
  requests=$(awk '/requests in/ {print $1}' "$dir/wrk.out")
  local errors
  errors=$(awk '/Non-2xx/ {print $NF}' "$dir/wrk.out")
  local us
  us=$(awk -v t=$((after - before)) -v k="$tick" -v n="$requests" 'BEGIN {printf "%.1f", t / k * 1e6 / n}')
  echo "$name: $rate req/s, p50 $p50, p99 $p99, $requests requests, non-2xx ${errors:-0}, server CPU $us us/request, numbered and kept $(delta "$kept0" 'imcloud_logic_inbox_stored_total' 3111), cloud delivered $(delta "$delivered0" 'imcloud_cloud_delivered_total{kind="key"}'), slow-consumer closes $(counted 'imcloud_cloud_closes_total{reason="slow consumer"}')"
}

for round in $(seq "$rounds"); do
  echo "== round $round"
  "$bin/imbench" http-floor --listen 127.0.0.1:4111 2>/dev/null &
  server=$!; pids=("$server")
  until curl -s -o /dev/null -d mids=1 http://127.0.0.1:4111/im/push/mids; do sleep 0.05; done
  run "http floor (imbench http-floor)" -s scripts/push.lua http://127.0.0.1:4111
  stop
  start
  run "health (no push)" http://127.0.0.1:3111/health
  run "push by mid, no session" -s scripts/push.lua http://127.0.0.1:3111
  "$bin/imbench" conns --clients 1000 --hold > "$dir/hold.out" &
  pids+=("$!")
  until [ -s "$dir/hold.out" ]; do sleep 0.05; done
  run "push by mid, 1,000 online" -s scripts/push.lua http://127.0.0.1:3111
  stop
done
