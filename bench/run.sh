#!/usr/bin/env bash
# bench/run.sh: build in release mode, then measure every server with wsload, same run, same
# pinning, servers interleaved (A B C A B C ...) over REPS repetitions. Results:
#   docs/bench-results/latest.jsonl   one JSON line per (rep, scenario, server)
#   docs/bench-results/latest.md      medians and min–max (bench/report.py)
#   docs/bench-results/latest.svg     msgs/s and CPU-µs/msg per server and scenario
#
# Environment (all optional):
#   REPS=3                     repetitions
#   QUICK=1                    smoke run: 1 rep, fewer scenarios, 1 s windows
#   SERVERS="tungstenite tungstenite-each fastwebsockets tokio-websockets floor edge-ws"
#                              which servers (tungstenite-each: broadcast scenarios only)
#   SCENARIOS="echo broadcast idle churn"   scenario name prefixes (e.g. "echo-64B-1000c-d8")
#   WARMUP=1s DURATION=5s      per-scenario warm-up and measured window
#   SERVER_CORE=0 CLIENT_CORE=1   cores for taskset
#   PROFILE=release            target/<PROFILE> binaries; BUILD=0 skips cargo build
#   JOBS=2                     cargo -j
#   OUT=docs/bench-results/latest.jsonl
#   EDGE_WS_ENABLED=1          0 leaves edge-ws out
#   THP=off                    idle scenarios run the server with transparent huge pages off
#                              (bench/src/bin/nothp.rs); THP=on keeps the system's setting
#   SERVERS="edge-ws edge-ws-history": the second runs bench/edge-ws-history.toml (memory
#                              history on every channel) for a same-run history-cost row
#   ROTATE=1                   rotate the servers' order by one each repetition (0: as listed)
#   EDGE_WS_BASE_BIN=path      with "edge-ws-base" in SERVERS: a second edge-ws binary (say, an
#                              earlier commit built in a git worktree) for a same-run A/B
#
# Every loop is bounded (scenario list × servers × REPS; each wsload has a hard deadline and an
# outer `timeout`); servers are killed on exit (trap). Traffic stays on 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    REPS=${REPS:-1}
    WARMUP=${WARMUP:-0.5s}
    DURATION=${DURATION:-1s}
else
    REPS=${REPS:-3}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-5s}
fi
SERVERS=${SERVERS:-"tungstenite tungstenite-each fastwebsockets tokio-websockets floor edge-ws"}
SCENARIOS=${SCENARIOS:-""}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
PROFILE=${PROFILE:-release}
BUILD=${BUILD:-1}
JOBS=${JOBS:-2}
OUT=${OUT:-docs/bench-results/latest.jsonl}
OUT_DIR=$(dirname "$OUT")
PORT_BASE=${PORT_BASE:-19400}
SERVER_LOG=${SERVER_LOG:-target/bench-server.log}
EDGE_WS_ENABLED=${EDGE_WS_ENABLED:-1}
BIN=target/$PROFILE

log() { printf '%s\n' "$*" >&2; }

# ---- scenarios: "name|wsload arguments" ------------------------------------------------------
# The floor (raw TCP) runs echo, idle and churn with --raw; broadcast needs WebSocket framing.
FULL_SCENARIOS=(
    "echo-64B-100c-d1|echo --size 64 --conns 100 --depth 1"
    "echo-64B-100c-d8|echo --size 64 --conns 100 --depth 8"
    "echo-64B-1000c-d1|echo --size 64 --conns 1000 --depth 1"
    "echo-64B-1000c-d8|echo --size 64 --conns 1000 --depth 8"
    "echo-4KiB-100c-d1|echo --size 4096 --conns 100 --depth 1"
    "echo-4KiB-100c-d8|echo --size 4096 --conns 100 --depth 8"
    "echo-4KiB-1000c-d1|echo --size 4096 --conns 1000 --depth 1"
    "echo-4KiB-1000c-d8|echo --size 4096 --conns 1000 --depth 8"
    "broadcast-64B-1000s-d8|broadcast --size 64 --conns 1000 --depth 8"
    "broadcast-1KiB-1000s-d8|broadcast --size 1024 --conns 1000 --depth 8"
    "broadcast-64B-10000s-d8|broadcast --size 64 --conns 10000 --depth 8"
    "broadcast-1KiB-10000s-d8|broadcast --size 1024 --conns 10000 --depth 8"
    "broadcast-64B-1000s-d512|broadcast --size 64 --conns 1000 --depth 512"
    "broadcast-1KiB-1000s-d512|broadcast --size 1024 --conns 1000 --depth 512"
    "broadcast-64B-10000s-d512|broadcast --size 64 --conns 10000 --depth 512"
    "idle-5000c|idle --size 16 --conns 5000"
    "idle-10000c|idle --size 16 --conns 10000"
    "idle-15000c|idle --size 16 --conns 15000"
    "idle-19000c|idle --size 16 --conns 19000"
    "churn-16t|churn --size 64 --threads 16"
)
QUICK_SCENARIOS=(
    "echo-64B-1000c-d8|echo --size 64 --conns 1000 --depth 8"
    "echo-4KiB-100c-d1|echo --size 4096 --conns 100 --depth 1"
    "broadcast-64B-1000s-d8|broadcast --size 64 --conns 1000 --depth 8"
    "broadcast-64B-1000s-d512|broadcast --size 64 --conns 1000 --depth 512"
    "broadcast-1KiB-10000s-d8|broadcast --size 1024 --conns 10000 --depth 8"
    "idle-10000c|idle --size 16 --conns 10000"
    "churn-16t|churn --size 64 --threads 16"
)
if [[ $QUICK == 1 ]]; then
    ALL=("${QUICK_SCENARIOS[@]}")
