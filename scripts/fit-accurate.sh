#!/usr/bin/env bash
# The accurate path for your own classes: fine-tune the trunk on the CSV's labels, then `moe fit` on it.
#   scripts/fit-accurate.sh --data FILE --out DIR [any other `moe fit` option]
# 1. `python -m moe_training trunk`: MiniLM-L6 (MOE_BACKBONE=mpnet-base for the larger one)
#    fine-tuned as one classifier over every label of the train split (an --oos-label's rows
#    included: the trunk learns to set them apart), exported int8 with per-tensor activation scales
#    (the default trunk's graph: the service runs it one text at a time, as fast as the frozen
#    trunk; MOE_ACTIVATIONS=per-row for a batchable one) into DIR.trunk/trunks/<id>/. Resumable:
#    checkpoints go to DIR.checkpoints, a rerun continues, and a finished run is loaded, not
#    retrained. The recipe (MOE_FINETUNE overrides it), chosen on CLINC150 val among the levers
#    that buy time (docs/TRAINING.md, "The fast fine-tune"): 3 epochs, encoder lr 2e-4, output
#    layer 1e-3, 6 % warm-up, a cosine classifier at scale 20, frozen token embeddings, batches of
#    like length. MOE_TRAIN_DEVICE=cpu|cuda chooses where it trains (default: a GPU torch sees).
# 2. `moe fit --trunk DIR.trunk/trunks/<id>` with the same data and every option given here.
# A file without a split column is first split by `moe fit` on the default trunk (DIR.frozen, whose
# splits.csv both steps then read), so the fine-tune never sees the val or test rows.
# Timings on 2 cores: docs/TRAINING.md ("The accurate path").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --train
MOE=target/release/moe
DATA="" OUT="" TEXT_COL=text LABEL_COL=label SPLIT_COL=split SEED=42 REST=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --text-col) TEXT_COL=$2; REST+=("$1" "$2"); shift 2 ;;
    --label-col) LABEL_COL=$2; REST+=("$1" "$2"); shift 2 ;;
    --split-col) SPLIT_COL=$2; REST+=("$1" "$2"); shift 2 ;;
    --seed) SEED=$2; REST+=("$1" "$2"); shift 2 ;;
    *) REST+=("$1"); shift ;;
  esac
done
[ -n "$DATA" ] && [ -n "$OUT" ] || { echo "usage: $0 --data FILE --out DIR [moe fit options]" >&2; exit 2; }
[ -f "$DATA" ] || { echo "$0: $DATA: no such file" >&2; exit 2; }
DATA=$(realpath "$DATA")
if ! head -n 1 "$DATA" | tr ',' '\n' | tr -d '\r"' | grep -qx "$SPLIT_COL"; then
  "$MOE" fit --data "$DATA" --out "$OUT.frozen" "${REST[@]}"
  DATA=$(realpath "$OUT.frozen/splits.csv") TEXT_COL=text LABEL_COL=label SPLIT_COL=split
  REST+=(--text-col text --label-col label --split-col split)
fi
mkdir -p "$OUT.trunk" "$OUT.checkpoints"
TRUNK_OUT=$(realpath "$OUT.trunk") CK=$(realpath "$OUT.checkpoints")
# shellcheck disable=SC2206 # MOE_FINETUNE: trainer flags, word-split on purpose
RECIPE=(${MOE_FINETUNE:---global-epochs 3 --global-lr 2e-4 --global-head-lr 1e-3 --warmup 0.06 --cosine-scale 20 --freeze-embeddings --length-buckets})
(cd training && ../.venv/bin/python -m moe_training trunk --data "$DATA" --text-col "$TEXT_COL" \
  --label-col "$LABEL_COL" --split-col "$SPLIT_COL" --seed "$SEED" --backbone "${MOE_BACKBONE:-minilm-l6}" \
  --checkpoints "$CK" --out "$TRUNK_OUT" --activations "${MOE_ACTIVATIONS:-per-tensor}" "${RECIPE[@]}") \
  | tee "$OUT.trunk/log.txt"
ID=$(grep -o '"id": "[^"]*"' "$OUT.trunk/log.txt" | tail -n 1 | cut -d'"' -f4)
"$MOE" fit --data "$DATA" --out "$OUT" --trunk "$TRUNK_OUT/trunks/$ID" "${REST[@]}"
