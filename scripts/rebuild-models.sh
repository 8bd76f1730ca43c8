#!/usr/bin/env bash
# Rebuild everything behind models/: train the candidate pool, calibrate every candidate on val (in
# the serving runtime), select the shipped default set into models/, build the global baselines
# into models/, and write the comparison report (docs/REPORT.md) and docs/RESULTS.md. About 40
# minutes on 2 cores (the 19 full fine-tunes are ~16 of them: ALGORITHMS=... restricts the pool). Resumable by stage: set SKIP_TRAIN=1 to keep
# build/candidates and redo calibration and selection only.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --train
export OMP_WAIT_POLICY=PASSIVE
DATA=${MOE_DATA:-data/wikihow19_titles.csv}
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
# The global baselines, written into models/ as column-head bundles (after `select`, which prunes
# bundles it did not pick) and calibrated like every expert.
FT19=$(basename "$(ls -d models/trunks/minilm-l6-ft19-int8-*)")
mkdir -p docs/results
(cd training && ../.venv/bin/python -m moe_training global --data "../$DATA" --out ../models --finetune \
   --same-trunk "$FT19" --summary ../docs/results/global-baselines.json)
$MOE calibrate --models models --data "$DATA" \
  --bundles "$(cd models && ls -d ./*--global-* | sed 's|^\./||' | paste -sd, -)"
cp build/models-all/selection.json docs/results/selection-all-algorithms.json
scripts/report.sh
.venv/bin/python scripts/results.py > docs/RESULTS.md
