#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust tests (unit, router, end-to-end over a real socket
# with the real ONNX Runtime), the trainer's tests, the Dockerfile lint, the benchmark smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --train
export OMP_WAIT_POLICY=PASSIVE
cargo fmt --all -- --check
cargo clippy --release --locked --all-targets -- -D warnings
cargo test --release --locked
(cd training && ../.venv/bin/python -m pytest -q tests)
.venv/bin/hadolint --ignore DL3008 Dockerfile
echo "hadolint: Dockerfile clean"
bash bench/run.sh --smoke
