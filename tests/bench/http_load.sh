#!/usr/bin/env bash
# Side-by-side load test: `kiln serve` against llama.cpp's `llama-server` on the
# same GGUF and machine, with the project's anchor load generator
# (../shared/anchors/load_openai.py: streaming chat, temperature 0, ignore_eos).
# For each concurrency, llama-server then kiln run back to back; prints each
# figure and kiln/llama-server ratios.
#
# usage: bash tests/bench/http_load.sh LLAMA_BIN_DIR [CONCURRENCIES] [MAX_TOKENS]
#   LLAMA_BIN_DIR: the `bin` folder printed by ../shared/anchors/build-llama-server.sh
#   CONCURRENCIES: default "1 4 16"; each runs max(8, 4 x c) requests
# Needs: pip install httpx
# kiln runs with its response cache off: this measures the engine, not the cache.
set -euo pipefail
cd "$(dirname "$0")/../.."
llama_bin=${1:?usage: http_load.sh LLAMA_BIN_DIR [CONCURRENCIES] [MAX_TOKENS]}
levels=${2:-"1 4 16"}
max_tokens=${3:-64}
load=../shared/anchors/load_openai.py
threads=$(nproc)

cargo build --release -p kiln-cli --quiet
model=$(./target/release/kiln pull 2>/dev/null | tail -1)
kiln_port=18080 llama_port=18081
./target/release/kiln serve --insecure-no-auth --cache-mib 0 --port $kiln_port >/tmp/kiln-bench-serve.log 2>&1 &
kiln_pid=$!
LD_LIBRARY_PATH="$llama_bin" "$llama_bin/llama-server" -m "$model" -t "$threads" -np 16 -c 32768 \
  --port $llama_port >/tmp/kiln-bench-llama.log 2>&1 &
llama_pid=$!
trap 'kill $kiln_pid $llama_pid 2>/dev/null || true' EXIT

for port in $kiln_port $llama_port; do
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break
    sleep 0.5
  done
done
# One request each to warm up (page cache, thread pools).
for port in $kiln_port $llama_port; do
  python3 $load "http://127.0.0.1:$port/v1" --concurrency 1 --requests 1 --max-tokens 8 >/dev/null
done

echo "# threads=$threads max_tokens=$max_tokens model=$model"
results=$(mktemp)
for c in $levels; do
  n=$((4 * c > 8 ? 4 * c : 8))
  for who in llama kiln; do
    port=$([ $who = kiln ] && echo $kiln_port || echo $llama_port)
    line=$(python3 $load "http://127.0.0.1:$port/v1" --concurrency "$c" --requests "$n" --max-tokens "$max_tokens")
    echo "$who $line" | tee -a "$results"
  done
done

python3 - "$results" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    who, data = line.split(" ", 1)
    d = json.loads(data)
    rows.setdefault(d["concurrency"], {})[who] = d
print(f"\n{'conc':>4} {'tok/s kiln':>11} {'llama':>8} {'ratio':>6} | {'TTFT p50 kiln':>13} {'llama':>7} | {'p95 kiln':>8} {'llama':>7} | failures kiln/llama")
for c, r in sorted(rows.items()):
    k, l = r["kiln"], r["llama"]
    print(f"{c:>4} {k['completion_tps']:>11} {l['completion_tps']:>8} {k['completion_tps'] / l['completion_tps']:>5.2f}x |"
          f" {k['ttft_p50_ms']:>10} ms {l['ttft_p50_ms']:>7} | {k['ttft_p95_ms']:>8} {l['ttft_p95_ms']:>7} |"
          f" {len(k['failures'])}/{len(l['failures'])}")
PY
