"""The default grouping similarity of `GET /unknowns` (0.65), chosen on CLINC150 val: held-out
intents' texts plus the out-of-scope queries, grouped at each similarity by a numpy replica of
`moe_core::stats::groups::communities` (densest text first founds a group of its ungrouped
neighbours at cosine >= similarity, at least 5 texts); reported for val and test.

Per trial 20 intents are drawn (seeded). Figures: groups formed, purity (texts of the group's
majority intent), intents found (a group with 5+ texts of it), share of the intents' texts grouped,
share of out-of-scope queries grouped.

Usage (embeddings from `moe fit`'s cache, e.g. after a CLINC150 fit):
  .venv/bin/python training/scripts/unknowns_similarity.py CACHE_DIR
"""

import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from open_intent import read_cache, unit  # noqa: E402

DATA = Path("data/clinc150/clinc150.csv")


def communities(x, similarity, min_size):
    x = unit(x)
    s = x @ x.T
    neighbours = [np.flatnonzero(s[i] >= similarity) for i in range(len(x))]
    order = sorted(range(len(x)), key=lambda i: (-len(neighbours[i]), i))
    taken = np.zeros(len(x), bool)
    groups = []
    for c in order:
        if len(neighbours[c]) < min_size:
            break
        free = [j for j in neighbours[c] if not taken[j]]
        if not taken[c] and len(free) >= min_size:
            taken[free] = True
            groups.append(free)
    return groups


def trial(emb, rows, split, held, similarity, min_size=5):
    texts = [(t, y) for t, y, s in rows if s == split and (y in held or y == "oos")]
    x = np.stack([emb[t] for t, _ in texts])
    y = np.array([label for _, label in texts])
    groups = communities(x, similarity, min_size)
    grouped = sum(len(g) for g in groups)
    pure, found = 0, set()
    for g in groups:
        labels, counts = np.unique(y[g], return_counts=True)
        pure += counts.max()
        if labels[counts.argmax()] != "oos":
            found.add(labels[counts.argmax()])
    return {
        "groups": len(groups),
        "purity": pure / max(grouped, 1),
        "intents_found": len(found) / len(held),
        "intent_texts_grouped": sum((y[g] != "oos").sum() for g in groups) / (y != "oos").sum(),
        "oos_grouped": sum((y[g] == "oos").sum() for g in groups) / (y == "oos").sum(),
    }


def main():
    emb = read_cache(sys.argv[1])
    rows = [(r["text"], r["label"], r["split"]) for r in csv.DictReader(DATA.open()) if r["text"] in emb]
    intents = sorted({y for _, y, _ in rows if y != "oos"})
    rng = np.random.default_rng(0)
    for t in range(3):
        held = set(rng.choice(intents, 20, replace=False))
        for split in ("val", "test"):
            for similarity in (0.5, 0.6, 0.65, 0.7, 0.75, 0.8):
                r = trial(emb, rows, split, held, similarity)
                print(t, split, similarity, {k: round(float(v), 3) for k, v in r.items()})


if __name__ == "__main__":
    main()
