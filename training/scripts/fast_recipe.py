"""One fine-tune recipe on a CSV's train split, its own classifier judged on val after every epoch:
the time-vs-accuracy curve behind the fast fine-tune's recipe (docs/TRAINING.md, "The fast
fine-tune"). Val only: test is never read. Appends one JSON line per recipe to --out.

  python scripts/fast_recipe.py --data ../data/clinc150/clinc150.csv --name R --out F.jsonl \
      --epochs 3 --lr 1e-4 --head-lr 1e-3 --warmup 0.06 [--freeze-embeddings] [--length-buckets] ...
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from moe_training import backbone, candidates


def _split(path: Path, split: str, text_col: str, label_col: str, split_col: str):
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r[split_col] == split]
    return [r[text_col] for r in rows], [r[label_col] for r in rows]


def _accuracy(model, tok, texts: list[str], y: np.ndarray, keep: np.ndarray) -> dict:
    """The model's own best guess on `texts` (no gradient, length-sorted batches of 256)."""
    order = np.argsort([len(t) for t in texts])
    guess = np.empty(len(texts), dtype=np.int64)
    device = next(model.parameters()).device  # the training device during training (CUDA or CPU)
    with torch.no_grad():
        for b in range(0, len(order), 256):
            i = order[b : b + 256]
            feeds = backbone.encode(tok, [texts[j] for j in i])
            out = model(*(torch.from_numpy(feeds[n]).to(device) for n in model.names))
            guess[i] = out.argmax(1).cpu().numpy()
    right = guess == y
    return {"val_accuracy": float(right.mean()), "val_in_scope_accuracy": float(right[keep].mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--text-col", default="text")
    p.add_argument("--oos-label", default="oos", help="val rows of this label are left out of in-scope accuracy")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.06)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--average-last", type=float, default=0.0)
    p.add_argument("--cosine-scale", type=float, default=0.0)
    p.add_argument("--freeze-embeddings", action="store_true")
    p.add_argument("--length-buckets", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    torch.set_num_threads(2)
    path = Path(a.data)
    texts, labels = _split(path, "train", a.text_col, "label", "split")
    vtexts, vlabels = _split(path, "val", a.text_col, "label", "split")
    classes = sorted(set(labels))
    vy = np.array([classes.index(c) for c in vlabels])
    keep = np.array([c != a.oos_label for c in vlabels])
    s = candidates.TrainSettings(
        seed=a.seed, global_epochs=a.epochs, global_lr=a.lr, global_head_lr=a.head_lr, warmup=a.warmup,
        batch_size=a.batch_size, label_smoothing=a.label_smoothing, average_last=a.average_last,
        freeze_embeddings=a.freeze_embeddings, cosine_scale=a.cosine_scale, length_buckets=a.length_buckets,
    )  # fmt: skip
    tok = backbone.load_tokenizer()
    curve, spent = [], {"eval": 0.0}
    t0 = time.monotonic()

    def on_epoch(model, epoch: int) -> None:
        t = time.monotonic()
        curve.append(
            {
                "epoch": epoch,
                "train_seconds": round(t - t0 - spent["eval"], 1),
                **_accuracy(model, tok, vtexts, vy, keep),
            }
        )
        spent["eval"] += time.monotonic() - t
        print(json.dumps(curve[-1]), flush=True)

    model, info = candidates.finetune_global(tok, texts, labels, classes, s, on_epoch=on_epoch)
    row = {"name": a.name, "data": path.name, "recipe": {k: v for k, v in vars(a).items() if k not in ("data", "out", "name")},
           "steps": info["steps"], "train_seconds": round(time.monotonic() - t0 - spent["eval"], 1), "curve": curve,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(backbone.train_device())}  # fmt: skip
    if a.average_last:
        row["averaged"] = _accuracy(model, tok, vtexts, vy, keep)
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
