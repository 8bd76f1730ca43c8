#!/usr/bin/env bash
# The whole test suite: formatting and lints (Rust and Python), Rust tests (unit, router, end-to-end
# over a real socket with the real ONNX Runtime; a fleet of replicas on a real etcd), the trainer's
# tests, the web console in headless Chromium, the Kubernetes manifests (schemas, checkov), the
# Dockerfile lint, schemathesis against the served openapi.yaml, the benchmark smoke run, the image
# built with podman and run alone and as a fleet of containers on etcd (tests/container).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --train
export OMP_WAIT_POLICY=PASSIVE
cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo test --release --locked --workspace
PY_SRC="training/moe_training training/tests tests/browser tests/k8s tests/container bench scripts"
# shellcheck disable=SC2086 # PY_SRC is a list of folders
.venv/bin/ruff format --check --config training/pyproject.toml $PY_SRC
# shellcheck disable=SC2086
.venv/bin/ruff check --config training/pyproject.toml $PY_SRC
(cd training && ../.venv/bin/python -m pytest -q tests)
.venv/bin/python -m pytest -q tests/browser
.venv/bin/python -m pytest -q tests/k8s
.venv/bin/hadolint --ignore DL3008 Dockerfile
echo "hadolint: Dockerfile clean"
bash scripts/schemathesis.sh
bash bench/run.sh --smoke
# The image, built from the Dockerfile with podman, run alone and as an etcd fleet.
bash scripts/image.sh
.venv/bin/python -m pytest -q tests/container
