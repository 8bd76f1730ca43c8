"""`moe report` against an independent computation (numpy + scikit-learn) on a small case: the
fixture experts (Travel, Health), a global baseline built and calibrated by the project's own
commands, and a CSV of those two classes. Then the page and figures drawn from that JSON."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

REPO = Path(__file__).resolve().parents[2]
TRAINING = REPO / "training"
MOE = Path(os.environ.get("MOE_BIN", REPO / "target/release/moe"))
FIXTURES = REPO / "tests/fixtures/models"
CLASSES = ["Health", "Travel"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    assert MOE.exists(), f"{MOE} is missing: build it first (cargo build --release, or scripts/test.sh)"
    d = tmp_path_factory.mktemp("report")
    with open(DATA, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if r["label"] in CLASSES]
    keep += [r for r in rows if r["split"] == "ambiguous" and set(r["all_labels"].split("|")) & set(CLASSES)][:12]
    data = d / "small.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(keep)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run(
        [sys.executable, "-m", "moe_training", "global", "--data", str(data), "--out", str(d / "global"), "--quick"],
        cwd=TRAINING,
        check=True,
        env=env,
    )
    subprocess.run([str(MOE), "calibrate", "--models", str(d / "global"), "--data", str(data)], check=True, env=env)
    subprocess.run(
        [
            str(MOE),
            "report",
            "--models",
            str(FIXTURES),
            "--extra-roots",
            str(d / "global"),
            "--data",
            str(data),
            "--out",
            str(d / "report.json"),
        ],
        check=True,
        env=env,
    )
    return d, json.loads((d / "report.json").read_text())


def _decide(s):
    """The gate rule as docs describe it: among the experts whose probability reaches their threshold
    the best score wins; with none, the best score is the guess (uniform weights)."""
    p = np.array(s["scores"], dtype=np.float32)
    t = np.array(s["thresholds"], dtype=np.float32)
    assert s["gate"]["kind"] == "uniform"
    if s["gate"]["score"] == "margin":
        logit = lambda x: np.log(np.clip(x, 1e-7, 1 - 1e-7) / (1 - np.clip(x, 1e-7, 1 - 1e-7)))  # noqa: E731
        score = 1 / (1 + np.exp(-(logit(p.astype(np.float64)) - logit(t.astype(np.float64)))))
    else:
        score = p.astype(np.float64)
    passed = p >= t
    pred = np.where(passed.any(1), np.argmax(np.where(passed, score, -np.inf), axis=1), np.argmax(score, axis=1))
    return p, t, passed, pred


def _eer(y, scores):
    fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    d = fpr - (1 - tpr)
    k = int(np.argmax(d >= 0))
    a = -d[k - 1] / (d[k] - d[k - 1])
    return fpr[k - 1] + a * (fpr[k] - fpr[k - 1])


def test_report_finds_the_served_set_a_family_and_the_global_model(small):
    _, r = small
    assert r["classes"] == CLASSES
    assert [(s["name"], s["kind"]) for s in r["systems"]] == [
        ("moe-served", "moe"),
        ("tokenbag", "moe"),
        ("global-frozen-logreg", "global"),
    ]
    assert r["systems"][1]["bundles"] == {"Health": "health--tokenbag-b", "Travel": "travel--tokenbag-b"}
    assert len(r["truth"]) == r["data"]["rows"] > 40


def test_classification_numbers_match_sklearn(small):
    _, r = small
    y = np.array(r["truth"])
    labels = list(range(len(CLASSES)))
    for s in r["systems"]:
        _, _, _, pred = _decide(s)
        assert s["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12), s["name"]
        assert s["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=labels, zero_division=0))
        prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
        for k, c in enumerate(s["per_class"]):
            assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx(
                (prec[k], rec[k], f1[k], sup[k])
            )
        assert s["confusion"] == confusion_matrix(y, pred, labels=labels).tolist()


def test_expert_auc_eer_and_threshold_metrics_match_sklearn(small):
    _, r = small
    y = np.array(r["truth"])
    for s in r["systems"]:
        p, t, _, _ = _decide(s)
        for k, e in enumerate(s["experts"]):
            yk = y == k
            assert e["auc"] == pytest.approx(roc_auc_score(yk, p[:, k]), abs=1e-9)
            assert e["eer"] == pytest.approx(_eer(yk, p[:, k]), abs=1e-9)
            tp = int(np.sum((p[:, k] >= t[k]) & yk))
            fp = int(np.sum((p[:, k] >= t[k]) & ~yk))
            assert (e["at_threshold"]["tp"], e["at_threshold"]["fp"]) == (tp, fp)


def test_abstention_matches_an_independent_count(small):
    _, r = small
    y = np.array(r["truth"])
    for s in r["systems"]:
        p, t, passed, pred = _decide(s)
        if s["kind"] == "global":  # max-probability rejection at a coverage
            conf, answer = p.max(1), p.argmax(1)
            for point in s["coverage_curve"]:
                m = int(np.clip(round(point["coverage"] * len(y)), 1, len(y)))
                cut = np.sort(conf)[::-1][m - 1]
                keep = conf >= cut
                assert point["answered"] == int(keep.sum())
                assert point["accuracy"] == pytest.approx(np.mean(answer[keep] == y[keep]))
        else:  # the MoE at its calibrated thresholds answers when some expert passes
            keep = passed.any(1)
            op = s["operating_point"]
            assert op["answered"] == int(keep.sum())
            assert op["accuracy"] == pytest.approx(np.mean(pred[keep] == y[keep]) if keep.any() else 0.0)


def test_multi_label_rows_match_an_independent_count(small):
    _, r = small
    truth = [set(CLASSES.index(c) for c in labels if c in CLASSES) for labels in r["ambiguous"]["labels"]]
    assert len(truth) == 12
    for s in r["systems"]:
        a = s["ambiguous"]
        p = np.array(a["scores"], dtype=np.float32)
        passed = [set(np.flatnonzero(row >= np.array(s["thresholds"], dtype=np.float32))) for row in p]
        hits = [len(x & y) for x, y in zip(passed, truth)]
        assert a["mean_passed"] == pytest.approx(np.mean([len(x) for x in passed]))
        assert a["any_true_passed"] == pytest.approx(np.mean([h > 0 for h in hits]))
        assert a["label_recall"] == pytest.approx(sum(hits) / sum(len(y) for y in truth))
        assert a["label_precision"] == pytest.approx(sum(hits) / max(1, sum(len(x) for x in passed)))


def test_robustness_perturbs_every_title(small):
    _, r = small
    assert [p["name"] for p in r["perturbations"]] == ["cased", "typos", "extra-words", "all"]
    for s in r["systems"]:
        assert [x["perturbation"] for x in s["robustness"]] == ["cased", "typos", "extra-words", "all"]
        assert all(0.0 <= x["accuracy"] <= 1.0 for x in s["robustness"])
    cased = r["perturbations"][0]["examples"][0]
    assert cased[1][0].isupper() and cased[1][-1] in "?!." and cased[1].lower()[:-1] == cased[0].replace(" s ", "'s ")


def test_the_page_and_its_figures_are_drawn_from_the_json(small):
    from moe_training.report import render

    d, r = small
    out = d / "page" / "REPORT.md"
    out.parent.mkdir()
    bench = [
        {"name": "service", "concurrency": 16, "batch": 1, "requests_per_s": 1000.0, "p99_ms": 30.0},
        {"name": "inproc", "batch": 32, "texts_per_s": 1400.0},
    ]
    render(r, bench, out, d / "page" / "fig", "test")
    text = out.read_text()
    served = r["systems"][0]
    assert f"reaches accuracy {100 * served['accuracy']:.1f}%" in text
    for section in (
        "## 1. Accuracy",
        "## 1b. Paired comparisons",
        "## 2. Experts",
        "## 3. Decision control",
        "## 4. Gates",
        "## 5. Robustness",
        "## 6. Cost",
        "## 7. Confusion",
    ):
        assert section in text
    assert "| MoE, served default set | " in text and "1000 |" in text
    figs = sorted(p.name for p in (d / "page" / "fig").iterdir())
    assert figs == [
        "accuracy.png",
        "confusion.png",
        "coverage.png",
        "det.png",
        "pareto.png",
        "per_class_f1.png",
        "robustness.png",
        "roc.png",
    ]
    assert all((d / "page" / "fig" / f).stat().st_size > 5000 for f in figs)
    assert "](fig/roc.png)" in text


def test_paired_statistics_match_a_hand_count():
    from math import comb

    from moe_training.report import paired

    truth = [0] * 200
    a = [0] * 150 + [1] * 50  # a right on 150
    b = [0] * 130 + [1] * 20 + [0] * 10 + [1] * 40  # b right on 140: 130 both, 10 only b, 20 only a
    r = paired(a, b, truth)
    assert (r["only_a"], r["only_b"]) == (20, 10)
    assert r["diff"] == pytest.approx(0.05)
    # exact two-sided McNemar: 2 * P(X <= 10), X ~ Binomial(30, 1/2)
    assert r["p"] == pytest.approx(min(1.0, 2 * sum(comb(30, k) for k in range(11)) / 2**30))
    assert r["low"] < r["diff"] < r["high"]
    assert r["verdict"] == ("wins" if r["low"] > 0 else "ties")
    # swapping the sides mirrors the interval; identical systems tie with p = 1
    s = paired(b, a, truth)
    assert s["diff"] == pytest.approx(-0.05) and s["only_a"] == 10
    same = paired(a, a, truth)
    assert (same["verdict"], same["p"], same["low"], same["high"]) == ("ties", 1.0, 0.0, 0.0)
    big = paired([0] * 150 + [1] * 50, [0] * 100 + [1] * 100, truth)
    assert big["verdict"] == "wins" and big["low"] > 0.15


def test_the_accurate_path_section_is_drawn_from_its_json():
    """Section 9's accurate-path table and verdicts come from the recorded JSON files: every recipe
    with steps is a row, the per-tensor re-export is not, and the paired verdicts follow the intervals."""
    import json

    from moe_training.report import _section_accurate

    results = Path(__file__).resolve().parents[2] / "docs" / "results"
    accurate = json.loads((results / "clinc150-accurate.json").read_text())
    paired = json.loads((results / "clinc150-accurate-vs-frozen.json").read_text())
    text = "\n".join(_section_accurate(accurate, paired)).replace("\n\n", "\n")
    with_steps = [r for r in accurate["recipes"] if "steps" in r]
    lines = text.splitlines()
    recipes = lines[: next(i for i, line in enumerate(lines) if line.startswith("| budget "))]
    rows = [line for line in recipes if line.startswith("| ") and not line.startswith("| trunk ")]
    assert len(rows) == 1 + len(with_steps)  # the frozen trunk, then one row per recipe

    def tables(header: str) -> list[int]:  # the data rows of each table whose header starts so
        sizes = []
        for start in (i for i, line in enumerate(lines) if line.startswith(header)):
            body = lines[start + 2 :]
            sizes.append(next((i for i, line in enumerate(body) if not line.startswith("| ")), len(body)))
        return sizes

    assert tables("| budget ") == [len(accurate["mpnet_budgets"]["rows"])]  # one row per in-scope budget
    runs = [accurate[k] for k in ("mpnet_trade_offs", "mpnet_replication")]
    assert tables("| trade-off ") == [len(r["rows"]) for r in runs]  # and per trade-off, in each run
    chosen = with_steps[-1]
    assert f"{100 * chosen['test']['accuracy_best_guess']:.1f} %" in text
    best, label = paired["test"]["best"]["interval95"], paired["test"]["label"]["interval95"]
    assert ("the fine-tuned trunk wins" in text) == (best[0] > 0 or label[0] > 0)
    assert ("no difference" in text) == (best[0] <= 0 <= best[1] or label[0] <= 0 <= label[1])
    assert _section_accurate(None, paired) == []
