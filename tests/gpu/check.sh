#!/usr/bin/env bash
# The device check for the CUDA engine (issue #16), run on a GPU machine
# from the repository root after tests/gpu/prepare.sh has filled .gpu/ on a
# CPU machine. Prints JSON and leaves each stage's report in $OUT (or
# /tmp/kiln-gpu-check):
#   devices.json   driver, NVRTC, each device; every kernel against its CPU reference
#   smollm2.json   random weights of the default model's exact shape and types
#                  (Q4_1 matrices, Q8_0 embedding): CPU vs CUDA greedy parity for
#                  4 prompts x 64 tokens, first-step logit difference, and the CUDA
#                  model's prefill / decode at 1, 16, 64 sequences / TTFT
#   llama1b.json   the same on a Llama 3.2 1B shape, with the batch-1 bandwidth fraction
#   engine.json    `kiln bench --device cuda` (the engine's scheduler and sampling on
#                  the GPU) beside `--device cpu` on the 16 host cores, 1B shape
#   serve.txt      `kiln serve --device cuda`: /health, /metrics' GPU gauges, one completion
# Exits non-zero at the first failing stage.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/kiln-gpu-check}
mkdir -p "$out"
kiln=.gpu/kiln
[ -x "$kiln" ] || { echo "no $kiln: run tests/gpu/prepare.sh on a CPU machine first" >&2; exit 2; }

# Python packages for the fixture generator, from the carried wheels.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/kiln-site .gpu/wheels/*.whl
export PYTHONPATH=/tmp/kiln-site${PYTHONPATH:+:$PYTHONPATH}

# NVRTC: cudarc opens libnvrtc.so or libnvrtc.so.12; a CUDA 13 toolkit ships
# libnvrtc.so.13, so point an unversioned name at whichever is there.
nvrtc=$(ls /usr/local/cuda/lib64/libnvrtc.so* /usr/local/cuda/targets/x86_64-linux/lib/libnvrtc.so* 2>/dev/null | grep -v builtins | head -1 || true)
if [ -z "$nvrtc" ]; then
  nvrtc=$(python3 -c 'import glob, site; print(next(iter(sorted(p for d in site.getsitepackages() for p in glob.glob(d + "/nvidia/**/libnvrtc.so*", recursive=True) if "builtins" not in p)), ""))')
fi
[ -n "$nvrtc" ] || { echo "no libnvrtc found" >&2; exit 2; }
mkdir -p /tmp/kiln-nvrtc
ln -sf "$nvrtc" /tmp/kiln-nvrtc/libnvrtc.so
export LD_LIBRARY_PATH=/tmp/kiln-nvrtc:$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

stage() { echo "== $1 ($(date +%T))" >&2; }

stage "devices and kernel self-test"
"$kiln" devices --self-test > "$out/devices.json"
cat "$out/devices.json"

stage "fixtures"
python3 tests/fixtures/random_gguf.py /tmp/kiln-smollm2.gguf --shape smollm2-135m --sentencepiece 2000 --pad-vocab --types q4_1
python3 tests/fixtures/random_gguf.py /tmp/kiln-llama1b.gguf --shape llama-1b --sentencepiece 2000 --pad-vocab --types q4_1

for name in smollm2 llama1b; do
  stage "$name: parity and speed"
  "$kiln" devices --parity /tmp/kiln-$name.gguf --bench /tmp/kiln-$name.gguf > "$out/$name.json"
  python3 - "$out/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p, b = r["parity"], r["bench"]
print(json.dumps({
    "model": b["model"],
    "parity_identical": p["identical"],
    "first_divergence": [x["first_divergence"] for x in p["prompts"]],
    "first_step_max_abs_logit_diff": [x["first_step_max_abs_logit_diff"] for x in p["prompts"]],
    "prefill_tok_s": b["prefill_tok_s"], "ttft_ms_128": b["ttft_ms_128"],
    "decode_tok_s": b["decode_tok_s"], "batch1_roofline_fraction": b["batch1_roofline_fraction"],
}, indent=1))
PY
done
stage "engine on the GPU and on the CPU (1B shape)"
{
  echo '{"cuda":'
  "$kiln" bench --model /tmp/kiln-llama1b.gguf --device cuda --runs 1 --json
  echo ',"cpu":'
  "$kiln" bench --model /tmp/kiln-llama1b.gguf --device cpu --runs 1 --json
  echo '}'
} > "$out/engine.json"
cat "$out/engine.json"

stage "serve on the GPU"
port=18431
"$kiln" serve --model /tmp/kiln-smollm2.gguf --device cuda --port $port --insecure-no-auth > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf localhost:$port/ready >/dev/null && break; sleep 0.5; done
{
  curl -sf localhost:$port/health
  echo
  curl -sf localhost:$port/metrics | grep -E '^kiln_(gpu_memory_bytes|kv_blocks)'
  curl -sf localhost:$port/v1/completions -H 'content-type: application/json' \
    -d '{"prompt": "Hello", "max_tokens": 16, "temperature": 0}'
  echo
} | tee "$out/serve.txt"
grep -q '"gpu_available":true' "$out/serve.txt"
stage "done"
