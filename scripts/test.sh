#!/usr/bin/env bash
# Every test, on a fresh machine: installs what the tests talk to when it is
# missing (redis-server for the Redis store, nats-server for JetStream
# ingest, node and Debian's chromium for the JavaScript SDK and the demo
# page, playwright-core to drive chromium),
# then runs the whole workspace's tests. This is the README's test command,
# and what `.ci/run` calls.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -d clients/js/node_modules/playwright-core ]; then
  echo "== installing playwright-core (clients/js)"
  # Debian's chromium is the browser: playwright must not download one.
  (cd clients/js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

echo "== tests"
cargo test --workspace "$@"
echo "browser screenshot: target/e2e/demo.png"
