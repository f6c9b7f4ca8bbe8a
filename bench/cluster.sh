#!/usr/bin/env bash
# The cluster fan-out benchmark (issue 19): 1 publisher -> SUBS subscribers, one channel,
# in the same run and with the same client (cluster-fanout):
#
#   edge-ws single        one edge-ws process, every subscriber on it
#   edge-ws cluster       3 edge-ws processes ([cluster] -> one redis-server), subscribers
#                         spread evenly, the publisher on the first
#   socketio cluster      3 Node processes, Socket.IO 4 + @socket.io/redis-adapter, the same
#   ... @RATE/s           the same three at a fixed rate that Socket.IO sustains here
#   edge-ws single hist / edge-ws cluster hist   the same with a channel keeping history
#
# Every server process and redis-server run on SERVER_CORE, the client on CLIENT_CORE; rows
# are interleaved within each repetition (single, cluster, socketio, ...). Results: JSON
# lines in $OUT and the markdown tables on stdout (and in ${OUT%.jsonl}.md).
#
#   bench/cluster.sh                     # 3 reps, 3,000 subscribers (~3 min on 2 cores)
#   SMOKE=1 bench/cluster.sh             # 30 subscribers, 1 rep, short windows (~30 s)
#   REPS=5 HISTORY=0 SOCKETIO=0 bench/cluster.sh
#   BEFORE_BIN=../other/target/release bench/cluster.sh   # + "... before" rows: that build's
#                                        edge-ws as the cluster, in the same repetitions
#
# The publisher sends rounds of INFLIGHT messages (one write; the next round once every
# subscriber has the whole round), or with ROUNDS=0 a sliding window of INFLIGHT messages;
# the "@RATE/s" rows offer the same fixed load to all (one message every 1/RATE s).
#
# Knobs: REPS (3), SUBS (3000), NODES (3), SIZE (64), INFLIGHT (32), ROUNDS (1), RATE (20
# messages/s for the fixed-rate rows; 0: none), WARMUP (1s),
# DURATION (3s), HISTORY (1), SOCKETIO (1; 0 or no node/npm: skipped), SERVER_CORE (0),
# CLIENT_CORE (1), BUILD (1), JOBS (1), OUT (target/cluster-bench/latest.jsonl), BEFORE_BIN
# (none: a directory with another build's edge-ws, e.g. the main branch's, for an A/B).
# Needs redis-server and redis-cli, curl, python3; node and npm for the Socket.IO rows.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
    REPS=${REPS:-1}
    SUBS=${SUBS:-30}
    WARMUP=${WARMUP:-200ms}
    DURATION=${DURATION:-500ms}
else
    REPS=${REPS:-3}
    SUBS=${SUBS:-3000}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-3s}
fi
NODES=${NODES:-3}
SIZE=${SIZE:-64}
INFLIGHT=${INFLIGHT:-32}
RATE=${RATE:-20}
ROUNDS=${ROUNDS:-1}
HISTORY=${HISTORY:-1}
SOCKETIO=${SOCKETIO:-1}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
BUILD=${BUILD:-1}
JOBS=${JOBS:-1}
OUT=${OUT:-$ROOT/target/cluster-bench/latest.jsonl}
BIN=${BIN:-$ROOT/target/release}
BEFORE_BIN=${BEFORE_BIN:-}
SIO_DIR=$ROOT/bench/cluster/socketio
REPORT=$ROOT/bench/cluster/report.py

log() { echo "[cluster.sh] $*" >&2; }
die() {
    log "$*"
    exit 1
}

for tool in redis-server redis-cli curl python3 taskset; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
if [[ $SOCKETIO == 1 ]] && ! { command -v node >/dev/null && command -v npm >/dev/null; }; then
    log "node/npm not found: the Socket.IO rows are skipped"
    SOCKETIO=0
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/edge-ws-cluster-bench.XXXXXX")
PIDS=()
REDIS_PID=

