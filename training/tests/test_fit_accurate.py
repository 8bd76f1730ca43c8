"""scripts/fit-accurate.sh end to end on a small CSV: the fine-tune runs with the recipe it is
given, the trunk is exported with per-tensor activation scales (the default trunk's graph) and
`moe fit` serves a set on it."""

import csv
import json
import os
import subprocess
from pathlib import Path

from conftest import DATA

ROOT = Path(__file__).resolve().parents[2]


def _small_csv(path: Path, classes: int = 3) -> None:
    rows = [r for r in csv.DictReader(open(DATA, newline="", encoding="utf-8")) if r["split"] in ("train", "val")]
    keep = sorted({r["label"] for r in rows})[:classes]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        for c in keep:
            mine = [r for r in rows if r["label"] == c]
            w.writerows((r["title"], c, r["split"]) for r in [x for x in mine if x["split"] == "train"][:24])
            w.writerows((r["title"], c, r["split"]) for r in [x for x in mine if x["split"] == "val"][:8])


def test_the_fast_fine_tune_command_fits_a_set_on_a_per_tensor_trunk(tmp_path):
    data = tmp_path / "small.csv"
    _small_csv(data)
    recipe = "--global-epochs 1 --max-steps 3 --global-lr 2e-4 --cosine-scale 20 --freeze-embeddings --length-buckets"
    env = {**os.environ, "MOE_FINETUNE": recipe, "MOE_TRAIN_DEVICE": "cpu"}
    out = tmp_path / "set"
    done = subprocess.run(
        ["scripts/fit-accurate.sh", "--data", str(data), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "3-way fine-tune: training on cpu" in done.stdout + done.stderr
    (trunk,) = (out / "trunks").iterdir()
    card = json.loads((trunk / "trunk.json").read_text())
    assert trunk.name.startswith("minilm-l6-ft-int8-") and "per-row" not in card["quantization"]
    tuned = card["fine_tuned"]
    assert (tuned["steps"], tuned["cosine_scale"], tuned["freeze_embeddings"]) == (3, 20.0, True)
    report = json.loads((out / "fit-report.json").read_text())
    assert len(report["classes"]) == 3 and report["val"]["accuracy_best_guess"] > 0.5
