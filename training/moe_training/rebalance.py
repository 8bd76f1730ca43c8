"""Per-class rebalancing of a one-vs-all task (positives = the class, negatives = the rest)."""

from __future__ import annotations

import numpy as np

METHODS = ("none", "undersample", "oversample", "class_weight")


def rebalance(y: np.ndarray, method: str, ratio: float = 3.0, seed: int = 42):
    """Return (indices, sample_weights) for training rows.

    - none: every row once, weight 1.
    - undersample: keep all positives and a random `ratio` negatives per positive.
    - oversample: repeat positives (randomly) until negatives / positives <= `ratio`.
    - class_weight: every row once; positives and negatives each get half the total weight.
    """
    y = np.asarray(y).astype(bool)
    pos = np.flatnonzero(y)
    neg = np.flatnonzero(~y)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("one-vs-all task needs at least one positive and one negative row")
    rng = np.random.default_rng(seed)
    if method == "none":
        idx = np.arange(len(y))
    elif method == "undersample":
        n_neg = min(len(neg), int(round(ratio * len(pos))))
        idx = np.concatenate([pos, rng.choice(neg, size=n_neg, replace=False)])
    elif method == "oversample":
        n_pos = max(len(pos), int(np.ceil(len(neg) / ratio)))
        extra = rng.choice(pos, size=n_pos - len(pos), replace=True)
        idx = np.concatenate([pos, extra, neg])
    elif method == "class_weight":
        idx = np.arange(len(y))
        w = np.where(y, len(y) / (2.0 * len(pos)), len(y) / (2.0 * len(neg)))
        return idx, w.astype(np.float32)
    else:
        raise ValueError(f"unknown rebalancing method {method!r} (choose from {', '.join(METHODS)})")
    idx = np.sort(idx)
    return idx, np.ones(len(idx), dtype=np.float32)
