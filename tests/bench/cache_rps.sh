#!/usr/bin/env bash
# Cache-hit `POST /v1/generate` requests/s: `kiln serve` against the guide's
# FastAPI service (../shared/anchors/seed_app.py under uvicorn, 2 workers),
# same machine, same wrk load (../shared/anchors/post_generate.lua: one
# deterministic prompt, so every request after the first is a cache hit, with
# an API key checked and rate-limited on both sides). Rounds alternate
# between the two; prints each run and the median ratio kiln / FastAPI.
# With redis-server installed, a third column: kiln sharing its limits and
# cache through Redis (`--redis-url`, as replicas run), whose every request
# makes one Lua call for the rate limit; its median ratio to kiln alone is
# what sharing costs.
#
# usage: bash tests/bench/cache_rps.sh [ROUNDS] [SECONDS] [CONNECTIONS]
# Needs: wrk (apt-get install wrk); fastapi and uvicorn (pip install fastapi uvicorn);
# optionally redis-server (apt-get install redis-server)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3} seconds=${2:-10} connections=${3:-32}
anchors=../shared/anchors
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 2; }
python3 -c "import fastapi, uvicorn" 2>/dev/null || { echo "needs: pip install fastapi uvicorn" >&2; exit 2; }

cargo build --release -p kiln-cli --quiet
work=$(mktemp -d)
# The anchor wants keys starting with sk-; kiln takes any configured key.
key="sk-bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
cat >"$work/kiln.toml" <<TOML
[[keys]]
name = "bench"
sha256 = "$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
TOML
kiln_port=18300 seed_port=18301 shared_port=18302 redis_port=18303
./target/release/kiln serve --config "$work/kiln.toml" --port $kiln_port >"$work/kiln.log" 2>&1 &
kiln_pid=$!
(cd "$anchors" && SEED_RPM=1000000000 exec python3 -m uvicorn seed_app:app --port $seed_port --workers 2 \
  --log-level warning) >"$work/seed.log" 2>&1 &
seed_pid=$!
pids="$kiln_pid $seed_pid" ports="$kiln_port $seed_port"
if command -v redis-server >/dev/null; then
  redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
  pids="$pids $!"
  sleep 0.5
  KILN_DATA_DIR="$work/shared" ./target/release/kiln serve --config "$work/kiln.toml" --port $shared_port \
    --redis-url "redis://127.0.0.1:$redis_port/" >"$work/shared.log" 2>&1 &
  pids="$pids $!" ports="$ports $shared_port"
fi
trap 'kill $pids 2>/dev/null || true; rm -rf "$work"' EXIT

body='{"prompt":"Hello, who are you?","max_tokens":16,"temperature":0.0}'
for port in $ports; do
  for _ in $(seq 240); do
    curl -sf -o /dev/null -H "X-API-Key: $key" -H 'Content-Type: application/json' -d "$body" \
      "http://127.0.0.1:$port/v1/generate" && break
    sleep 0.5
  done
done
# The first request above filled each cache; check kiln answers from it.
curl -sf -D - -o /dev/null -H "X-API-Key: $key" -d "$body" "http://127.0.0.1:$kiln_port/v1/generate" \
  | grep -qi '^x-kiln-cache: hit' || { echo "kiln did not answer from its cache" >&2; exit 1; }

rps() {
  KEY=$key wrk -t2 -c"$connections" -d"${seconds}s" -s "$anchors/post_generate.lua" "http://127.0.0.1:$1/v1/generate" \
    | awk '/^Requests\/sec:/ { print $2 } /Non-2xx/ { print "non-2xx: " $0 > "/dev/stderr" }'
}
median() { sort -n | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }'; }
echo "round  fastapi req/s  kiln req/s  ratio  kiln+redis req/s  vs kiln"
ratios=() shared_ratios=()
for round in $(seq "$rounds"); do
  seed=$(rps $seed_port)
  kiln=$(rps $kiln_port)
  ratio=$(awk -v k="$kiln" -v s="$seed" 'BEGIN { printf "%.1f", k / s }')
  ratios+=("$ratio")
  if [[ $ports == *$shared_port* ]]; then
    shared=$(rps $shared_port)
    shared_ratio=$(awk -v r="$shared" -v k="$kiln" 'BEGIN { printf "%.2f", r / k }')
    shared_ratios+=("$shared_ratio")
    printf "%5d  %13.0f  %10.0f  %5sx  %16.0f  %6sx\n" "$round" "$seed" "$kiln" "$ratio" "$shared" "$shared_ratio"
  else
    printf "%5d  %13.0f  %10.0f  %5sx\n" "$round" "$seed" "$kiln" "$ratio"
  fi
done
echo "median ratio kiln / FastAPI: $(printf '%s\n' "${ratios[@]}" | median)x"
if [ ${#shared_ratios[@]} -gt 0 ]; then
  echo "median ratio kiln+redis / kiln: $(printf '%s\n' "${shared_ratios[@]}" | median)x"
fi
