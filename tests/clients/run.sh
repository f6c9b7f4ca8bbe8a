#!/usr/bin/env bash
# Real clients against the edge-ws echo server (permessage-deflate on, tests/autobahn/server.toml):
# Python `websockets` (pip, in a venv), Node `ws` 8 and headless Chromium (Debian's
# /usr/bin/chromium driven by playwright-core; npm ci in tests/clients/node). Each echoes text,
# binary, 1 MiB, empty and UTF-8-heavy messages, asserts permessage-deflate was negotiated and
# closes with 1000.
#
#   tests/clients/run.sh [python] [python-tls] [node] [node-tls] [chromium] [chromium-tls]
#                        [openssl-keyupdate]                          (default: all seven)
#
# *-tls: the same checks over wss:// (the server gets a [tls] listener with a CA and a
# certificate for localhost made here by openssl; Python and Node trust only that CA, Chromium
# only that certificate's key). openssl-keyupdate: `openssl s_client` sends TLS 1.3 KeyUpdates
# (one asking for the server's) and then a request under the new keys (openssl/keyupdate.sh).
#
# Environment: EDGE_WS_BIN (use this binary instead of building target/release/edge-ws),
# CHROMIUM (browser path, default /usr/bin/chromium), JOBS (cargo -j, default 2).
# Needs python3, node + npm, openssl, and Debian's chromium (apt-get install -y chromium).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

clients=("$@")
[ ${#clients[@]} -eq 0 ] && clients=(python python-tls node node-tls chromium chromium-tls openssl-keyupdate)
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
# A test CA and a localhost certificate for the TLS listener (test-only keys, made per run).
TLSDIR="$(mktemp -d)"
make_test_pki "$TLSDIR"
TLS_PORT="$(free_port)"
tls_server_toml "$TLSDIR" "$TLS_PORT"
export EDGE_WS_CA="$TLSDIR/ca.pem"
SPKI="$(openssl x509 -in "$TLSDIR/cert.pem" -pubkey -noout | openssl pkey -pubin -outform der |
  openssl dgst -sha256 -binary | base64)"
start_edge_ws "$LOGDIR/edge-ws.log"
trap 'stop_edge_ws; rm -rf "$TLSDIR"' EXIT
URL="ws://$ADDR/"
WSS_URL="wss://localhost:$TLS_PORT/"
echo "clients: edge-ws on $URL (deps ready in $((SECONDS - t0))s)"

# --- the clients ------------------------------------------------------------------------------
passed=0
failed=0
for c in "${clients[@]}"; do
  t1=$SECONDS
  case "$c" in
    python) cmd=("$PYVENV/bin/python" "$HERE/python/client.py" "$URL") ;;
    python-tls) cmd=("$PYVENV/bin/python" "$HERE/python/client.py" "$WSS_URL") ;;
    node-tls) cmd=(env NODE_EXTRA_CA_CERTS="$EDGE_WS_CA" node "$HERE/node/ws-client.js" "$WSS_URL") ;;
    chromium-tls) cmd=(env CHROMIUM_SPKI="$SPKI" node "$HERE/node/chromium-client.js" "$WSS_URL") ;;
    openssl-keyupdate) cmd=(bash "$HERE/openssl/keyupdate.sh" "127.0.0.1:$TLS_PORT" "$EDGE_WS_CA") ;;
    node) cmd=(node "$HERE/node/ws-client.js" "$URL") ;;
    chromium) cmd=(node "$HERE/node/chromium-client.js" "$URL") ;;
    *) echo "clients: unknown client $c (python, node, chromium, each also -tls; openssl-keyupdate)" >&2; exit 2 ;;
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
