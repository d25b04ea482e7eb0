#!/usr/bin/env bash
# The ingest (BENCHMARKS.md, "Pushes from NATS JetStream"): push commands
# published to a real nats-server (JetStream) and delivered by one logic
# node (imcloud standalone, release) to online WebSocket clients (imbench in
# its own process, every push counted on arrival). First the reference: a
# JetStream consumer that only acknowledges (imbench drain). Then
# throughput (commands published as fast as the stream stores them) by mid
# and to a room, with the in-memory store and with a real redis-server; then
# publish-to-device latency at a fixed rate. Each run three times.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p imcloud -p imcloud-bench
bin=$PWD/target/release
out=${BENCH_OUT:-bench-ingest.jsonl}
: > "$out"
dir=$(mktemp -d)
redis_port=6392
nats_port=4232
redis-server --port $redis_port --save '' --appendonly no --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
imcloud=
nats=
trap 'kill $(cat "$dir/redis.pid") $imcloud $nats 2>/dev/null || true' EXIT
ulimit -n 20000 || true

start_nats() {
  rm -rf "$dir/js"
  nats-server -js -a 127.0.0.1 -p $nats_port -sd "$dir/js" 2>"$dir/nats.log" &
  nats=$!
  for _ in $(seq 50); do grep -q "Server is ready" "$dir/nats.log" && break; sleep 0.1; done
}

run() { # name store -- imbench ingest args...
  local name=$1 store=$2; shift 3
  redis-cli -p $redis_port flushall >/dev/null
  start_nats
  cat > "$dir/$name.toml" <<TOML
[logic]
session_store = "$store"
redis_url = "redis://127.0.0.1:$redis_port/0"
[logic.ingest]
nats_url = "nats://127.0.0.1:$nats_port"
TOML
  "$bin/imcloud" standalone --config "$dir/$name.toml" --log warn 2>/dev/null &
  imcloud=$!
  for _ in $(seq 50); do
    curl -sf http://127.0.0.1:3111/health | grep -q '"serving"' && break; sleep 0.1
  done
  echo "== $name" >&2
  "$bin/imbench" ingest --nats nats://127.0.0.1:$nats_port "$@" \
    | sed "s/^{/{\"run\":\"$name\",/" | tee -a "$out"
  kill $imcloud $nats; wait $imcloud $nats 2>/dev/null || true
}

for round in $(seq "${BENCH_ROUNDS:-3}"); do
  start_nats
  echo "== drain (reference)" >&2
  "$bin/imbench" drain --nats nats://127.0.0.1:$nats_port --commands 20000 --size 64 \
    | sed 's/^{/{"run":"drain",/' | tee -a "$out"
  kill $nats; wait $nats 2>/dev/null || true
  for store in memory redis; do
    run "$store-mids" $store -- --kind mids --clients 1000 --commands 20000
    run "$store-room" $store -- --kind room --clients 100 --commands 20000
    run "$store-100-rooms" $store -- --kind room --clients 1000 --rooms 100 --commands 20000
    run "$store-mids-at-1000" $store -- --kind mids --clients 1000 --commands 10000 --rate 1000
  done
done
