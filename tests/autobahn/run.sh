#!/usr/bin/env bash
# Autobahn conformance gate for edge-ws: starts the echo server with permessage-deflate on
# (tests/autobahn/server.toml), runs the Autobahn|Testsuite cases against it with kosoku
# (Autobahn's own case files on Python 3), and gates on the report with gate.py.
#
#   tests/autobahn/run.sh            all 517 cases (what CI runs; about 5.5 minutes on 2 cores)
#   tests/autobahn/run.sh --update   ... and rewrite expected-results.json from the run
#   tests/autobahn/run.sh --quick    without the larger 12.x/13.x sizes (361 cases, ~25 s; see QUICK_EXCLUDE)
#   tests/autobahn/run.sh -i '7.*'   only these cases (kosoku globs, repeatable; also -x)
#   tests/autobahn/run.sh --tls      the same cases over wss://: kosoku -> tls_relay.py (TLS 1.3)
#                                    -> edge-ws's TLS listener; --tls12 for TLS 1.2. Same gate.
#
# Environment: EDGE_WS_BIN (use this binary instead of building target/release/edge-ws),
# JOBS (cargo -j, default 2), PARALLELISM (kosoku -p, default 2), REPORT_DIR (default
# tests/autobahn/reports). Needs python3 (venv, pip: kosoku==0.1.0).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

JOBS="${JOBS:-2}"
PARALLELISM="${PARALLELISM:-2}"
REPORT_DIR="${REPORT_DIR:-$HERE/reports}"
VENV="$HERE/.venv"
KOSOKU_VERSION="0.1.0"

# --quick leaves out the larger message sizes of the permessage-deflate cases: 12.X.Y / 13.X.Y
# with Y >= 6 send 1000 messages of 8-128 KiB each (some auto-fragmented into 256-byte frames).
# Y 1-5 (16 B to 4 KiB, 1000 messages each) still covers every offer/parameter combination.
QUICK_EXCLUDE=()
for x in 1 2 3 4 5; do
  for y in $(seq 6 18); do QUICK_EXCLUDE+=("12.$x.$y"); done
done
for x in 1 2 3 4 5 6 7; do
  for y in $(seq 6 18); do QUICK_EXCLUDE+=("13.$x.$y"); done
done

quick=0
update=0
tls=""
include=()
exclude=()
while [ $# -gt 0 ]; do
  case "$1" in
    --full) ;;  # the default; kept for clarity in scripts
    --quick) quick=1 ;;
    --update) update=1 ;;
    --tls) tls=1.3 ;;
    --tls12) tls=1.2 ;;
    -i|--include) include+=("$2"); shift ;;
    -x|--exclude) exclude+=("$2"); shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$tls" ] && [ "$update" = 1 ]; then
  echo "run.sh: --update only from a plain run (expected-results.json is the plain verdict)" >&2
  exit 2
fi
if [ "$quick" = 1 ]; then
  exclude+=("${QUICK_EXCLUDE[@]}")
fi

t0=$SECONDS
# --- kosoku in a venv -------------------------------------------------------------------------
if [ ! -x "$VENV/bin/kosoku" ] || ! "$VENV/bin/pip" show kosoku 2>/dev/null | grep -qx "Version: $KOSOKU_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "kosoku==$KOSOKU_VERSION"
fi

