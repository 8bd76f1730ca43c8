#!/usr/bin/env bash
# GPU check, for a host with an NVIDIA GPU (prepared; see docs/BENCHMARKS.md for whether it has run).
#   1. ONNX Runtime GPU from wheels in .whl/ (onnxruntime-gpu and, if the host lacks them, the
#      nvidia-* CUDA/cuDNN wheels it requires): a GPU host may have no package registry.
#   2. The `moe` binary built with `--features cuda` (MOE_BIN, default target/cuda/release/moe, built
#      here with `cargo build --release --features cuda --target-dir target/cuda` when cargo exists).
#   3. `moe bench --provider cuda`: with provider cuda a graph that cannot run on CUDA is an error,
#      never a silent CPU fallback, so a result proves the CUDA execution provider ran the graphs.
#   4. The same bench with --provider cpu on the same host, for the ratio.
# Results: JSON lines in ${OUT:-/tmp/moe-gpu}/gpu.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/moe-gpu}; mkdir -p "$OUT"
SITE=/tmp/moe-gpu-site
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .whl/*.whl
LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
export ORT_DYLIB_PATH=$LIB
# CUDA / cuDNN libraries shipped as nvidia-* wheels, if any were brought.
LD_LIBRARY_PATH=$(find "$SITE/nvidia" -maxdepth 2 -name lib -type d 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
MOE=${MOE_BIN:-target/cuda/release/moe}
if [ ! -x "$MOE" ]; then cargo build --release --locked --features cuda --target-dir target/cuda; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
{
  for p in cuda cpu; do
    "$MOE" bench --provider "$p" --models models --seconds "${BENCH_SECONDS:-5}" --batch 1,8,32,64 --concurrency 4 \
      --texts docs/bench/texts.txt 2>"$OUT/bench-$p.log" |
      sed "s/^{/{\"provider\":\"$p\",/"
  done
} | tee "$OUT/gpu.jsonl"
