#!/usr/bin/env bash
# Reproduces BENCHMARKS.md's room fan-out table: imcloud standalone against
# the raw writer (`imbench raw`), the same imbench clients, one fresh server
# per run, published to through logic's HTTP API (imcloud) or the raw
# writer's publish socket.
#
# Usage: scripts/bench.sh [CLIENT_COUNTS...]        (default: 1000 10000)
#   RATES="10 50 0"   messages per second, 0 = as fast as delivery allows
#   WIRES="ws tcp"    client transports (default ws); tcp: imcloud's TCP port
#                     against `imbench raw --tcp`
#   FANBENCH=/tmp/fanbench/release/fanbench  also runs ../shared/fanbench's
#                     harness against imcloud and its own serve-raw, for the
#                     cross-check (build it as its README says)
# One JSON line per run goes to $BENCH_OUT (default bench-results.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ $# -eq 0 ] && counts=(1000 10000)
read -r -a rates <<< "${RATES:-10 50 0}"
read -r -a wires <<< "${WIRES:-ws}"
cargo build --release -q -p imcloud -p imcloud-bench
bin=target/release
out=${BENCH_OUT:-bench-results.jsonl}
: > "$out"
ulimit -n 20000

server=
stop() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  server=
}
trap stop EXIT
# Waits until something accepts connections on 127.0.0.1:$1.
listening() { until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do sleep 0.05; done; }

# Messages per run: ~5 s at the fixed rates; at max, enough for ~10 M deliveries.
messages() {
  local n=$1 rate=$2
  if [ "$rate" -eq 0 ]; then echo $(( 10000000 / n )); else echo $(( rate * 5 )); fi
}

for n in "${counts[@]}"; do
  for rate in "${rates[@]}"; do
    k=$(messages "$n" "$rate")
    for wire in "${wires[@]}"; do
      if [ "$wire" = tcp ]; then
        raw_url=tcp://127.0.0.1:4101; imcloud_url=tcp://127.0.0.1:3101; framing=tcp
      else
        raw_url=ws://127.0.0.1:4102/sub; imcloud_url=ws://127.0.0.1:3102/sub; framing=goim
      fi

      "$bin/imbench" raw --ws 127.0.0.1:4102 --tcp 127.0.0.1:4101 --publish 127.0.0.1:4104 2>/dev/null &
      server=$!; listening 4101; listening 4102; listening 4104
      "$bin/imbench" fanout --clients "$n" --messages "$k" --rate "$rate" --pid "$server" \
        --framing "$framing" --ws "$raw_url" --publish raw:127.0.0.1:4104 | tee -a "$out"
      stop

      "$bin/imcloud" standalone --log warn 2>/dev/null &
      server=$!; listening 3101; listening 3102; listening 3111
      "$bin/imbench" fanout --clients "$n" --messages "$k" --rate "$rate" --pid "$server" \
        --framing "$framing" --ws "$imcloud_url" --publish http:http://127.0.0.1:3111 | tee -a "$out"
      stop
    done

    if [ -n "${FANBENCH:-}" ]; then
      "$FANBENCH" serve-raw --ws 2>/dev/null &
      server=$!; listening 9100; listening 9101
      "$FANBENCH" fanout --target raw-ws --conns "$n" --msgs "$k" --rate "$rate" --size 64 \
        --server-pid "$server" 2>/dev/null | tail -1 | tee -a "$out"
      # imbench's harness against the same server: the harnesses compared.
      "$bin/imbench" fanout --clients "$n" --messages "$k" --rate "$rate" --pid "$server" \
        --framing bare --ws ws://127.0.0.1:9100/sub --publish raw:127.0.0.1:9101 | tee -a "$out"
      stop

      "$bin/imcloud" standalone --log warn 2>/dev/null &
      server=$!; listening 3102; listening 3111
      token=$("$bin/imcloud" token --mid 1 --room live://1000 --accepts 1000)
      "$FANBENCH" fanout --target goim --token "$token" --conns "$n" --msgs "$k" --rate "$rate" \
        --size 64 --server-pid "$server" 2>/dev/null | tail -1 | tee -a "$out"
      stop
    fi
  done
done
