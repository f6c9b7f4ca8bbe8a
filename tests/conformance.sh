#!/usr/bin/env bash
# Conformance gate for edge-ws (issue 5): the Autobahn|Testsuite cases (tests/autobahn/run.sh)
# and three real clients: Python websockets, Node ws 8, headless Chromium (tests/clients/run.sh).
# Exits non-zero when either fails. Extra arguments go to tests/autobahn/run.sh (e.g. --full).
#
# Needs: cargo, python3, node + npm, Debian's chromium (apt-get install -y chromium).
set -uo pipefail
cd "$(dirname "$0")/.."

t0=$SECONDS
passed=0
failed=0
echo "=== conformance: Autobahn"
if bash tests/autobahn/run.sh "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
t1=$SECONDS
echo "=== conformance: real clients"
if bash tests/clients/run.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
echo "=== conformance: autobahn $((t1 - t0))s, clients $((SECONDS - t1))s, total $((SECONDS - t0))s"
echo "conformance: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
