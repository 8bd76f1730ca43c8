"""Which out-of-scope score would serve a set best, judged on val alone: the scores `moe fit` tries
(the top head logit, its blends with the nearest-centroid cosine) against the other distance-based
scores the open-world issue names, Mahalanobis distance to the class means with a shared
covariance (Ledoit-Wolf shrinkage, so nothing is tuned) and k-nearest-neighbour cosine to the train
texts, each alone and blended with the top logit the way `moe fit` blends (standardised on the
in-scope val texts, weights 0.3 / 0.5 / 0.7 on the logit).

For each score: val AUROC (in scope against out of scope), and the share of in-scope val texts
declined by the cut that declines as many out-of-scope val texts as `--min-oos-recall` needs (the
fewest whose one-sided 95 % Wilson lower bound reaches it, as `moe fit` counts). Against the
reference score (`REFERENCE`, one of the blends `moe fit` tries), a paired bootstrap over the val texts
(in-scope and out-of-scope rows resampled separately) gives the 95 % interval of the difference.

Test rows are never read: the CSV is filtered to train and val as it is read.

Usage (from the repository root; FIT is a `moe fit --oos-label` output, CACHE its `--cache`):
  .venv/bin/python training/scripts/oos_scores.py OUT.json --fit FIT --cache CACHE
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from open_intent import read_cache, unit  # noqa: E402

WEIGHTS = (0.3, 0.5, 0.7)
K_NEAREST = 5
BOOT = 2000
# Fixed beforehand, not the best on this val split (that would tilt every difference its way): the
# middle of the blends `moe fit` tries.
REFERENCE = "blend 0.5 top logit + centroid cosine"


def wilson_lower(k: int, m: int, z: float = 1.6448536269514722) -> float:
    """The Wilson score interval's lower end for k of m (z = 1.645: one-sided 95 %; stats::roc)."""
    p = k / m
    return (p + z * z / (2 * m) - z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m))) / (1 + z * z / m)


def declines_needed(m: int, recall: float) -> int:
    """The fewest of m out-of-scope texts whose one-sided 95 % Wilson lower bound reaches `recall`."""
    for k in range(m + 1):
        if wilson_lower(k, m) >= recall:
            return k
    raise SystemExit(f"{m} out-of-scope val rows cannot vouch for a recall of {recall}")


def declined_at(s_in: np.ndarray, s_oos: np.ndarray, k: int) -> float:
    """Share of in-scope scores below the cut that declines the k lowest out-of-scope ones, placed
    as `moe fit` places it (open_world::cut_above): halfway to the next higher score, so any equal
    to the k-th are declined too; just above the highest when there is none."""
    last = np.sort(s_oos)[k - 1]
    higher = s_oos[s_oos > last]
    if len(higher):
        mid = last + (higher.min() - last) / 2
        cut = mid if mid > last else higher.min()  # adjacent floats have no midpoint: the higher one
    else:
        cut = np.nextafter(last, np.inf)
    return float((s_in < cut).mean())


def heads(fit: Path) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """Each linear expert's class, weights and bias from a `moe fit` output, and their trunk's id."""
    found, trunks = [], set()
    for card_file in sorted(fit.glob("*/card.json")):
        card = json.loads(card_file.read_text())
        if card.get("kind") == "linear":
            h = json.loads((card_file.parent / card["graph"]["file"]).read_text())
            found.append((card["class"], h["weights"], h["bias"]))
            trunks.add(card["trunk"]["id"])
    if not found:
        raise SystemExit(f"{fit}: no linear experts (a `moe fit` output?)")
    if len(trunks) != 1:
        raise SystemExit(f"{fit}: the experts sit on {len(trunks)} trunks, not one")
    found.sort()
    classes, w, b = zip(*found)
    return list(classes), np.array(w), np.array(b), trunks.pop()


