"""training/scripts/oos_scores.py: its Wilson bound and declines agree with statsmodels' figures that
`moe fit`'s own (crates/tools open_world, core stats::roc) are checked against; the cut declines
exactly the k lowest out-of-scope scores; and on a small `moe fit`-shaped folder and embedding cache
it scores val alone (test rows carry NaN embeddings, which would spoil every figure if read) and
puts the out-of-scope val texts below the in-scope ones."""

import csv
import json
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import oos_scores  # noqa: E402


def test_wilson_bound_and_declines_match_statsmodels():
    # statsmodels 0.15 proportion_confint(k, 100, alpha=0.1, method="wilson")[0], as in stats::roc
    assert abs(oos_scores.wilson_lower(86, 100) - 0.7934062180620008) < 1e-12
    assert abs(oos_scores.wilson_lower(87, 100) - 0.8048062640785282) < 1e-12
    assert oos_scores.declines_needed(100, 0.8) == 87
    assert oos_scores.declines_needed(100, 0.7) == 78


def test_the_cut_declines_the_k_lowest():
    s_oos = np.array([0.4, 0.1, 0.3, 0.2])
    s_in = np.array([0.16, 0.26, 0.36, 0.5])
    assert oos_scores.declined_at(s_in, s_oos, 1) == 0.0  # cut halfway between 0.1 and 0.2
    assert oos_scores.declined_at(s_in, s_oos, 2) == 0.25
    assert oos_scores.declined_at(s_in, s_oos, 3) == 0.5
    assert oos_scores.declined_at(s_in, s_oos, 4) == 0.75  # all: just above the highest
    # a tie with the k-th is declined too (open_world::cut_above): the cut lies above 0.2
    assert oos_scores.declined_at(np.array([0.2, 0.21, 0.3]), np.array([0.1, 0.2, 0.2, 0.24]), 2) == 2 / 3


def _write_cache(folder: Path, emb: dict[str, np.ndarray]) -> None:
    dim = len(next(iter(emb.values())))
    out = bytearray(b"MOEEMB01" + struct.pack("<I", dim))
    for text, v in emb.items():
        t = text.encode()
        out += struct.pack("<I", len(t)) + t + np.asarray(v, dtype="<f4").tobytes()
    folder.mkdir()
    (folder / "x.emb").write_bytes(bytes(out))


def test_val_only_and_out_of_scope_scores_lowest(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    dim, centres = 8, np.eye(8)[:3] * 3
    rows, emb = [], {}
    for split, n in (("train", 30), ("val", 10), ("test", 10)):
        for k, c in enumerate(centres):
            for i in range(n):
                text = f"{split} {k} {i}"
                rows.append({"text": text, "label": f"c{k}", "split": split})
                emb[text] = np.full(dim, np.nan) if split == "test" else c + rng.normal(0, 0.3, dim)
        for i in range(6 if split != "test" else 10):  # out of scope: on none of the class directions
            text = f"{split} oos {i}"
            rows.append({"text": text, "label": "oos", "split": split})
            emb[text] = np.full(dim, np.nan) if split == "test" else np.r_[np.zeros(3), rng.normal(0, 1.5, dim - 3)]
    with open(tmp_path / "data.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    _write_cache(tmp_path / "cache", emb)
    for k, c in enumerate(centres):  # one linear expert per class, as `moe fit` writes them
        d = tmp_path / "fit" / f"c{k}--fit-logreg"
        d.mkdir(parents=True)
        (d / "head.json").write_text(json.dumps({"weights": list(c / 3), "bias": -0.5}))
        card = {"class": f"c{k}", "kind": "linear", "graph": {"file": "head.json"}, "trunk": {"id": "t"}}
        (d / "card.json").write_text(json.dumps(card))
    out = tmp_path / "out.json"
    argv = ["oos_scores.py", str(out), "--fit", str(tmp_path / "fit"), "--cache", str(tmp_path / "cache")]
    monkeypatch.setattr(sys, "argv", argv + ["--data", str(tmp_path / "data.csv"), "--min-oos-recall", "0.5"])
    oos_scores.main()
    record = json.loads(out.read_text())
    assert record["val_rows"] == {"in_scope": 30, "out_of_scope": 6}
    assert record["trunk"] == "t"
    assert record["out_of_scope_declines"] == oos_scores.declines_needed(6, 0.5)
    for name, t in record["scores"].items():
        assert t["val_auroc"] > 0.9, name  # finite, and out of scope below in scope
        assert np.isfinite(t["val_in_scope_declined"]), name
    assert "declined_minus_reference" not in record["scores"][oos_scores.REFERENCE]
