"""Coverage against accuracy at equal coverage: the served MoE ranked by its own open-world score
against one global softmax ranked by its top probability, on the in-scope test rows, with paired
bootstrap intervals (REPORT.md, "Coverage: the served rule against one global model").

The MoE: `moe fit` on the file with its defaults (`--oos-label` rows kept out of the classes when
given), served by `moe serve`; each test text's best guess and `out_of_scope_score` (the rule's own
score, lower = more in scope). The global model: scikit-learn's multinomial logistic regression on
the same embeddings (`moe fit`'s cache: the service's trunk and text pipeline), raw or standardized
features and C chosen on val accuracy. At coverage c each system answers the c share of the test
texts it is surest of; accuracy is over those it answers. The interval resamples the test texts
(both systems on the same resample, each ranking its own) 1,000 times.

Usage (from the repository root, after `cargo build --release`):
  .venv/bin/python training/scripts/coverage.py OUT.json --data data/wikihow19_titles.csv --text-col title
  .venv/bin/python training/scripts/coverage.py OUT.json --data data/clinc150/clinc150.csv --oos-label oos
"""

import argparse
import csv
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from open_intent import read_cache
from served import MOE, serving
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
BOOT = 1000


def answers(base: str, texts: list[str]) -> list[dict]:
    import urllib.request

    out = []
    for i in range(0, len(texts), 64):
        body = json.dumps({"texts": texts[i : i + 64]}).encode()
        req = urllib.request.Request(f"{base}/classify?experts=none", body, {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            out += json.loads(r.read())["results"]
    return out


def global_model(emb, split_rows):
    """The best of raw / standardized features x C on val accuracy, fitted on train."""
    x = {s: np.stack([emb[t] for t, _ in split_rows[s]]) for s in ("train", "val")}
    y = {s: np.array([lab for _, lab in split_rows[s]]) for s in ("train", "val")}
    best = None
    for features in ("raw", "standardized"):
        for c in (0.01, 0.1, 1.0, 10.0, 100.0):
            m = LogisticRegression(C=c, max_iter=3000)
            m = m if features == "raw" else make_pipeline(StandardScaler(), m)
            acc = float((m.fit(x["train"], y["train"]).predict(x["val"]) == y["val"]).mean())
            if best is None or acc > best[0]:
                best = (acc, {"features": features, "C": c, "val_accuracy": acc}, m)
    return best[2], best[1]


def at_coverage(sure: np.ndarray, right: np.ndarray, c: float) -> float:
    """Accuracy over the ceil(c * n) texts with the highest `sure` (ties broken by position)."""
    k = int(np.ceil(c * len(sure)))
    keep = np.argsort(-sure, kind="stable")[:k]
    return float(right[keep].mean())


def curves(moe_sure, moe_right, g_sure, g_right, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, len(moe_sure), len(moe_sure)) for _ in range(BOOT)]
    out = []
    for c in COVERAGES:
        a, b = at_coverage(moe_sure, moe_right, c), at_coverage(g_sure, g_right, c)
        d = [at_coverage(moe_sure[i], moe_right[i], c) - at_coverage(g_sure[i], g_right[i], c) for i in boots]
        ci = [round(100 * float(np.percentile(d, q)), 2) for q in (2.5, 97.5)]
        verdict = "MoE wins" if ci[0] > 0 else "global wins" if ci[1] < 0 else "no difference shown"
        out.append({"coverage": c, "moe": round(100 * a, 2), "global": round(100 * b, 2),
                    "moe_minus_global": round(100 * (a - b), 2), "ci95": ci, "verdict": verdict})  # fmt: skip
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--data", required=True)
    ap.add_argument("--text-col", default="text")
    ap.add_argument("--oos-label", default="")
    ap.add_argument("--fit-arg", action="append", default=[], help="passed to `moe fit` (repeat)")
    a = ap.parse_args()
    rows = list(csv.DictReader(open(a.data, newline="", encoding="utf-8")))
    labels_of: dict[str, set] = {}
    for r in rows:
        labels_of.setdefault(r[a.text_col], set()).add(r["label"])
    keep = [r for r in rows if r["label"] != a.oos_label and len(labels_of[r[a.text_col]]) == 1]
    split_rows = {s: [(r[a.text_col], r["label"]) for r in keep if r["split"] == s] for s in ("train", "val", "test")}
    work = Path(tempfile.mkdtemp(prefix="coverage-"))
    try:
        fit = ["fit", "--data", a.data, "--text-col", a.text_col, "--drop-conflicts", "--out", str(work / "m")]
        fit += ["--cache", str(work / "cache"), *(["--oos-label", a.oos_label] if a.oos_label else []), *a.fit_arg]
        subprocess.run([str(MOE), *fit], check=True, stdout=subprocess.DEVNULL)
        gate = json.loads((work / "m" / "fit-report.json").read_text())["gate"]
        test = split_rows["test"]
        with serving(work / "m", work / "state", 18950, work / "serve.log") as base:
            got = answers(base, [t for t, _ in test])
        emb = read_cache(work / "cache")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    truth = np.array([lab for _, lab in test])
    moe_right = np.array([r["best_guess"] for r in got]) == truth
    moe_sure = -np.array([r["out_of_scope_score"] for r in got])
    model, chosen = global_model(emb, split_rows)
    proba = model.predict_proba(np.stack([emb[t] for t, _ in test]))
    g_right = model.classes_[proba.argmax(axis=1)] == truth
    out = {
        "data": a.data, "test_rows": len(test), "moe_rule": {k: gate.get(k) for k in ("label_rule", "open_world")},
        "global": chosen, "bootstrap": f"paired, {BOOT} resamples of the test texts, seed 0",
        "curve": curves(moe_sure, moe_right, proba.max(axis=1), g_right),
    }  # fmt: skip
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["curve"], indent=1))


if __name__ == "__main__":
    main()
