"""Write tests/fixtures/sklearn_logreg.json: scikit-learn's LogisticRegression (lbfgs, tight
tolerance) on small seeded problems with balanced sample weights, the oracle for crates/core/src/stats/logreg.rs;
and tests/fixtures/sklearn_ovr.json: one balanced one-vs-rest LogisticRegression per class on
StandardScaler'd features (scikit-learn's pipeline), the oracle for crates/core/src/stats/ovr.rs.

    cd training && ../.venv/bin/python scripts/sklearn_logreg_fixture.py
"""

import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "sklearn_logreg.json"
OVR = OUT.with_name("sklearn_ovr.json")


def case(seed: int, n: int, d: int, pos_rate: float, c: float) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    true_w = rng.normal(size=d)
    z = x @ true_w + rng.normal(scale=0.5, size=n)
    y = z > np.quantile(z, 1 - pos_rate)
    w = np.where(y, n / (2.0 * y.sum()), n / (2.0 * (~y).sum()))
    clf = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(x, y, sample_weight=w)
    return {
        "c": c,
        "x": x.tolist(),
        "y": y.tolist(),
        "coef": clf.coef_.reshape(-1).tolist(),
        "intercept": float(clf.intercept_[0]),
        "probabilities": clf.predict_proba(x)[:, 1].tolist(),
    }


def ovr_case(seed: int, n: int, d: int, classes: int, c: float) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    y = rng.integers(0, classes, size=n)
    x = (centres[y] + rng.normal(scale=1.5, size=(n, d))).astype(np.float32) * rng.uniform(0.01, 2.0, size=d)
    x = x.astype(np.float32)
    scaler = StandardScaler().fit(x)
    heads = []
    for k in range(classes):
        clf = LogisticRegression(C=c, class_weight="balanced", tol=1e-10, max_iter=10000)
        clf.fit(scaler.transform(x), y == k)
        # The head on raw features: w / scale, b - sum(w * mean / scale).
        w = clf.coef_.reshape(-1) / scaler.scale_
        heads.append({"coef": w.tolist(), "intercept": float(clf.intercept_[0] - w @ scaler.mean_)})
    return {"c": c, "x": x.tolist(), "y": y.tolist(), "heads": heads}


def main() -> None:
    cases = [case(1, 200, 8, 0.1, 10.0), case(2, 300, 16, 0.05, 1.0), case(3, 120, 32, 0.3, 0.1)]
    OUT.write_text(json.dumps({"cases": cases}) + "\n")
    print(f"wrote {OUT}")
    OVR.write_text(json.dumps({"cases": [ovr_case(4, 400, 12, 4, 0.1), ovr_case(5, 300, 20, 3, 1.0)]}) + "\n")
    print(f"wrote {OVR}")


if __name__ == "__main__":
    main()
