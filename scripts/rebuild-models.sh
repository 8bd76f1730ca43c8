#!/usr/bin/env bash
# Rebuild everything behind models/: train the candidate pool, calibrate every candidate on val (in
# the serving runtime), select the shipped default set into models/, score the global baselines,
# and record the test-split results. About 30 minutes on 2 cores (the 19 full fine-tunes are ~16 of
# them: ALGORITHMS=... restricts the pool). Resumable by stage: set SKIP_TRAIN=1 to keep
# build/candidates and redo calibration and selection only.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --train
export OMP_WAIT_POLICY=PASSIVE
DATA=${MOE_DATA:-../shared/data/wikihow19_titles.csv}
ALGORITHMS=${ALGORITHMS:-trunk-logreg,trunk-mlp,tokenbag,ft19-logreg,finetune-minilm}
# What may ship: heads on ONE shared trunk keep models/ small (about 24 MB); the other candidates
# still compete in build/models-all, the selection evidence.
SHIP_ALGORITHMS=${SHIP_ALGORITHMS:-ft19-logreg,tokenbag}
MOE=target/release/moe
if [ -z "${SKIP_TRAIN:-}" ]; then
  rm -rf build/candidates
  (cd training && ../.venv/bin/python -m moe_training build --data "../$DATA" --out ../build/candidates \
     --algorithms "$ALGORITHMS")
fi
$MOE calibrate --models build/candidates --data "$DATA"
$MOE select --candidates build/candidates --out build/models-all --data "$DATA"
$MOE select --candidates build/candidates --out models --algorithms "$SHIP_ALGORITHMS" --data "$DATA"
mkdir -p docs/results
$MOE report --models models --split test --data "$DATA" > docs/results/default-set-test.json
$MOE report --models build/models-all --split test --data "$DATA" > docs/results/all-algorithms-test.json
cp build/models-all/selection.json docs/results/selection-all-algorithms.json
(cd training && ../.venv/bin/python -m moe_training global --data "../$DATA" --out ../build/global --finetune)
cp build/global/global.json docs/results/global-baselines.json
.venv/bin/python scripts/results.py > docs/RESULTS.md
