"""Write tests/fixtures/sklearn_roc.json: scores (with ties) and labels, with scikit-learn's
roc_curve (drop_intermediate=False) and roc_auc_score, and the equal error rate found the usual
way (scipy's brentq on 1 - x - TPR(x), TPR linearly interpolated in FPR), for the Rust ROC/AUC/EER
test."""

import json
import sys
from pathlib import Path

import numpy as np
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score, roc_curve

rng = np.random.default_rng(7)
cases = []
for n, pos_rate, decimals in [(200, 0.1, 3), (57, 0.5, 2), (1000, 0.05, 4)]:
    y = rng.random(n) < pos_rate
    y[0], y[1] = True, False
    scores = np.clip(rng.normal(0.3, 0.2, n) + 0.35 * y, 0.0, 1.0).astype(np.float32)
    scores = np.round(scores, decimals).astype(np.float32)  # rounding creates ties
    fpr, tpr, thr = roc_curve(y, scores, drop_intermediate=False)
    cases.append(
        {
            "scores": scores.tolist(),
            "labels": y.tolist(),
            "fpr": fpr.tolist(),
            "tpr": tpr.tolist(),
            "thresholds": [None if not np.isfinite(t) else float(t) for t in thr],
            "auc": float(roc_auc_score(y, scores)),
            "eer": float(brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0, xtol=1e-14)),
        }
    )
out = Path(sys.argv[1] if len(sys.argv) > 1 else "../tests/fixtures/sklearn_roc.json")
out.write_text(json.dumps({"generator": "training/scripts/sklearn_roc_fixture.py", "cases": cases}))
print(f"wrote {out}")
