#!/usr/bin/env bash
# The fast fine-tune on a GPU (issue 43; prepared, see docs/TRAINING.md for whether it has run).
#   bench/gpu-finetune.sh --prepare   here: MiniLM-L6's weights as fp16 safetensors (~45 MB) with its
#                                     config and tokenizer into build/gpu-minilm/, to carry (the GPU
#                                     machine has PyTorch and transformers but no registry, and a call
#                                     carries at most 64 MiB: fp32 weights would not fit; name
#                                     build/gpu-minilm in the call's carry)
#   bench/gpu-finetune.sh             there: scripts' recipe (fit-accurate.sh's) on CLINC150 with
#                                     training/scripts/fast_recipe.py on CUDA, then on the CPU for
#                                     the same number of epochs (CPU_EPOCHS, default 1), each judged
#                                     on val after every epoch; JSON lines in ${OUT:-/tmp/moe-gpu}/finetune.jsonl
# The weights are upcast to fp32 on load (backbone.load_encoder), so the GPU trains what the CPU does.
set -euo pipefail
cd "$(dirname "$0")/.."
W=build/gpu-minilm
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$W"
  .venv/bin/python - "$W" <<'PY'
import shutil, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
sys.path.insert(0, "training")
from moe_training import backbone
src, out = backbone.backbone_dir("minilm-l6"), Path(sys.argv[1])
model = backbone.load_encoder("minilm-l6")
save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (src / f).exists():
        shutil.copy(src / f, out / f)
print(f"{out}: {sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB")
PY
  exit 0
fi
OUT=${OUT:-/tmp/moe-gpu}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
export MOE_MINILM_DIR=$PWD/$W
RECIPE=(--epochs 3 --lr 2e-4 --head-lr 1e-3 --warmup 0.06 --cosine-scale 20 --freeze-embeddings --length-buckets)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cd training
MOE_TRAIN_DEVICE=cuda PYTHONPATH=. "$PY" scripts/fast_recipe.py --data ../data/clinc150/clinc150.csv \
  --name gpu-cos20 --out "$OUT/finetune.jsonl" "${RECIPE[@]}" 2>&1 | tail -n 3
RECIPE[1]=${CPU_EPOCHS:-1}
MOE_TRAIN_DEVICE=cpu PYTHONPATH=. "$PY" scripts/fast_recipe.py --data ../data/clinc150/clinc150.csv \
  --name cpu-cos20 --out "$OUT/finetune.jsonl" "${RECIPE[@]}" 2>&1 | tail -n 3
