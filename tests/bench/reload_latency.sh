#!/usr/bin/env bash
# Hot-reload latency: how long a replaced plugin file takes to become the
# version that serves (the file landed, then seen in `GET /v1/plugins`:
# settling, compiling with an empty compile cache, a smoke call), under load.
# Runs the hot-reload test (tests/integration/reload.rs) with
# KILN_BENCH_RELOAD=VERSIONS: the same checks, with VERSIONS new versions of
# the tagger plugin instead of 5, written while 4 clients keep generating.
# Prints each delay and their p50, p90 and max. The goal is a p50 of 250 ms
# or less; nothing fails on time (only on a failed check of the test).
#
# usage: bash tests/bench/reload_latency.sh [VERSIONS]
#   VERSIONS: default 30, from 3 to 997
# Needs: the default model (fetched on first use, as the tests do).
set -euo pipefail
cd "$(dirname "$0")/../.."
versions=${1:-30}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "# versions=$versions threads=$(nproc)"
set +e
KILN_BENCH_RELOAD=$versions cargo test --release -p kiln-cli --test integration --quiet \
  reload::plugin_files_replaced_under_load -- --nocapture >"$log" 2>&1
status=$?
set -e
grep -E '^[0-9]+ answers; |^reload visibility ' "$log" || true
if [ "$status" != 0 ]; then
  cat "$log" >&2
  exit "$status"
fi
