#!/usr/bin/env bash
# Rebuild tests/fixtures/models: two small but genuine full-model experts (token-bag, 8-dim),
# trained by the project's trainer in quick mode, calibrated and selected by `moe`.
# Needs the trainer's venv (scripts/setup.sh --train) and a built `moe`.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${MOE_DATA:-../shared/data/wikihow19_titles.csv}
MOE=${MOE_BIN:-target/release/moe}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd training && ../.venv/bin/python -m moe_training build --data "../$DATA" --out "$work" --quick \
  --classes Travel,Health --algorithms tokenbag --tokenbag-dim 8 --max-steps 40)
"$MOE" calibrate --models "$work" --data "$DATA"
rm -rf tests/fixtures/models
"$MOE" select --candidates "$work" --out tests/fixtures/models --data "$DATA"
cp "$work"/manifest-*.json tests/fixtures/models/
