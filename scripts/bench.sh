#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: imcloud standalone and the raw WebSocket writer,
# each in its own process, measured by imbench from a third process.
# Usage: scripts/bench.sh [CLIENT_COUNTS...]   (default: 1000 5000 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-1000 5000 10000}")
[ $# -eq 0 ] && counts=(1000 5000 10000)
cargo build --release -q -p imcloud -p imcloud-bench
bin=target/release
out=${BENCH_OUT:-bench-results.jsonl}
: > "$out"

ulimit -n 20000 || true
"$bin/imcloud" standalone --log warn 2>/dev/null &
imcloud=$!
"$bin/imbench" raw --ws 127.0.0.1:4102 --http 127.0.0.1:4104 2>/dev/null &
raw=$!
trap 'kill $imcloud $raw 2>/dev/null || true' EXIT
sleep 1

# Push requests first, on a server with nothing else to do.
"$bin/imbench" push --requests 50000 --concurrency 64 | tee -a "$out"

for n in "${counts[@]}"; do
  "$bin/imbench" conns --clients "$n" --concurrency 64 --pid "$imcloud" | tee -a "$out"
  for rate in 10 50 0; do
    messages=$(( rate == 0 ? 200 : rate * 4 ))
    "$bin/imbench" fanout --clients "$n" --messages "$messages" --rate "$rate" \
      --ws ws://127.0.0.1:4102/sub --publish raw:http://127.0.0.1:4104 | tee -a "$out"
    "$bin/imbench" fanout --clients "$n" --messages "$messages" --rate "$rate" \
      --ws ws://127.0.0.1:3102/sub --publish grpc:127.0.0.1:3109 | tee -a "$out"
  done
done
