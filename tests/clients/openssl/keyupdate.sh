#!/usr/bin/env bash
# TLS 1.3 KeyUpdate from a real client: `openssl s_client` sends one KeyUpdate asking for ours
# ("K") and one not asking ("k"), then a request over the updated keys; edge-ws must follow
# both, answer the first with its own KeyUpdate, and serve the request.
#
#   keyupdate.sh HOST:PORT CA_FILE       (the TLS listener; server name localhost)
set -euo pipefail
addr="$1"
ca="$2"
out="$( (sleep 0.5; printf 'K\n'; sleep 0.3; printf 'k\n'; sleep 0.3
         printf 'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'; sleep 1) |
  timeout 20 openssl s_client -connect "$addr" -servername localhost -CAfile "$ca" -tls1_3 \
    -verify_return_error 2>&1 || true)"
pass=0
fail=0
check() {
  if [ "$1" = 1 ]; then echo "  ok    $2"; pass=$((pass + 1)); else echo "  FAIL  $2"; fail=$((fail + 1)); fi
}
check "$(grep -q 'Verify return code: 0 (ok)' <<<"$out" && echo 1)" "certificate verified (TLS 1.3)"
check "$([ "$(grep -c '^KEYUPDATE$' <<<"$out")" = 2 ] && echo 1)" "two KeyUpdates sent (update_requested, then not)"
check "$(grep -q '^HTTP/1.1 200' <<<"$out" && echo 1)" "request after the KeyUpdates answered under the new keys"
echo "openssl-keyupdate: $pass passed, $fail failed"
if [ "$fail" -gt 0 ]; then
  echo "$out" | tail -n 20
  exit 1
fi
