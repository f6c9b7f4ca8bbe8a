# Sourced by tests/autobahn/run.sh and tests/clients/run.sh: builds (unless EDGE_WS_BIN is set)
# and starts the edge-ws echo server on a free loopback port with tests/autobahn/server.toml,
# waits for GET /health, and kills it when the sourcing script exits.
#
#   start_edge_ws LOGFILE     sets ADDR (127.0.0.1:PORT) and SERVER_PID
#   server_alive              true while the server runs
#   health                    true when GET /health answers 200
#   make_test_pki DIR         a test CA (DIR/ca.pem) and a localhost certificate signed by it
#                             (DIR/cert.pem, DIR/key.pem), P-256, valid 2 days, made per run
#   tls_server_toml DIR PORT  writes DIR/server.toml: server.toml plus a [tls] listener on
#                             127.0.0.1:PORT with DIR's certificate (sets EDGE_WS_SERVER_TOML)

start_edge_ws() {
  local log="$1" root here bin port
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  root="$(cd "$here/../.." && pwd)"
  if [ -n "${EDGE_WS_BIN:-}" ]; then
    bin="$EDGE_WS_BIN"
  else
    (cd "$root" && cargo build --release -p edge-ws-server --bin edge-ws -j"${JOBS:-2}" -q)
    bin="$root/target/release/edge-ws"
  fi
  port="$(free_port)"
  ADDR="127.0.0.1:$port"
  # The built-in configuration under server.toml; only the HTTP API's port (free) and the data
  # directory (a temporary one) move, so nothing lands in the checkout or collides.
  EDGE_WS_DATA="$(mktemp -d)"
  # EDGE_WS_SERVER_TOML: another configuration (tests/clients/run.sh adds [tls] to this one).
  "$bin" --config "${EDGE_WS_SERVER_TOML:-$here/server.toml}" --addr "$ADDR" --api-addr 127.0.0.1:0 \
    --data-dir "$EDGE_WS_DATA" >"$log" 2>&1 &
  SERVER_PID=$!
  trap stop_edge_ws EXIT
  trap 'exit 130' INT TERM
  local _
  for _ in $(seq 100); do
    health && return 0
    if ! server_alive; then
      echo "edge-ws exited at start:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "edge-ws not ready on $ADDR after 10s" >&2
  return 1
}

health() {
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1).read()' \
    "http://$ADDR/health" >/dev/null 2>&1
}

server_alive() {
  kill -0 "$SERVER_PID" 2>/dev/null
}

stop_edge_ws() {
  if [ -n "${SERVER_PID:-}" ] && server_alive; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local _
    for _ in $(seq 50); do server_alive || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ -n "${EDGE_WS_DATA:-}" ]; then rm -rf "$EDGE_WS_DATA"; fi
}

make_test_pki() {
  local dir="$1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=edge-ws test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$dir/key.pem" -out "$dir/cert.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/ext.cnf" -out "$dir/cert.pem" 2>/dev/null
}

tls_server_toml() {
  local dir="$1" port="$2" here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  cp "$here/server.toml" "$dir/server.toml"
  printf '\n[tls]\naddr = "127.0.0.1:%s"\ncert = "%s"\nkey = "%s"\n' \
    "$port" "$dir/cert.pem" "$dir/key.pem" >>"$dir/server.toml"
  EDGE_WS_SERVER_TOML="$dir/server.toml"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