# Stops the processes of one row (SIGTERM, then SIGKILL after a bounded wait).
stop_pids() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local rc=${1:-$?}
    trap - EXIT INT TERM
    ((${#PIDS[@]})) && stop_pids "${PIDS[@]}"
    [[ -n $REDIS_PID ]] && stop_pids "$REDIS_PID"
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'cleanup 130' INT TERM

# A free loopback TCP port (the kernel's choice).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# waits (bounded) until COMMAND succeeds; returns 1 after ~10 s or if PID died.
wait_for() {
    local pid=$1
    shift
    for _ in $(seq 200); do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# ---- build and install -------------------------------------------------------------------------
if [[ $BUILD == 1 ]]; then
    log "building edge-ws (feature cluster) and cluster-fanout (release, -j$JOBS)"
    cargo build --release -j"$JOBS" -p edge-ws-server --features cluster --bin edge-ws
    cargo build --release -j"$JOBS" -p edge-ws-bench --bin cluster-fanout
fi
[[ -x $BIN/edge-ws && -x $BIN/cluster-fanout ]] || die "no $BIN/edge-ws or $BIN/cluster-fanout (BUILD=1?)"
[[ -z $BEFORE_BIN || -x $BEFORE_BIN/edge-ws ]] || die "no $BEFORE_BIN/edge-ws"
if [[ $SOCKETIO == 1 && ! -d $SIO_DIR/node_modules/@socket.io/redis-adapter ]]; then
    log "installing the Socket.IO packages (npm ci in bench/cluster/socketio)"
    (cd "$SIO_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi

# ---- redis-server ------------------------------------------------------------------------------
REDIS_PORT=$(free_port)
taskset -c "$SERVER_CORE" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --protected-mode yes --loglevel warning --logfile "$TMP/redis.log" &
REDIS_PID=$!
wait_for "$REDIS_PID" redis-cli -p "$REDIS_PORT" ping || die "redis-server did not start ($TMP/redis.log)"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

{ cat "$ROOT/bench/cluster/edge-ws.toml"; printf '\n[cluster]\nredis_url = "%s"\n' "$REDIS_URL"; } >"$TMP/cluster.toml"

# ---- one row -----------------------------------------------------------------------------------
# run_row LABEL KIND(single|cluster|socketio) CHANNEL REP [RATE] [EDGE_WS_DIR]
run_row() {
    local label=$1 kind=$2 channel=$3 rep=$4 rate=${5:-0} edge=${6:-$BIN}
    local n=1 proto=edge-ws ports=() pids=() pidargs=() i port pid
    [[ $kind != single ]] && n=$NODES
    [[ $kind == socketio ]] && proto=socketio
    for ((i = 0; i < n; i++)); do
        port=$(free_port)
        case $kind in
            single)
                taskset -c "$SERVER_CORE" "$edge/edge-ws" --config "$ROOT/bench/cluster/edge-ws.toml" \
                    --addr "127.0.0.1:$port" --cores 1 --data-dir "$TMP/data-$i" --api-addr off \
                    --stats-interval 0 2>>"$TMP/server-$i.log" &
                ;;
            cluster)
                taskset -c "$SERVER_CORE" "$edge/edge-ws" --config "$TMP/cluster.toml" \
                    --addr "127.0.0.1:$port" --cores 1 --data-dir "$TMP/data-$i" --api-addr off \
                    --stats-interval 0 2>>"$TMP/server-$i.log" &
                ;;
            socketio)
                taskset -c "$SERVER_CORE" node "$SIO_DIR/server.js" --port "$port" \
                    --redis "$REDIS_URL" >>"$TMP/server-$i.log" 2>&1 &
                ;;
        esac
        pid=$!
        PIDS+=("$pid")
        pids+=("$pid")
        ports+=("$port")
        pidargs+=(--pid "node$i=$pid")
    done
    for ((i = 0; i < n; i++)); do
        if [[ $kind == socketio ]]; then
            wait_for "${pids[$i]}" grep -q "ready ${ports[$i]}" "$TMP/server-$i.log" ||
                die "$label: node $i did not start: $(tail -5 "$TMP/server-$i.log")"
        else
            wait_for "${pids[$i]}" curl -sf "http://127.0.0.1:${ports[$i]}/health" ||
                die "$label: edge-ws $i did not start: $(tail -5 "$TMP/server-$i.log")"
        fi
    done
    [[ $kind != single ]] && pidargs+=(--pid "redis=$REDIS_PID")
    rcli flushall >/dev/null
    rcli config resetstat >/dev/null
    local nodes
    nodes=$(printf '127.0.0.1:%s,' "${ports[@]}")
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    log "rep $rep: $label ($n process(es), load $load)"
    local line rc=0 mode=()
    # Rounds for the as-fast-as-possible rows; a fixed rate sends one message at a time.
    [[ $ROUNDS == 1 && $rate == 0 ]] && mode=(--rounds)
    line=$(taskset -c "$CLIENT_CORE" "$BIN/cluster-fanout" --proto "$proto" --nodes "${nodes%,}" \
        --subs "$SUBS" --channel "$channel" --size "$SIZE" --inflight "$INFLIGHT" \
        "${mode[@]}" --rate "$rate" --warmup "$WARMUP" --duration "$DURATION" --label "$label" --client-core "$CLIENT_CORE" \
        "${pidargs[@]}") || rc=$?
    if [[ -z $line ]]; then
        log "$label: no result (exit $rc)"
        line="{\"label\":\"$label\",\"ok\":false,\"published\":0,\"deliveries_per_s\":0,\"cpu_us_per_delivery\":0,\"deliveries_per_cpu_s\":0}"
    fi
    local extra=(rep="$rep" load="\"$load\"")
    [[ $kind != single ]] &&
        extra+=(redis="$(rcli info all | tr -d '\r' | python3 "$REPORT" redis-stats)")
    if [[ $kind != socketio ]]; then
        # The engine's counters: edge_ws_broker_* and deliveries / delivery_runs.
        local m="["
        for ((i = 0; i < n; i++)); do
            m+=$(curl -sf "http://127.0.0.1:${ports[$i]}/metrics" | python3 "$REPORT" metrics || echo '{}')
            ((i < n - 1)) && m+=","
        done
        extra+=(node_metrics="$m]")
    fi
    echo "$line" | python3 "$REPORT" merge "${extra[@]}" | tee -a "$OUT"
    stop_pids "${pids[@]}"
    local keep=()
    for pid in "${PIDS[@]}"; do
        [[ " ${pids[*]} " == *" $pid "* ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
    [[ $rc == 0 ]] || FAILED=$((FAILED + 1))
}

# ---- the run -----------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
: >"$OUT"
FAILED=0
log "$(nproc) cores, $(uname -r), $(uptime)"
for ((rep = 1; rep <= REPS; rep++)); do
    # As fast as the in-flight window allows.
    run_row "edge-ws single" single bench "$rep"
    run_row "edge-ws cluster" cluster bench "$rep"
    [[ -n $BEFORE_BIN ]] && run_row "edge-ws cluster before" cluster bench "$rep" 0 "$BEFORE_BIN"
    [[ $SOCKETIO == 1 ]] && run_row "socketio cluster" socketio bench "$rep"
    # The same offered load for all: RATE messages/s (one Socket.IO sustains here).
    if [[ $RATE != 0 ]]; then
        run_row "edge-ws single @$RATE/s" single bench "$rep" "$RATE"
        run_row "edge-ws cluster @$RATE/s" cluster bench "$rep" "$RATE"
        [[ $SOCKETIO == 1 ]] && run_row "socketio cluster @$RATE/s" socketio bench "$rep" "$RATE"
    fi
    if [[ $HISTORY == 1 ]]; then
        run_row "edge-ws single hist" single hist:bench "$rep"
        run_row "edge-ws cluster hist" cluster hist:bench "$rep"
        [[ -n $BEFORE_BIN ]] && run_row "edge-ws cluster hist before" cluster hist:bench "$rep" 0 "$BEFORE_BIN"
    fi
done
log "done: $(uptime)"
python3 "$REPORT" table "$OUT" | tee "${OUT%.jsonl}.md"
((FAILED == 0)) || die "$FAILED run(s) failed"
