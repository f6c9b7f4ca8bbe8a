#!/usr/bin/env bash
# The product as it ships: the edge-ws binary with its built-in configuration (no --config),
# and its demo page at / in headless Chromium with two users (tests/clients/node/demo-test.js:
# chat, presence, typing, notifications, the HTTP API, the shared editor, reload recovery).
# Screenshots and the server log land in tests/demo/logs (or $ARTIFACTS).
#
# Environment: EDGE_WS_BIN (use this binary instead of building target/release/edge-ws),
# CHROMIUM (browser path, default /usr/bin/chromium), JOBS (cargo -j, default 2).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
NODE_DIR="$ROOT/tests/clients/node"
export ARTIFACTS="${ARTIFACTS:-$HERE/logs}"
mkdir -p "$ARTIFACTS"

if [ ! -d "$NODE_DIR/node_modules" ] || [ "$NODE_DIR/package-lock.json" -nt "$NODE_DIR/node_modules/.package-lock.json" ]; then
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ -n "${EDGE_WS_BIN:-}" ]; then
  bin="$EDGE_WS_BIN"
else
  (cd "$ROOT" && cargo build --release -p edge-ws-server --bin edge-ws -j"${JOBS:-2}" -q)
  bin="$ROOT/target/release/edge-ws"
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"
api_port="$(free_port)"
data="$(mktemp -d)"
log="$ARTIFACTS/edge-ws.log"
# The built-in configuration, only the addresses and the data directory moved.
"$bin" --addr "127.0.0.1:$port" --api-addr "127.0.0.1:$api_port" --data-dir "$data" >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 100); do
  if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { echo "demo: edge-ws exited at start:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
key="$(grep -o "key=[0-9a-f]*" "$log" | head -n1 | cut -d= -f2)"
[ -n "$key" ] || { echo "demo: no HTTP API key in the log" >&2; cat "$log" >&2; exit 1; }
status=0
timeout 300 node "$NODE_DIR/demo-test.js" "http://127.0.0.1:$port" "http://127.0.0.1:$api_port" "$key" || status=$?
# Graceful drain: SIGTERM ends it with exit 0.
kill -TERM "$pid"
drained=1
for _ in $(seq 150); do
  if ! kill -0 "$pid" 2>/dev/null; then drained=0; break; fi
  sleep 0.1
done
if [ "$drained" -ne 0 ]; then
  echo "demo: edge-ws did not exit within 15 s of SIGTERM" >&2
  status=1
else
  wait "$pid" || { echo "demo: edge-ws exited with $? after SIGTERM" >&2; status=1; }
fi
if [ "$status" -ne 0 ]; then tail -n 40 "$log" >&2; fi
exit "$status"
