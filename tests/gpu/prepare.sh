#!/usr/bin/env bash
# Prepares, on a CPU machine, what tests/gpu/check.sh needs on the GPU
# machine, which has no Rust toolchain and reaches no network: a stripped
# release `kiln` (~42 MB) and the Python wheels the fixture generator needs
# there, all in .gpu/ (ignored by git; the device tool carries it:
# `carry: [".gpu"]`).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/wheels
cargo build --release -p kiln-cli
strip -o .gpu/kiln target/release/kiln
# gguf (pure Python) and sentencepiece for tests/fixtures/random_gguf.py;
# numpy is already there.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/wheels gguf==0.19.0 sentencepiece==0.2.3 pyyaml tqdm
du -sh .gpu