else
    ALL=("${FULL_SCENARIOS[@]}")
fi
SELECTED=()
for s in "${ALL[@]}"; do
    name=${s%%|*}
    if [[ -z $SCENARIOS ]]; then
        SELECTED+=("$s")
        continue
    fi
    for pat in $SCENARIOS; do
        if [[ $name == "$pat"* ]]; then
            SELECTED+=("$s")
            break
        fi
    done
done
if [[ ${#SELECTED[@]} -eq 0 ]]; then
    log "no scenario matches SCENARIOS=\"$SCENARIOS\""
    exit 2
fi

# ---- servers ---------------------------------------------------------------------------------

# ---- edge-ws slot (the engine lead fills this in) --------------------------------------------
# Print the command line that starts edge-ws on 127.0.0.1:$1 with ONE worker core (taskset pins
# the process to SERVER_CORE), serving the bench contract: /sub and /pub broadcast relay, echo
# on every other path (bench/README.md). Return 1 to skip edge-ws.
edge_ws_cmd() {
    local port=$1
    [[ $EDGE_WS_ENABLED == 1 ]] || return 1
    [[ -x $BIN/edge-ws ]] || return 1
    # One core (the one taskset gives us), pinned; heartbeats off so they cost nothing here.
    echo "$BIN/edge-ws --config bench/edge-ws.toml --addr 127.0.0.1:$port --cores 1"
}

# server_cmd NAME PORT: prints the command line, or returns 1 if the server is unavailable.
server_cmd() {
    local name=$1 port=$2
    case $name in
        tungstenite) echo "$BIN/peer-tungstenite --addr 127.0.0.1:$port" ;;
        # The same server with subscribers that send().await each message (no batching).
        tungstenite-each) echo "$BIN/peer-tungstenite --addr 127.0.0.1:$port --send-each" ;;
        fastwebsockets) echo "$BIN/peer-fastwebsockets --addr 127.0.0.1:$port" ;;
        tokio-websockets) echo "$BIN/peer-tokio-websockets --addr 127.0.0.1:$port" ;;
        floor) echo "$BIN/tcp-echo-floor --addr 127.0.0.1:$port" ;;
        edge-ws) edge_ws_cmd "$port" ;;
        # The same binary with memory history on for every channel (bench/edge-ws-history.toml).
        edge-ws-history)
            [[ $EDGE_WS_ENABLED == 1 && -x $BIN/edge-ws ]] || return 1
            echo "$BIN/edge-ws --config bench/edge-ws-history.toml --addr 127.0.0.1:$port --cores 1"
            ;;
        # A/B: another edge-ws binary (e.g. an earlier commit built in a worktree), same config.
        edge-ws-base)
            [[ -n ${EDGE_WS_BASE_BIN:-} && -x ${EDGE_WS_BASE_BIN:-} ]] || return 1
            echo "$EDGE_WS_BASE_BIN --config bench/edge-ws.toml --addr 127.0.0.1:$port --cores 1"
            ;;
        *) return 1 ;;
    esac
}

# ---- build -------------------------------------------------------------------------------------
if [[ $BUILD == 1 ]]; then
    flag=()
    [[ $PROFILE == release ]] && flag=(--release)
    [[ $PROFILE != release && $PROFILE != debug ]] && flag=(--profile "$PROFILE")
    log "building edge-ws-bench ($PROFILE)"
    cargo build "${flag[@]}" -p edge-ws-bench -j"$JOBS"
    if [[ " $SERVERS " == *" edge-ws"* && $EDGE_WS_ENABLED == 1 ]]; then
        log "building edge-ws ($PROFILE)"
        cargo build "${flag[@]}" -p edge-ws -p edge-ws-server --bins --examples -j"$JOBS" ||
            log "edge-ws did not build: it will be skipped"
    fi
fi
WSLOAD=$BIN/wsload
[[ -x $WSLOAD ]] || { log "missing $WSLOAD (build first)"; exit 2; }

