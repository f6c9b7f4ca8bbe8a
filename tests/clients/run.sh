#!/usr/bin/env bash
# Real clients against the edge-ws echo server (permessage-deflate on, tests/autobahn/server.toml):
# Python `websockets` (pip, in a venv), Node `ws` 8 and headless Chromium (Debian's
# /usr/bin/chromium driven by playwright-core; npm ci in tests/clients/node). Each echoes text,
# binary, 1 MiB, empty and UTF-8-heavy messages, asserts permessage-deflate was negotiated and
# closes with 1000.
#
#   tests/clients/run.sh [python] [node] [chromium]     (default: all three)
#
# Environment: EDGE_WS_BIN (use this binary instead of building target/release/edge-ws),
# CHROMIUM (browser path, default /usr/bin/chromium), JOBS (cargo -j, default 2).
# Needs python3, node + npm, and Debian's chromium (apt-get install -y chromium).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

clients=("$@")
[ ${#clients[@]} -eq 0 ] && clients=(python node chromium)
t0=$SECONDS

# --- dependencies -----------------------------------------------------------------------------
PYVENV="$HERE/python/.venv"
if [ ! -x "$PYVENV/bin/python" ]; then
  python3 -m venv "$PYVENV"
fi
"$PYVENV/bin/pip" install -q -r "$HERE/python/requirements.txt"
if [ ! -d "$HERE/node/node_modules" ] || [ "$HERE/node/package-lock.json" -nt "$HERE/node/node_modules/.package-lock.json" ]; then
  (cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error)
fi

# --- the server -------------------------------------------------------------------------------
LOGDIR="$HERE/logs"
mkdir -p "$LOGDIR"
# shellcheck source=../autobahn/server.sh
. "$ROOT/tests/autobahn/server.sh"
start_edge_ws "$LOGDIR/edge-ws.log"
URL="ws://$ADDR/"
echo "clients: edge-ws on $URL (deps ready in $((SECONDS - t0))s)"

# --- the clients ------------------------------------------------------------------------------
passed=0
failed=0
for c in "${clients[@]}"; do
  t1=$SECONDS
  case "$c" in
    python) cmd=("$PYVENV/bin/python" "$HERE/python/client.py" "$URL") ;;
    node) cmd=(node "$HERE/node/ws-client.js" "$URL") ;;
    chromium) cmd=(node "$HERE/node/chromium-client.js" "$URL") ;;
    *) echo "clients: unknown client $c (python, node, chromium)" >&2; exit 2 ;;
  esac
  echo "--- $c"
  if timeout 300 "${cmd[@]}"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "clients: $c FAILED (exit $?)"
  fi
  echo "    ($c took $((SECONDS - t1))s)"
done
if ! server_alive; then
  echo "clients: edge-ws died:" >&2
  tail -n 30 "$LOGDIR/edge-ws.log" >&2
  failed=$((failed + 1))
fi
echo "clients: done in $((SECONDS - t0))s"
echo "real-clients: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
