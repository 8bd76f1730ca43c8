"""Shared by the Python peers: the model root's experts, in the service's class order."""

import json
import os
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

ROOT = Path(os.environ.get("MOE_MODELS", "models"))


def experts():
    """(class, card, bundle dir, trunk dir or None), sorted by class like the service."""
    reg = json.loads((ROOT / "registry.json").read_text())
    out = []
    for cls, bundle in sorted(reg["experts"].items()):
        card = json.loads((ROOT / bundle / "card.json").read_text())
        trunk = ROOT / "trunks" / card["trunk"]["id"] if card["kind"] in ("head", "linear") else None
        out.append((cls, card, ROOT / bundle, trunk))
    return out


def tokenizer(path: Path, max_len: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    return tok


def feeds(tok: Tokenizer, text: str) -> dict:
    e = tok.encode(text)
    return {
        "input_ids": np.array([e.ids], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids], dtype=np.int64),
    }


def answer(classes, probs, thresholds):
    passed = [p >= t for p, t in zip(probs, thresholds)]
    best = int(np.argmax(probs))
    label = max((i for i in range(len(probs)) if passed[i]), key=lambda i: probs[i], default=None)
    return {
        "results": [
            {
                "label": None if label is None else classes[label],
                "abstained": label is None,
                "best_guess": classes[best],
                "experts": [
                    {"class": c, "probability": float(p), "threshold": float(t), "passed": bool(ok)}
                    for c, p, t, ok in zip(classes, probs, thresholds, passed)
                ],
            }
        ]
    }
