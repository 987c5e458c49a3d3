#!/usr/bin/env bash
# Soak: MINUTES (10) of mixed load on one `kiln serve` with the default
# model: streamed chat completions, cache hits, async tasks polled to their
# end, bad requests, and 5 plugin uploads spread over the run (a new version
# of a plugin a pipeline uses, swapped in while streams run). Every minute it
# prints the requests of that minute by status and the server's resident
# memory; at the end, the verdict: resident memory after the first minute
# grew less than 10 %, and no 5xx other than deliberate 503 (overload) and
# 504 (timeout). Exits 1 if either fails.
#
# usage: bash tests/bench/soak.sh [MINUTES] [STREAMS]
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=${1:-10} streams=${2:-3}

cargo build --release -p kiln-cli --quiet
plugin=target/plugins/wasm32-wasip2/release/redact.wasm
[ -f "$plugin" ] || { echo "missing $plugin (built with kiln-cli)" >&2; exit 2; }
work=$(mktemp -d)
mkdir -p "$work/plugins"
cat >"$work/kiln.toml" <<TOML
[plugins]
dir = "$work/plugins"
[pipelines.soak]
post = ["soak-redact"]
TOML
cp "$plugin" "$work/plugins/soak-redact.wasm"
port=18400
KILN_DATA_DIR="$work/data" ./target/release/kiln serve --insecure-no-auth --config "$work/kiln.toml" \
  --port $port >"$work/kiln.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 240); do curl -sf -o /dev/null "http://127.0.0.1:$port/ready" && break; sleep 0.5; done

python3 - "$port" "$pid" "$minutes" "$streams" "$plugin" <<'PY'
import collections, http.client, json, random, sys, threading, time

port, pid, minutes, streams, plugin = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
end = time.time() + minutes * 60
lock = threading.Lock()
counts = collections.Counter()   # (kind, status) this minute
total = collections.Counter()

def call(kind, method, path, body=None, headers=None, read=True):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read() if read else b""
        status = response.status
    except Exception as e:  # a refused or dropped connection is a result too
        status, payload = f"error:{type(e).__name__}", b""
    finally:
        conn.close()
    with lock:
        counts[(kind, status)] += 1
        total[(kind, status)] += 1
    return status, payload

words = "river stone light paper window garden music winter coffee story".split()
def prompt():
    return " ".join(random.choice(words) for _ in range(6))

def stream():
    while time.time() < end:
        body = {"messages": [{"role": "user", "content": "Write about " + prompt()}], "max_tokens": 64,
                "temperature": 0.8, "stream": True, "pipeline": "soak"}
        call("stream", "POST", "/v1/chat/completions", body)

def cached():
    while time.time() < end:
        call("cache", "POST", "/v1/generate", {"prompt": "Hello, who are you?", "max_tokens": 16, "temperature": 0})
        time.sleep(0.05)

def tasks():
    while time.time() < end:
        status, payload = call("task", "POST", "/v1/generate/async", {"prompt": prompt(), "max_tokens": 32})
        if status != 202:
            time.sleep(1)
            continue
        task = json.loads(payload)["task_id"]
        while time.time() < end + 120:
            s, p = call("task-poll", "GET", f"/v1/tasks/{task}")
            if s != 200 or json.loads(p)["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.5)

bad = [("POST", "/v1/generate", b"{not json"), ("POST", "/v1/generate", {"prompt": "x", "temperature": 9}),
       ("POST", "/v1/chat/completions", {"messages": []}), ("GET", "/v1/nowhere", None),
       ("GET", "/v1/tasks?limit=abc", None), ("POST", "/v1/generate", {"prompt": "x", "max_tokens": 10**9})]
def refused():
    while time.time() < end:
        method, path, body = random.choice(bad)
        call("bad", method, path, body)
        time.sleep(0.2)

def swaps():
    wasm = open(plugin, "rb").read()
    for i in range(5):
        time.sleep(minutes * 60 / 6)
        call("swap", "PUT", "/v1/plugins/soak-redact", wasm, {"Content-Type": "application/wasm"})

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

workers = [threading.Thread(target=f, daemon=True) for f in [stream] * streams + [cached, tasks, refused, swaps]]
for w in workers:
    w.start()
rss = []
for minute in range(1, minutes + 1):
    time.sleep(max(0, end - (minutes - minute) * 60 - time.time()))
    with lock:
        seen = dict(counts)
        counts.clear()
    rss.append(rss_mib())
    by_status = collections.Counter()
    for (kind, status), n in seen.items():
        by_status[status] += n
    line = " ".join(f"{s}={n}" for s, n in sorted(by_status.items(), key=str))
    print(f"minute {minute:2}: rss {rss[-1]:7.1f} MiB  requests {sum(seen.values()):5}  {line}", flush=True)
for w in workers:
    w.join(timeout=130)

print("\nby kind and status over the run:")
for (kind, status), n in sorted(total.items(), key=str):
    print(f"  {kind:10} {status}: {n}")
unexpected = {k: n for k, n in total.items() if isinstance(k[1], int) and k[1] >= 500 and k[1] not in (503, 504)}
errors = {k: n for k, n in total.items() if not isinstance(k[1], int)}
growth = (max(rss[1:]) / rss[0] - 1) * 100 if len(rss) > 1 else 0.0
print(f"\nresident memory: {rss[0]:.1f} MiB after minute 1, at most {max(rss):.1f} MiB after; "
      f"growth after the first minute {growth:+.1f} % (limit 10 %)")
print(f"5xx other than 503/504: {sum(unexpected.values())} {unexpected or ''}; connection errors: {sum(errors.values())} {errors or ''}")
ok = growth < 10 and not unexpected and not errors
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
PY
