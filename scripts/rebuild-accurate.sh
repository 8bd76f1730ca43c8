#!/usr/bin/env bash
# Rebuild the accurate set: all-mpnet-base-v2 fine-tuned once as a 19-way classifier on train (the
# recipe in training/moe_training/candidates.py GLOBAL_RECIPES), exported int8 as the shared trunk,
# 19 one-vs-all logistic heads on it, its trunks correcting spelling before the tokenizer (the lexicon
# `scripts/rebuild-models.sh` builds: data/words + the train split's text), calibrated at each
# head's EER on val in the serving runtime,
# plus the global baselines on the same backbone (19-way logreg on the same trunk; the fine-tuned
# model's own softmax). Writes build/accurate (candidates) and build/accurate-set (a model root
# `moe serve --models build/accurate-set` serves; 220 MB, too big to commit).
# About 20 minutes on 2 cores, most of it the fine-tune (435 steps at ~1.7 s); resumable: the
# fine-tune checkpoints into build/checkpoints every 20 steps and a finished run is reused by
# `global --finetune` and `teach` instead of being trained again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --train --mpnet
export OMP_WAIT_POLICY=PASSIVE
DATA=${MOE_DATA:-data/wikihow19_titles.csv}
MOE=target/release/moe
PY=../.venv/bin/python
CK=../build/checkpoints
LEXICON=build/lexicon.txt
rm -rf build/accurate build/accurate-set
# The same lexicon as the fast set's (built from the shipped trunk's tokenizer vocabulary).
TOKENIZER=$(ls -d models/trunks/* | head -1)/tokenizer.json
(cd training && $PY -m moe_training lexicon build --data "../$DATA" --out ../$LEXICON --tokenizer "../$TOKENIZER")
(cd training && $PY -m moe_training build --backbone mpnet-base --algorithms ft19-logreg --data "../$DATA" \
   --out ../build/accurate --checkpoints $CK)
(cd training && $PY -m moe_training lexicon attach ../$LEXICON ../build/accurate)
$MOE calibrate --models build/accurate --data "$DATA"
$MOE select --candidates build/accurate --out build/accurate-set --data "$DATA"
TRUNK=$(basename "$(ls -d build/accurate-set/trunks/mpnet-base-ft19-int8-*)")
mkdir -p docs/results
(cd training && $PY -m moe_training global --backbone mpnet-base --no-frozen --finetune --same-trunk "$TRUNK" \
   --data "../$DATA" --out ../build/accurate-set --checkpoints $CK --summary ../docs/results/global-baselines-mpnet.json)
(cd training && $PY -m moe_training lexicon attach ../$LEXICON ../build/accurate-set)
$MOE calibrate --models build/accurate-set --data "$DATA" \
  --bundles "$(cd build/accurate-set && ls -d ./*--global-* | sed 's|^\./||' | paste -sd, -)"
scripts/without-spelling.sh build/accurate-set build/accurate-no-spelling-set
# FP32=1: the same fine-tuned trunk unquantised (438 MB, about twice the cost per text; int8's
# parity with it is weak: min cosine 0.78 on 32 val titles) as build/accurate-fp32-set.
if [ -n "${FP32:-}" ]; then
  rm -rf build/accurate-fp32 build/accurate-fp32-set
  (cd training && $PY -m moe_training build --backbone mpnet-base --algorithms ft19-logreg --data "../$DATA" \
     --out ../build/accurate-fp32 --trunk-precision fp32 --checkpoints $CK)
  (cd training && $PY -m moe_training lexicon attach ../$LEXICON ../build/accurate-fp32)
  $MOE calibrate --models build/accurate-fp32 --data "$DATA"
  $MOE select --candidates build/accurate-fp32 --out build/accurate-fp32-set --data "$DATA"
fi
echo "accurate set: build/accurate-set (serve it with: target/release/moe serve --models build/accurate-set)"
