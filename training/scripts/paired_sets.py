"""Two model roots served by `moe serve` on the same val and test texts (64 per request): the served
label's accuracy (an abstention counts wrong), the best guess's, and the paired bootstrap interval
of the difference (second minus first); and the batch check through HTTP: every expert's
probability for each of 200 test texts alone and inside batches of 64 (other texts, other lengths,
so other padding), largest difference, and whether the server ran a graph one text at a time.

Usage (from the repository root, after `cargo build --release`):
  # the shipped set against the same experts on its per-row rewrite (docs/results/wikihow-rowquant.json)
  .venv/bin/python training/scripts/paired_sets.py models build/rowq-set OUT.json
  # CLINC150: the frozen-trunk fit against the accurate path's (in-scope texts only)
  .venv/bin/python training/scripts/paired_sets.py FROZEN ACCURATE OUT.json \
      --data data/clinc150/clinc150.csv --text-col text --exclude-label oos
"""

import argparse
import csv
import json
import random
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from served import serving

BOOT = 2000


def post(base, texts):
    body = json.dumps({"texts": texts}).encode()
    req = urllib.request.Request(base + "/classify?experts=all", data=body, method="POST")
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())["results"]


def probs(result):
    return {e["class"]: e["probability"] for e in result["experts"]}


def measure(models, port, splits):
    out = {}
    state = Path(tempfile.mkdtemp(prefix="moe-paired-"))
    log = state.parent / f"{state.name}.log"
    with serving(models, state, port, log) as base:
        for name, rows in splits.items():
            texts = [t for t, _ in rows]
            res = [r for i in range(0, len(texts), 64) for r in post(base, texts[i : i + 64])]
            out[name] = {
                "label": [r.get("label") == y for r, (_, y) in zip(res, rows)],
                "best": [r.get("best_guess", r.get("label")) == y for r, (_, y) in zip(res, rows)],
            }
        texts = [t for t, _ in splits["test"][:200]]
        alone = [probs(post(base, [t])[0]) for t in texts]
        shuffled = list(range(len(texts)))
        random.Random(0).shuffle(shuffled)
        batched = {}
        for i in range(0, len(shuffled), 64):
            idx = shuffled[i : i + 64]
            for j, r in zip(idx, post(base, [texts[j] for j in idx])):
                batched[j] = probs(r)
        diff = max(abs(alone[j][c] - batched[j][c]) for j in range(len(texts)) for c in alone[j])
        out["batch_check"] = {"texts": len(texts), "max_abs_diff": diff}
        out["row_by_row_logged"] = "one text at a time" in log.read_text()
    return out


def paired(a, b, seed=0):
    a, b = np.array(a, float), np.array(b, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (BOOT, len(a)))
    d = (b[idx] - a[idx]).mean(1)
    return {
        "a": a.mean(),
        "b": b.mean(),
        "b_minus_a": (b - a).mean(),
        "interval95": [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("out")
    ap.add_argument("--port", type=int, default=18731)
    ap.add_argument("--data", default="data/wikihow19_titles.csv")
    ap.add_argument("--text-col", default="title")
    ap.add_argument("--exclude-label", default="", help="rows with this label are left out (e.g. oos)")
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(open(args.data)) if r["label"] != args.exclude_label]
    splits = {s: [(r[args.text_col], r["label"]) for r in rows if r["split"] == s] for s in ("val", "test")}
    old = measure(args.old, args.port, splits)
    new = measure(args.new, args.port + 1, splits)
    result = {
        "old": str(args.old),
        "new": str(args.new),
        "data": args.data,
        "rows": {s: len(r) for s, r in splits.items()},
    }
    for s in splits:
        result[s] = {k: paired(old[s][k], new[s][k]) for k in ("label", "best")}
    result["batch_check"] = {"old": old["batch_check"], "new": new["batch_check"]}
    result["row_by_row_logged"] = {"old": old["row_by_row_logged"], "new": new["row_by_row_logged"]}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