# ---- run ---------------------------------------------------------------------------------------
SERVER_PID=""
cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || return 1
        if command -v ss >/dev/null 2>&1; then
            [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]] && return 0
        elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

secs() { # "5s" / "500ms" / "1.5" -> whole seconds, rounded up
    local v=$1
    case $v in
        *ms) echo $(( (${v%ms} + 999) / 1000 )) ;;
        *s) v=${v%s}; echo $(( ${v%.*} + 1 )) ;;
        *) echo $(( ${v%.*} + 1 )) ;;
    esac
}

mkdir -p "$OUT_DIR" "$(dirname "$SERVER_LOG")"
: >"$OUT"
: >"$SERVER_LOG"
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)"
    echo "kernel=$(uname -r)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "cores=$(nproc)"
    echo "server_core=$SERVER_CORE"
    echo "client_core=$CLIENT_CORE"
    echo "reps=$REPS"
    echo "rotate=${ROTATE:-1}"
    echo "warmup=$WARMUP"
    echo "duration=$DURATION"
    echo "profile=$PROFILE"
    echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"${OUT%.jsonl}.env"

WALL_LIMIT=$(( $(secs "$WARMUP") + $(secs "$DURATION") + 150 ))
failures=0
runs=0
skipped=""
port=$PORT_BASE
read -r -a SERVER_LIST <<<"$SERVERS"
for rep in $(seq 1 "$REPS"); do
    # The servers' order rotates by one each repetition (A B C, B C A, C A B, ...), so that no
    # server always runs first after a pause or right after a given other: a fixed order was
    # seen to favour one position by a few per cent (docs/BENCHMARKS.md, session 10).
    # ROTATE=0 keeps the listed order.
    order=()
    n_servers=${#SERVER_LIST[@]}
    for k in $(seq 0 $(( n_servers - 1 ))); do
        if [[ ${ROTATE:-1} == 1 ]]; then
            order+=("${SERVER_LIST[$(( (k + rep - 1) % n_servers ))]}")
        else
            order+=("${SERVER_LIST[$k]}")
        fi
    done
    for scen in "${SELECTED[@]}"; do
        name=${scen%%|*}
        args=${scen#*|}
        mode=${args%% *}
        for server in "${order[@]}"; do
            extra=()
            if [[ $server == floor ]]; then
                [[ $mode == broadcast ]] && continue
                extra=(--raw)
            fi
            # Its only difference from tungstenite is the subscriber loop.
            [[ $server == tungstenite-each && $mode != broadcast ]] && continue
            port=$(( port + 1 ))
            (( port > PORT_BASE + 50 )) && port=$(( PORT_BASE + 1 ))
            if ! cmd=$(server_cmd "$server" "$port"); then
                [[ " $skipped " == *" $server "* ]] || skipped="$skipped $server"
                continue
            fi
            # Idle memory is measured with transparent huge pages off for the server (nothp):
            # with them, RSS grows in 2 MiB steps and "bytes per connection" depends on where
            # the steps fall. THP=on keeps them (the system's setting) for comparison.
            if [[ $mode == idle && ${THP:-off} == off ]]; then
                cmd="$BIN/nothp $cmd"
            fi
            # shellcheck disable=SC2086
            taskset -c "$SERVER_CORE" $cmd >>"$SERVER_LOG" 2>&1 &
            SERVER_PID=$!
            if ! wait_port "$port" "$SERVER_PID"; then
                log "[$server $name] server did not start (see $SERVER_LOG)"
                printf '{"mode":"%s","label":"%s","scenario":"%s","rep":%d,"error":"server did not start","errors":1}\n' \
                    "$mode" "$server" "$name" "$rep" >>"$OUT"
                failures=$(( failures + 1 ))
                cleanup
                continue
            fi
            runs=$(( runs + 1 ))
            # shellcheck disable=SC2086
            if ! timeout -k 5 "$WALL_LIMIT" taskset -c "$CLIENT_CORE" "$WSLOAD" $args "${extra[@]}" \
                --addr "127.0.0.1:$port" --client-cores "$CLIENT_CORE" --server-pid "$SERVER_PID" \
                --label "$server" --scenario "$name" --rep "$rep" \
                --warmup "$WARMUP" --duration "$DURATION" >>"$OUT"; then
                failures=$(( failures + 1 ))
            fi
            if ! kill -0 "$SERVER_PID" 2>/dev/null; then
                log "[$server $name] server died during the run"
                failures=$(( failures + 1 ))
            fi
            cleanup
            sleep 0.2
        done
    done
done

[[ -n $skipped ]] && log "skipped (not available):$skipped"
log "$runs runs, $failures failed; results in $OUT"
if command -v python3 >/dev/null 2>&1; then
    python3 "$ROOT/bench/report.py" "$OUT" || log "report.py failed"
else
    log "python3 not found: no table or plot"
fi
[[ $failures -eq 0 ]]
