"""The open-intent protocol on the wikiHow titles: fit on 75 % of the classes, the rest unseen, 3
seeds. Known accuracy (a known class's test title labelled right; declined counts wrong) and
unseen recall (an unseen class's test title declined), for the fitted MoE served by `moe serve`
(its rule chosen on val by `moe fit`, no out-of-scope examples, the default 3 % budget) against one
global softmax (scikit-learn's multinomial logistic regression on the same embeddings, C chosen on
val accuracy) declining below a top-probability cut-off at the same budget (3 % of known val
titles declined). Paired bootstrap intervals over the same test titles.

Nothing of an unseen class reaches either model: its rows leave the CSV `moe fit` reads, and the
global model is fitted on the known classes' train rows. Both read the embeddings `moe fit` computed
(its cache file: the service's trunk, tokenizer and spelling correction).

Usage (from the repository root, after `cargo build --release`):
  .venv/bin/python training/scripts/open_intent.py OUT.json [--seeds 0 1 2]
"""

import argparse
import csv
import json
import random
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from served import MOE, serving
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DATA = Path("data/wikihow19_titles.csv")
KNOWN_SHARE = 0.75
BUDGET = 0.03
BOOT = 2000


def read_cache(folder):
    """Every text -> embedding in `moe fit`'s cache files (MOEEMB01, crates/tools/src/embed_cache.rs)."""
    out = {}
    for f in Path(folder).glob("*.emb"):
        b = f.read_bytes()
        assert b[:8] == b"MOEEMB01", f
        (dim,) = struct.unpack_from("<I", b, 8)
        at = 12
        while at + 4 <= len(b):
            (n,) = struct.unpack_from("<I", b, at)
            end = at + 4 + n + 4 * dim
            if end > len(b):
                break
            text = b[at + 4 : at + 4 + n].decode()
            out[text] = np.frombuffer(b[at + 4 + n : end], dtype="<f4")
            at = end
    return out


def unit(x: np.ndarray) -> np.ndarray:
    """Each row (or the vector) at unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def classify(base, texts):
    out = []
    for i in range(0, len(texts), 64):
        req = urllib.request.Request(
            base + "/classify?experts=none",
            data=json.dumps({"texts": texts[i : i + 64]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            out.extend(json.loads(r.read())["results"])
    return out


def paired(a, b, seed):
    """MoE − global: mean difference and 95 % percentile bootstrap interval over paired rows."""
    d = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (BOOT, len(d)))].mean(axis=1)
    return {"diff": float(d.mean()), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]}


def global_softmax(emb, rows, known):
    def xy(split):
        r = [(t, y) for t, y, s in rows if s == split and y in known]
        return np.stack([emb[t] for t, _ in r]), np.array([y for _, y in r])

    (xt, yt), (xv, yv) = xy("train"), xy("val")
    best = None
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):
        m = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(xt, yt)
        acc = (m.predict(xv) == yv).mean()
        if best is None or acc > best[0]:
            best = (acc, c, m)
    _, c, m = best
    cut = float(np.quantile(m.predict_proba(xv).max(axis=1), BUDGET))
    return m, c, cut


def embed_all(cache, work):
    """Fill `cache` with every title's embedding (one `moe fit` on the whole file; its set is
    discarded): the global model also scores the unseen classes' test titles."""
    fit = ["fit", "--data", str(DATA), "--text-col", "title", "--drop-conflicts", "--out", str(work / "all")]
    subprocess.run([str(MOE), *fit, "--cache", str(cache)], check=True, stdout=subprocess.DEVNULL)


def run(seed, work, cache):
    rows = [
        (r["title"], r["label"], r["split"])
        for r in csv.DictReader(DATA.open())
        if r["split"] in ("train", "val", "test")
    ]
    classes = sorted({y for _, y, _ in rows})
    known = set(random.Random(seed).sample(classes, round(KNOWN_SHARE * len(classes))))
    data = work / "known.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["title", "label", "split"])
        w.writerows(r for r in rows if r[1] in known)
    models = work / "models"
    t = time.time()
    fit = ["fit", "--data", str(data), "--text-col", "title", "--drop-conflicts", "--out", str(models)]
    subprocess.run([str(MOE), *fit, "--cache", str(cache)], check=True, stdout=subprocess.DEVNULL)
    fit_s = time.time() - t
    report = json.loads((models / "fit-report.json").read_text())
    port = 18800 + seed
    with serving(models, work / "state", port, work / "serve.log") as base:
        test = [(t, y) for t, y, s in rows if s == "test"]
        answers = classify(base, [t for t, _ in test])
    emb = read_cache(cache)
    model, c, cut = global_softmax(emb, rows, known)
    proba = model.predict_proba(np.stack([emb[t] for t, _ in test]))
    g_label = np.where(proba.max(axis=1) >= cut, model.classes_[proba.argmax(axis=1)], None)
    is_known = np.array([y in known for _, y in test])
    moe_right = np.array([a["label"] == y for a, (_, y) in zip(answers, test)])
    moe_declined = np.array([a["abstained"] for a in answers])
    g_right = np.array([g == y for g, (_, y) in zip(g_label, test)])
    g_declined = np.array([g is None for g in g_label])
    gate = report.get("gate", {})
    return {
        "seed": seed,
        "unseen": sorted(set(classes) - known),
        "fit_s": round(fit_s, 1),
        "moe_rule": {k: gate.get(k) for k in ("label_rule", "open_world") if k in gate},
        "global": {"C": c, "cut_top_probability": cut},
        "test_known": int(is_known.sum()),
        "test_unseen": int((~is_known).sum()),
        "moe": {
            "known_accuracy": float(moe_right[is_known].mean()),
            "unseen_recall": float(moe_declined[~is_known].mean()),
        },
        "global_softmax": {
            "known_accuracy": float(g_right[is_known].mean()),
            "unseen_recall": float(g_declined[~is_known].mean()),
        },
        "moe_minus_global": {
            "known_accuracy": paired(moe_right[is_known], g_right[is_known], seed),
            "unseen_recall": paired(moe_declined[~is_known], g_declined[~is_known], seed),
        },
        "_pairs": {
            "known": [moe_right[is_known].tolist(), g_right[is_known].tolist()],
            "unseen": [moe_declined[~is_known].tolist(), g_declined[~is_known].tolist()],
        },
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    runs = []
    shared = Path(tempfile.mkdtemp(prefix="open-intent-"))
    embed_all(shared / "cache", shared)
    for seed in a.seeds:
        work = Path(tempfile.mkdtemp(prefix=f"open-intent-{seed}-"))
        try:
            runs.append(run(seed, work, shared / "cache"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({k: runs[-1][k] for k in ("seed", "unseen", "moe", "global_softmax", "moe_minus_global")}))
    shutil.rmtree(shared, ignore_errors=True)
    pooled = {}
    for part in ("known", "unseen"):
        moe = sum((r["_pairs"][part][0] for r in runs), [])
        glob = sum((r["_pairs"][part][1] for r in runs), [])
        pooled[part] = paired(moe, glob, 0) | {"moe": float(np.mean(moe)), "global": float(np.mean(glob))}
    for r in runs:
        del r["_pairs"]
    out = {"data": str(DATA), "known_share": KNOWN_SHARE, "budget": BUDGET, "runs": runs, "pooled": pooled}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(pooled))


if __name__ == "__main__":
    main()
