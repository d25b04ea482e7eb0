#!/usr/bin/env bash
# The cost of reliable delivery (BENCHMARKS.md, "Storing every message"):
# push-by-mid requests to 1,000 online users (one WebSocket client each,
# every push counted on arrival), with the inbox on and off
# (inbox_max = 0), with the in-memory store and with a real redis-server;
# then pushes naming 1,000 users each. imcloud standalone, imbench in its
# own process, both release builds. Each run three times: on 2 shared
# cores single runs vary by 10-15 %.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p imcloud -p imcloud-bench
bin=$PWD/target/release
out=${BENCH_OUT:-bench-inbox.jsonl}
: > "$out"
dir=$(mktemp -d)
redis_port=6391
redis-server --port $redis_port --save '' --appendonly no --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
trap 'kill $(cat "$dir/redis.pid") 2>/dev/null || true; kill $imcloud 2>/dev/null || true' EXIT
ulimit -n 20000 || true

run() { # name store inbox_max -- imbench push args...
  local name=$1 store=$2 inbox_max=$3; shift 4
  redis-cli -p $redis_port flushall >/dev/null
  cat > "$dir/$name.toml" <<TOML
[logic]
session_store = "$store"
redis_url = "redis://127.0.0.1:$redis_port/0"
inbox_max = $inbox_max
TOML
  "$bin/imcloud" standalone --config "$dir/$name.toml" --log warn 2>/dev/null &
  imcloud=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:3111/health >/dev/null && break; sleep 0.1; done
  echo "== $name" >&2
  "$bin/imbench" push --online ws://127.0.0.1:3102/sub --mids 1000 "$@" \
    | sed "s/^{/{\"run\":\"$name\",/" | tee -a "$out"
  kill $imcloud; wait $imcloud 2>/dev/null || true
}

for round in 1 2 3; do
for store in memory redis; do
  run "$store-inbox" $store 200 -- --requests 50000 --concurrency 64
  run "$store-no-inbox" $store 0 -- --requests 50000 --concurrency 64
  run "$store-inbox-1000-mids" $store 200 -- --requests 500 --per-request 1000 --concurrency 8
  run "$store-no-inbox-1000-mids" $store 0 -- --requests 500 --per-request 1000 --concurrency 8
done
done
