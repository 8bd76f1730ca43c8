"""Is the gap between val and test out-of-scope recall luck? For each recorded operating point (the
trade-off records of `trade_offs.py`), the chance of a test recall as low as the one seen if test's
out-of-scope texts were drawn like val's.

A cut that declines k of the m out-of-scope val texts lies above the k-th lowest of their scores,
so the share of such texts it declines is at least the population share below that order
statistic, which is Beta(k, m - k + 1) for any continuous score (conservative: it ignores the room
up to the (k+1)-th). With n test texts drawn like them, the number declined is then at least
Beta-binomial(n, k, m - k + 1), and its lower tail at the seen count is the p-value. It holds for
each candidate rule whatever its cut; `moe fit` picks one of 12 (3 label rules x 4 scores) by
in-scope val accuracy, which a Bonferroni factor of 12 would cover (very conservatively: the 12 are
close relatives).

With `--cache DIR` (a `moe fit` embedding cache of the data, e.g. `moe fit --cache DIR ...` on the
default trunk), also a test no cut enters: each val and test text's cosine to the nearest in-scope
class centroid of the train texts, out-of-scope val against out-of-scope test (Mann-Whitney,
two-sided), and in-scope val against in-scope test as the control.

Usage (from the repository root):
  .venv/bin/python training/scripts/oos_shift.py OUT.json RECORD.json [RECORD.json ...] [--cache DIR]
"""

import argparse
import collections
import csv
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import betabinom, mannwhitneyu

sys.path.insert(0, str(Path(__file__).parent))
from open_intent import read_cache, unit  # noqa: E402


def nearest_centroid(cache: Path, rows: list[dict], oos_label: str) -> dict:
    """Val against test on each text's cosine to the nearest train class centroid."""
    emb = read_cache(cache)
    rows = [r for r in rows if r["text"] in emb]
    train = collections.defaultdict(list)
    for r in rows:
        if r["split"] == "train" and r["label"] != oos_label:
            train[r["label"]].append(emb[r["text"]])
    centroids = unit(np.stack([unit(np.stack(train[c])).mean(0) for c in sorted(train)]))
    of = lambda keep: unit(np.stack([emb[r["text"]] for r in rows if keep(r)]))  # noqa: E731
    out = {}
    for name, oos in (("out_of_scope", True), ("in_scope", False)):
        val, test = (
            (of(lambda r, s=s: r["split"] == s and (r["label"] == oos_label) == oos) @ centroids.T).max(1)
            for s in ("val", "test")
        )
        u = mannwhitneyu(test, val, alternative="two-sided")
        out[name] = {
            "rows": {"val": len(val), "test": len(test)},
            "median": {"val": float(np.median(val)), "test": float(np.median(test))},
            "p_test_above_val": float(u.statistic / len(val) / len(test)),
            "p_value": float(u.pvalue),
        }
        print(f"{name}: median val {np.median(val):.3f}, test {np.median(test):.3f}, p = {u.pvalue:.2g}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("records", nargs="+", type=Path)
    ap.add_argument("--data", default="data/clinc150/clinc150.csv")
    ap.add_argument("--oos-label", default="oos")
    ap.add_argument("--cache", type=Path, help="a `moe fit` embedding cache of --data")
    a = ap.parse_args()
    with open(a.data, newline="") as f:
        data = list(csv.DictReader(f))
    counts = {s: sum(r["label"] == a.oos_label and r["split"] == s for r in data) for s in ("val", "test")}
    m, n = counts["val"], counts["test"]
    rows = []
    for record in a.records:
        for r in json.loads(record.read_text())["rows"]:
            k, seen = round(r["val"]["out_of_scope_recall"] * m), round(r["test"]["out_of_scope_recall"] * n)
            law = betabinom(n, k, m - k + 1)
            low, high = law.ppf([0.025, 0.975])
            rows.append(
                {
                    "record": str(record),
                    "option": r["option"],
                    "val_declined": f"{k}/{m}",
                    "test_declined": f"{seen}/{n}",
                    "test_declined_95_if_like_val": [int(low), int(high)],
                    "p_test_this_low_if_like_val": float(law.cdf(seen)),
                }
            )
            print(
                f"{record.name} {r['option']}: val {k}/{m}, test {seen}/{n}, p = {rows[-1]['p_test_this_low_if_like_val']:.4f}"
            )
    out = {"data": a.data, "method": " ".join(__doc__.split("\n\n")[1].split()), "rows": rows}
    if a.cache:
        out["nearest_centroid_cosine"] = nearest_centroid(a.cache, data, a.oos_label)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
