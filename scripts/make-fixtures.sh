#!/usr/bin/env bash
# Rebuild tests/fixtures/models: small but genuine full-model experts (token-bag) for Travel and
# Health, trained by the project's trainer in quick mode, calibrated and selected by `moe`; plus a
# second, different variant of each (`<class>--tokenbag-b`, not in the registry) for swap tests.
# Needs the trainer's venv (scripts/setup.sh --train) and a built `moe`.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${MOE_DATA:-data/wikihow19_titles.csv}
MOE=${MOE_BIN:-target/release/moe}
a=$(mktemp -d) b=$(mktemp -d)
trap 'rm -rf "$a" "$b"' EXIT
build() { # out dim seed
  (cd training && ../.venv/bin/python -m moe_training build --data "../$DATA" --out "$1" --quick \
    --classes Travel,Health --algorithms tokenbag --tokenbag-dim "$2" --seed "$3" --max-steps 40)
  "$MOE" calibrate --models "$1" --data "$DATA"
}
build "$a" 8 42
build "$b" 4 7
rm -rf tests/fixtures/models
"$MOE" select --candidates "$a" --out tests/fixtures/models --data "$DATA"
cp "$a"/manifest-*.json tests/fixtures/models/
for c in travel health; do cp -r "$b/$c--tokenbag" "tests/fixtures/models/$c--tokenbag-b"; done
