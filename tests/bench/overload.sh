#!/usr/bin/env bash
# Goodput under overload: long prompts arriving faster than the machine can
# serve them. Measures what the machine sustains (closed loop), then offers
# 1x, 2x and 4x that rate open loop (one request every 1/rate seconds,
# whatever happened to the ones before) and prints, per level: goodput
# (requests answered in full before the request timeout, per minute), TTFT
# p50/p95 of those, and how the rest ended (503 refused at once, 504 past the
# timeout, other). With BEFORE_BIN, the same levels run against that binary
# too (e.g. one built from the commit before load shedding), side by side.
#
# usage: bash tests/bench/overload.sh [BEFORE_BIN]
# env:   PROMPT_TOKENS (1800)  MAX_TOKENS (300)  TIMEOUT_SECS (60)  SECONDS_PER_LEVEL (60)
# Needs only python3. The response cache is off: every request is computed.
set -euo pipefail
cd "$(dirname "$0")/../.."
before_bin=${1:-}
prompt_tokens=${PROMPT_TOKENS:-1800}
max_tokens=${MAX_TOKENS:-300}
timeout=${TIMEOUT_SECS:-60}
seconds=${SECONDS_PER_LEVEL:-60}
port=18090

cargo build --release -p kiln-cli --quiet
after_bin=./target/release/kiln
$after_bin pull >/dev/null 2>&1

serve() { # BIN -> starts it on $port, waits until ready
  "$1" serve --insecure-no-auth --cache-mib 0 --port $port --request-timeout-secs "$timeout" \
    >"/tmp/kiln-overload-$2.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 240); do
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return 0
    sleep 0.5
  done
  echo "server did not become ready; see /tmp/kiln-overload-$2.log" >&2
  return 1
}
trap 'kill $server_pid 2>/dev/null || true' EXIT

run_levels() { # NAME -> one JSON line per level on stdout
  python3 - "$port" "$prompt_tokens" "$max_tokens" "$timeout" "$seconds" "$1" "${rate:-0}" <<'PY'
import http.client, json, statistics, sys, threading, time

port, prompt_tokens, max_tokens, timeout, seconds, name, rate = sys.argv[1:]
prompt_tokens, max_tokens, timeout, seconds, rate = int(prompt_tokens), int(max_tokens), int(timeout), int(seconds), float(rate)
# ~1 token per word of this text in SmolLM2's vocabulary, checked with /v1/tokenize below.
words = ("the quick brown fox jumps over a lazy dog while seven tall owls watch from an old oak tree " * 400).split()

def tokens(text):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/v1/tokenize", json.dumps({"prompt": text}), {"Content-Type": "application/json"})
    return json.loads(c.getresponse().read())["count"]

c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
c.request("GET", "/v1/models")
model = json.loads(c.getresponse().read())["data"][0]["id"]

n = prompt_tokens
while tokens(" ".join(words[:n])) > prompt_tokens:
    n -= 25

def one(i, out):
    # A distinct first word per request: no prompt prefix is shared, nothing reused.
    body = {"model": model, "prompt": f"{i} " + " ".join(words[:n]), "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "stream": True}
    start = time.monotonic()
    ttft, status = None, None
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout + 30)
        c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        status = r.status
        if status == 200:
            for line in r:
                if line.startswith(b"data: ") and ttft is None and b'"text"' in line:
                    ttft = time.monotonic() - start
                if line.startswith(b"data: ") and b'"error"' in line:
                    err = json.loads(line[6:])["error"]
                    status = {"timeout": 504, "overloaded": 503}.get(err.get("code"), 500)
                if line.startswith(b"data: [DONE]"):
                    break
        else:
            r.read()
    except Exception:
        status = "error"
    out.append({"status": status, "ttft": ttft, "elapsed": time.monotonic() - start})

def closed_loop(concurrency, count):
    out, threads = [], []
    start = time.monotonic()
    for w in range(concurrency):
        def worker(w=w):
            for k in range(w, count, concurrency):
                one(10_000 + k, out)
        threads.append(threading.Thread(target=worker)); threads[-1].start()
    for t in threads: t.join()
    return out, time.monotonic() - start

def open_loop(rate, seconds, base):
    out, threads = [], []
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < seconds:
        t = threading.Thread(target=one, args=(base + k, out)); t.start(); threads.append(t)
        k += 1
        time.sleep(max(0.0, start + k / rate - time.monotonic()))
    for t in threads: t.join()
    return out

def pct(values, p):
    if not values: return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2)

if rate == 0:
    # What the machine sustains: 16 requests, 4 at a time, all of them completing.
    out, elapsed = closed_loop(4, 16)
    done = sum(1 for r in out if r["status"] == 200)
    print(json.dumps({"sustained_per_sec": done / elapsed, "ok": done, "of": len(out)}))
    sys.exit()
for mult in (1, 2, 4):
    out = open_loop(rate * mult, seconds, 100_000 * mult)
    ok = [r for r in out if r["status"] == 200 and r["elapsed"] <= timeout]
    ended = {}
    for r in out:
        ended[str(r["status"])] = ended.get(str(r["status"]), 0) + 1
    print(json.dumps({"server": name, "load": f"{mult}x", "offered": len(out),
                      "goodput_per_min": round(len(ok) * 60 / seconds, 1),
                      "ttft_p50": pct([r["ttft"] for r in ok], 50), "ttft_p95": pct([r["ttft"] for r in ok], 95),
                      "ended": ended}), flush=True)
PY
}

results=$(mktemp)
serve "$after_bin" after
rate_line=$(rate=0 run_levels calibrate)
rate=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['sustained_per_sec'])" "$rate_line")
echo "# prompt ~$prompt_tokens tokens, $max_tokens out, timeout ${timeout}s, ${seconds}s per level, $(nproc) cores"
echo "# sustained (closed loop, 4 at a time): $rate_line"
rate=$rate run_levels after | tee -a "$results"
kill $server_pid; wait $server_pid 2>/dev/null || true
if [ -n "$before_bin" ]; then
  serve "$before_bin" before
  rate=$rate run_levels before | tee -a "$results"
  kill $server_pid; wait $server_pid 2>/dev/null || true
fi

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\n{'server':>6} {'load':>4} {'offered':>7} {'goodput/min':>11} {'TTFT p50':>8} {'p95':>6}  ended (status: count)")
for r in rows:
    print(f"{r['server']:>6} {r['load']:>4} {r['offered']:>7} {r['goodput_per_min']:>11} "
          f"{str(r['ttft_p50']):>8} {str(r['ttft_p95']):>6}  {r['ended']}")
PY