def scores(emb: dict, rows: list[dict], fit: Path, oos_label: str) -> tuple[dict, np.ndarray, str]:
    """Every score (higher = more in scope) of every val text, which val texts are out of scope, and
    the trunk."""
    classes, w, b, trunk = heads(fit)
    index = {c: i for i, c in enumerate(classes)}
    train = [r for r in rows if r["split"] == "train" and r["label"] in index]
    x = np.stack([emb[r["text"]] for r in train]).astype(np.float64)
    y = np.array([index[r["label"]] for r in train])
    val = [r for r in rows if r["split"] == "val" and (r["label"] in index or r["label"] == oos_label)]
    v = np.stack([emb[r["text"]] for r in val]).astype(np.float64)
    oos = np.array([r["label"] == oos_label for r in val])

    top_logit = (v @ w.T + b).max(1)
    centroids = unit(np.stack([unit(x[y == k]).mean(0) for k in range(len(classes))]))
    cosine = (unit(v) @ centroids.T).max(1)
    knn = np.sort(unit(v) @ unit(x).T, axis=1)[:, -K_NEAREST]
    means = np.stack([x[y == k].mean(0) for k in range(len(classes))])
    precision = LedoitWolf().fit(x - means[y]).precision_
    vp = v @ precision
    mahalanobis = -((vp * v).sum(1)[:, None] - 2 * vp @ means.T + ((means @ precision) * means).sum(1)[None]).min(1)

    def std(s: np.ndarray) -> np.ndarray:
        return (s - s[~oos].mean()) / max(s[~oos].std(), 1e-6)

    out = {
        "top logit (max probability)": top_logit,
        "centroid cosine": cosine,
        f"{K_NEAREST}-nearest cosine": knn,
        "Mahalanobis (Ledoit-Wolf)": mahalanobis,
    }
    for name, d in list(out.items())[1:]:  # each distance blended with the top logit
        for wt in WEIGHTS:
            out[f"blend {wt} top logit + {name}"] = wt * std(top_logit) + (1 - wt) * std(d)
    return out, oos, trunk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--fit", type=Path, required=True, help="a `moe fit --oos-label` output folder")
    ap.add_argument("--cache", type=Path, required=True, help="the `--cache` folder of that fit")
    ap.add_argument("--data", default="data/clinc150/clinc150.csv")
    ap.add_argument("--oos-label", default="oos")
    ap.add_argument("--min-oos-recall", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    emb = read_cache(a.cache)
    with open(a.data, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] in ("train", "val") and r["text"] in emb]
    s, oos, trunk = scores(emb, rows, a.fit, a.oos_label)
    m = int(oos.sum())
    k = declines_needed(m, a.min_oos_recall)
    table = {
        name: {"val_auroc": float(roc_auc_score(~oos, v)), "val_in_scope_declined": declined_at(v[~oos], v[oos], k)}
        for name, v in s.items()
    }
    ref = REFERENCE
    rng = np.random.default_rng(a.seed)
    i_in, i_oos = np.flatnonzero(~oos), np.flatnonzero(oos)
    diffs = {n: [] for n in table if n != ref}
    for _ in range(BOOT):
        bi, bo = rng.choice(i_in, len(i_in)), rng.choice(i_oos, len(i_oos))
        base = declined_at(s[ref][bi], s[ref][bo], k)
        for n in diffs:
            diffs[n].append(declined_at(s[n][bi], s[n][bo], k) - base)
    for n, d in diffs.items():
        lo, hi = np.percentile(d, [2.5, 97.5])
        table[n]["declined_minus_reference"] = {
            "point": table[n]["val_in_scope_declined"] - table[ref]["val_in_scope_declined"],
            "ci95": [float(lo), float(hi)],
        }
    for n, t in table.items():
        ci = t.get("declined_minus_reference", {}).get("ci95")
        print(
            f"{n:48s} AUROC {t['val_auroc']:.4f}  declined {100 * t['val_in_scope_declined']:5.2f} %"
            + (f"  vs reference [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "  (reference)")
        )
    record = {
        "command": "training/scripts/oos_scores.py " + " ".join(sys.argv[1:]),
        "trunk": trunk,
        "split": "val (test rows are never read)",
        "val_rows": {"in_scope": int((~oos).sum()), "out_of_scope": m},
        "min_out_of_scope_recall": a.min_oos_recall,
        "out_of_scope_declines": k,
        "reference": ref,
        "bootstrap": {"resamples": BOOT, "seed": a.seed, "interval": "95 % percentile, paired over val texts"},
        "scores": table,
    }
    a.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
