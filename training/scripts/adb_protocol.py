"""The open-intent protocol of ADB (Zhang et al. 2021, thuiar/Adaptive-Decision-Boundary) and
TEXTOIR on CLINC150, through the service. For each known-intent ratio and seed, the known intents
are drawn as ADB's dataloader draws them (numpy's legacy generator seeded with the seed, `choice`
over the sorted in-scope labels without replacement, round(150 × ratio) of them); train and val
hold only the known intents' rows (no out-of-scope rows anywhere); `moe fit` fits the set and
chooses its rule on that val; `moe serve` answers every test query (4,500 in scope + 1,000 out of
scope). An unseen intent's query and an out-of-scope query are both "open"; an abstained answer
says "open". Reported as ADB reports (results/results.md): accuracy over all test queries, macro-F1
over the known intents and the open class, the open class's F1 and the known intents' macro-F1.

Usage (from the repository root, after `cargo build --release`):
  .venv/bin/python training/scripts/adb_protocol.py OUT.json [--ratios 0.25 0.5 0.75] [--seeds 0 1 2]
      [--trunk T | --fine-tune "TRAINER FLAGS"] [--fit-arg=--max-in-scope-abstain --fit-arg=0.1 ...]
"""

import argparse
import csv
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from open_intent import classify
from served import MOE, serving

DATA = Path("data/clinc150/clinc150.csv")
OPEN = "open"
# ADB with fine-tuned BERT-base, labeled ratio 1.0: thuiar/Adaptive-Decision-Boundary results/results.md,
# rows "oos|ADB|<ratio>|1.0" (F1, F1-known, F1-open, Acc).
ADB = {
    0.25: {"macro_f1": 77.19, "known_f1": 76.8, "open_f1": 91.84, "accuracy": 87.58},
    0.5: {"macro_f1": 85.05, "known_f1": 85.0, "open_f1": 88.65, "accuracy": 86.54},
    0.75: {"macro_f1": 88.53, "known_f1": 88.58, "open_f1": 83.92, "accuracy": 86.32},
}


def known_intents(labels: list[str], ratio: float, seed: int) -> list[str]:
    """ADB's draw: np.random.seed(seed); np.random.choice(np.unique(labels), round(n * ratio), replace=False)."""
    pool = np.unique(np.array(labels))
    return [str(x) for x in np.random.RandomState(seed).choice(pool, round(len(pool) * ratio), replace=False)]


def scores(truth: list[str], pred: list[str], known: list[str]) -> dict:
    """Accuracy, macro-F1 over known + open, the open class's F1 and the known intents' macro-F1 (%)."""
    t, p = np.array(truth), np.array(pred)

    def f1(c: str) -> float:
        tp = float(np.sum((t == c) & (p == c)))
        prec, rec = tp / max(1, np.sum(p == c)), tp / max(1, np.sum(t == c))
        return 0.0 if tp == 0 else 2 * prec * rec / (prec + rec)

    per = {c: f1(c) for c in [*known, OPEN]}
    known_f1 = float(np.mean([per[c] for c in known]))
    return {
        "accuracy": round(100 * float(np.mean(t == p)), 2),
        "macro_f1": round(100 * float(np.mean(list(per.values()))), 2),
        "open_f1": round(100 * per[OPEN], 2),
        "known_f1": round(100 * known_f1, 2),
        "known_declined": round(100 * float(np.mean(p[t != OPEN] == OPEN)), 2),
        "open_recall": round(100 * float(np.mean(p[t == OPEN] == OPEN)), 2),
    }


def fine_tune(data: Path, work: Path, seed: int, recipe: list[str]) -> tuple[str, float]:
    """The fast fine-tune of the default trunk on the known intents' train rows (what
    scripts/fit-accurate.sh runs): the exported trunk's folder and the seconds it took."""
    out = work / "trunk"
    cmd = [str(Path(".venv/bin/python").absolute()), "-m", "moe_training", "trunk", "--data", str(data.resolve())]
    cmd += ["--text-col", "text", "--seed", str(seed), "--out", str(out.resolve()), *recipe]
    t0 = time.time()
    subprocess.run(cmd, cwd="training", check=True, stdout=subprocess.DEVNULL)
    (folder,) = (out / "trunks").iterdir()
    return str(folder), round(time.time() - t0, 1)