# --- the server -------------------------------------------------------------------------------
mkdir -p "$REPORT_DIR"
rm -rf "${REPORT_DIR:?}"/*
SERVER_LOG="$REPORT_DIR/edge-ws.log"
# shellcheck source=server.sh
. "$HERE/server.sh"
if [ -n "$tls" ]; then
  # wss://: a [tls] listener with a per-run test CA; kosoku reaches it through tls_relay.py.
  TLSDIR="$(mktemp -d)"
  make_test_pki "$TLSDIR"
  TLS_PORT="$(free_port)"
  tls_server_toml "$TLSDIR" "$TLS_PORT"
fi
start_edge_ws "$SERVER_LOG"
TARGET="$ADDR"
if [ -n "$tls" ]; then
  RELAY_ADDR="127.0.0.1:$(free_port)"
  python3 "$HERE/tls_relay.py" --listen "$RELAY_ADDR" --connect "127.0.0.1:$TLS_PORT" \
    --ca "$TLSDIR/ca.pem" --tls-version "$tls" --stats "$REPORT_DIR/tls-relay.json" \
    >"$REPORT_DIR/tls-relay.log" 2>&1 &
  RELAY_PID=$!
  stop_relay() {
    if kill -0 "$RELAY_PID" 2>/dev/null; then
      kill -TERM "$RELAY_PID" 2>/dev/null || true
      wait "$RELAY_PID" 2>/dev/null || true
    fi
  }
  trap 'stop_relay; stop_edge_ws; rm -rf "$TLSDIR"' EXIT
  for _ in $(seq 50); do
    grep -q '^tls_relay: listening' "$REPORT_DIR/tls-relay.log" 2>/dev/null && break
    kill -0 "$RELAY_PID" 2>/dev/null || { cat "$REPORT_DIR/tls-relay.log" >&2; exit 1; }
    sleep 0.1
  done
  TARGET="$RELAY_ADDR"
fi

# --- the suite --------------------------------------------------------------------------------
args=("$TARGET" -p "$PARALLELISM" -o "$REPORT_DIR")
for g in "${include[@]+"${include[@]}"}"; do args+=(-i "$g"); done
for g in "${exclude[@]+"${exclude[@]}"}"; do args+=(-x "$g"); done
sel="whole suite"
if [ ${#include[@]} -gt 0 ] || [ ${#exclude[@]} -gt 0 ]; then
  sel="include ${include[*]:-*}; exclude ${#exclude[@]} patterns"
fi
via="$ADDR"
[ -n "$tls" ] && via="$RELAY_ADDR, relayed over TLS $tls to 127.0.0.1:$TLS_PORT"
echo "autobahn: kosoku $KOSOKU_VERSION against edge-ws on $via ($sel), reports in $REPORT_DIR"
t1=$SECONDS
# kosoku exits 1 on any non-OK case (INFORMATIONAL and NON-STRICT included): gate on the report.
# kosoku_shim.py is kosoku with one runner bug in the 12.x/13.x cases worked around (see there).
"$VENV/bin/python" "$HERE/kosoku_shim.py" "${args[@]}" >"$REPORT_DIR/kosoku.log" 2>&1 || true
echo "autobahn: suite ran in $((SECONDS - t1))s"
if [ ! -s "$REPORT_DIR/index.json" ]; then
  echo "autobahn: kosoku wrote no index.json:" >&2
  tail -n 30 "$REPORT_DIR/kosoku.log" >&2
  exit 1
fi
if ! server_alive; then
  echo "autobahn: edge-ws died during the suite:" >&2
  tail -n 30 "$SERVER_LOG" >&2
  exit 1
fi

# --- the gate ---------------------------------------------------------------------------------
gate=(python3 "$HERE/gate.py" "$REPORT_DIR")
if [ -n "$tls" ]; then
  # The TLS side of the run: what the relay saw and edge-ws's TLS counters (gate.py checks them).
  python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
    "http://$ADDR/metrics" >"$REPORT_DIR/metrics.txt" 2>/dev/null || true
  stop_relay
  gate+=(--tls "$tls")
fi
for g in "${include[@]+"${include[@]}"}"; do gate+=(-i "$g"); done
for g in "${exclude[@]+"${exclude[@]}"}"; do gate+=(-x "$g"); done
[ "$update" = 1 ] && gate+=(--update)
status=0
"${gate[@]}" || status=$?
echo "autobahn: done in $((SECONDS - t0))s"
exit "$status"
