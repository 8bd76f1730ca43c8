"""Writing expert bundles and shared trunks in the layout the service loads.

Model root layout (the same for candidates and for the served `models/`):
  trunks/<trunk-id>/{trunk.onnx, tokenizer.json, trunk.json}
  <bundle>/{card.json, model.onnx | head.onnx, tokenizer.json (full models only)}
A head bundle names its trunk by id and content hash; the tokenizer is the trunk's.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from .data import sha256_file

CARD_SCHEMA = 1


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_trunk(root: Path, name: str, graph: Path, tokenizer_json: Path, meta: dict) -> str:
    """Install a trunk graph under root/trunks/<name>-<sha12>/ and return its id."""
    sha = sha256_file(graph)
    trunk_id = f"{name}-{sha[:12]}"
    d = root / "trunks" / trunk_id
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(graph, d / "trunk.onnx")
    shutil.copyfile(tokenizer_json, d / "tokenizer.json")
    write_json(
        d / "trunk.json",
        {
            "schema": CARD_SCHEMA,
            "id": trunk_id,
            "graph": {"file": "trunk.onnx", "sha256": sha},
            "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(d / "tokenizer.json")},
            **meta,
        },
    )
    return trunk_id


def write_bundle(
    root: Path,
    cls: str,
    algorithm: str,
    graph: Path,
    *,
    kind: str,
    max_seq_len: int,
    provenance: dict,
    selftest: list[dict],
    trunk: dict | None = None,
    tokenizer_json: Path | None = None,
    embedding_dim: int | None = None,
) -> Path:
    """Write one bundle folder `<class-slug>--<algorithm>`; the card has no threshold yet
    (`moe calibrate` sets it on the served artefact, in the serving runtime)."""
    d = root / f"{slug(cls)}--{algorithm}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    graph_file = "head.onnx" if kind == "head" else "model.onnx"
    shutil.copyfile(graph, d / graph_file)
    sha = sha256_file(d / graph_file)
    card = {
        "schema": CARD_SCHEMA,
        "class": cls,
        "algorithm": algorithm,
        "kind": kind,
        "version": f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{sha[:8]}",
        "graph": {"file": graph_file, "sha256": sha},
        "max_seq_len": max_seq_len,
        "threshold": None,
        "metrics": {},
        "provenance": provenance,
        "selftest": selftest,
    }
    if kind == "head":
        card["trunk"] = trunk
        card["embedding_dim"] = embedding_dim
    else:
        shutil.copyfile(tokenizer_json, d / "tokenizer.json")
        card["tokenizer"] = {"file": "tokenizer.json", "sha256": sha256_file(d / "tokenizer.json")}
    write_json(d / "card.json", card)
    return d
