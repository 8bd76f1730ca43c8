"""Turn the trainer's one-node Gemm heads into `linear` heads that `moe` computes in Rust.

A Gemm head gives logits = x·W + B (W: [dim, 2]); its positive probability is
sigmoid((W[:,1] - W[:,0])·x + B[1] - B[0]), so `head.json` holds that difference as `weights`
and `bias`. Everything else of the card (class, threshold, metrics, self-test) stays: the self-test
checks the converted head on reload. Trunks are hard-linked (copied across file systems).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .bundle import write_json
from .data import sha256_file


def gemm_weights(path: Path) -> tuple[np.ndarray, float]:
    """(weights, bias) of a one-node Gemm head; ValueError for any other graph."""
    g = onnx.load(str(path)).graph
    if len(g.node) != 1 or g.node[0].op_type != "Gemm":
        raise ValueError(f"{path} is not a one-node Gemm head")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in g.node[0].attribute}
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise ValueError(f"{path}: only plain Gemm heads are converted")
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    w, b = init[g.node[0].input[1]], init[g.node[0].input[2]]
    if attrs.get("transB", 0):
        w = w.T
    diff = (w[:, 1] - w[:, 0]).astype(np.float32)
    return diff, float(np.float32(b.reshape(-1)[1] - b.reshape(-1)[0]))


def _link_tree(src: Path, dst: Path) -> None:
    for p in src.rglob("*"):
        q = dst / p.relative_to(src)
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
            continue
        q.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, q)
        except OSError:
            shutil.copyfile(p, q)


def linearize(src: Path, out: Path, bundles: list[str] | None = None) -> list[str]:
    """Write a model root `out` with every Gemm head bundle of `src` as a linear bundle (other
    bundles, trunks and registry.json linked unchanged). Returns the converted bundle names."""
    out.mkdir(parents=True, exist_ok=True)
    converted = []
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        card_path = d / "card.json"
        card = json.loads(card_path.read_text()) if card_path.exists() else None
        if card is None or card["kind"] != "head" or (bundles and d.name not in bundles):
            _link_tree(d, out / d.name)
            continue
        try:
            weights, bias = gemm_weights(d / card["graph"]["file"])
        except ValueError:
            _link_tree(d, out / d.name)
            continue
        o = out / d.name
        if o.exists():
            shutil.rmtree(o)
        o.mkdir(parents=True)
        write_json(o / "head.json", {"weights": [float(v) for v in weights], "bias": bias})
        card["kind"] = "linear"
        card["graph"] = {"file": "head.json", "sha256": sha256_file(o / "head.json")}
        card.setdefault("provenance", {})["linearized_from"] = {
            "file": "head.onnx",
            "graph_sha256": sha256_file(d / "head.onnx"),
        }
        write_json(o / "card.json", card)
        converted.append(d.name)
    for f in src.glob("*.json"):
        shutil.copyfile(f, out / f.name)
    return converted