def run(rows, ratio: float, seed: int, work: Path, cache: Path, a, port: int) -> dict:
    labels = [y for _, y, s in rows if s == "train" and y != "oos"]
    known = known_intents(labels, ratio, seed)
    keep = set(known)
    data = work / "known.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        w.writerows(r for r in rows if r[2] in ("train", "val") and r[1] in keep)
    models = work / "models"
    fit = ["fit", "--data", str(data), "--drop-conflicts", "--out", str(models), "--cache", str(cache), *a.fit_arg]
    trunk, tune_s = a.trunk, None
    if a.fine_tune is not None:
        trunk, tune_s = fine_tune(data, work, seed, a.fine_tune.split())
    if trunk:
        fit += ["--trunk", trunk]
    t0 = time.time()
    subprocess.run([str(MOE), *fit], check=True, stdout=subprocess.DEVNULL)
    fit_s = round(time.time() - t0, 1)
    test = [(t, y if y in keep else OPEN) for t, y, s in rows if s == "test"]
    with serving(models, work / "state", port, work / "serve.log") as base:
        answers = classify(base, [t for t, _ in test])
    pred = [OPEN if a["abstained"] else a["label"] for a in answers]
    gate = json.loads((models / "fit-report.json").read_text()).get("gate", {})
    return {
        "ratio": ratio,
        "seed": seed,
        "known": len(known),
        "test_known": sum(y != OPEN for _, y in test),
        "test_open": sum(y == OPEN for _, y in test),
        "fit_s": fit_s,
        "fine_tune_s": tune_s,
        "rule": {k: gate.get(k) for k in ("label_rule", "open_world") if k in gate},
        **scores([y for _, y in test], pred, known),
    }


def summary(runs: list[dict]) -> list[dict]:
    """Per ratio: the mean over seeds, next to ADB's published figures."""
    out = []
    for ratio in sorted({r["ratio"] for r in runs}):
        mine = [r for r in runs if r["ratio"] == ratio]
        keys = ("accuracy", "macro_f1", "open_f1", "known_f1", "known_declined", "open_recall")
        mean = {k: round(float(np.mean([r[k] for r in mine])), 2) for k in keys}
        out.append({"ratio": ratio, "seeds": [r["seed"] for r in mine], "moe": mean, "adb": ADB.get(ratio)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trunk", default="", help="a trunk folder or id for `moe fit` (default: its own)")
    ap.add_argument("--fit-arg", action="append", default=[], help="passed to `moe fit` (repeat)")
    ap.add_argument(
        "--fine-tune", default=None, help="fine-tune the trunk on each split first, with these trainer flags"
    )
    ap.add_argument("--cache", default="", help="`moe fit`'s embedding cache (default: a temporary one)")
    a = ap.parse_args()
    rows = [(r["text"], r["label"], r["split"]) for r in csv.DictReader(DATA.open(newline="", encoding="utf-8"))]
    shared = Path(tempfile.mkdtemp(prefix="adb-"))
    cache = Path(a.cache) if a.cache else shared / "cache"
    runs = []
    try:
        for ratio in a.ratios:
            for seed in a.seeds:
                work = Path(tempfile.mkdtemp(prefix=f"adb-{ratio}-{seed}-", dir=shared))
                runs.append(run(rows, ratio, seed, work, cache, a, 18900 + seed))
                shutil.rmtree(work, ignore_errors=True)
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "rule"}), flush=True)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    trunk = f"fine-tuned per split: {a.fine_tune}" if a.fine_tune is not None else a.trunk or "default"
    out = {"data": str(DATA), "protocol": "ADB / TEXTOIR, labeled ratio 1.0", "trunk": trunk,
           "fit_args": a.fit_arg, "summary": summary(runs), "runs": runs}  # fmt: skip
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
