"""Loading a labelled text CSV into fixed train / val / test splits."""

from __future__ import annotations

import csv
import hashlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")
csv.field_size_limit(sys.maxsize)


@dataclass
class Split:
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    # More columns of the same rows, when asked for (`load_dataset(extra_cols=...)`).
    extra: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Dataset:
    classes: list[str]
    splits: dict[str, Split]
    sha256: str
    source: str
    split_source: str  # "column:<name>" or "stratified-seed-<n>"

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (data sets, graphs, tokenizers: the one hash helper of the trainer)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stratified_split(labels: list[str], seed: int, fractions=(0.8, 0.1, 0.1)) -> list[str]:
    """Assign each row to a split, per class, reproducibly (sorted classes, one generator)."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    out = [""] * len(labels)
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        n = len(idx)
        n_train = round(n * fractions[0])
        n_val = round(n * fractions[1])
        for j, i in enumerate(idx):
            out[i] = "train" if j < n_train else ("val" if j < n_train + n_val else "test")
    return out


def load_dataset(
    path: str | Path,
    text_col: str = "title",
    label_col: str = "label",
    split_col: str | None = "split",
    seed: int = 42,
    extra_cols: tuple[str, ...] = (),
) -> Dataset:
    """Read a CSV. Rows with an empty label are skipped (multi-label / ambiguous rows).
    `extra_cols` are kept beside each row's text (empty where the column is absent).

    When `split_col` is None or absent from the header, a stratified seeded 80/10/10 split is made,
    so a corpus such as the notebook's `corpus_CAT.csv` (`title`, `categorie`) works unchanged.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in (text_col, label_col):
            if col not in header:
                raise ValueError(f"{path}: column {col!r} not found (columns: {', '.join(header)})")
        rows = [r for r in reader if (r.get(label_col) or "").strip() and (r.get(text_col) or "").strip()]
    texts = [r[text_col].strip() for r in rows]
    labels = [r[label_col].strip() for r in rows]
    if split_col and split_col in header:
        split_of = [r[split_col].strip() for r in rows]
        split_source = f"column:{split_col}"
    else:
        split_of = stratified_split(labels, seed)
        split_source = f"stratified-seed-{seed}"
    splits = {s: Split(extra={c: [] for c in extra_cols}) for s in SPLITS}
    for r, t, y, s in zip(rows, texts, labels, split_of):
        if s in splits:
            splits[s].texts.append(t)
            splits[s].labels.append(y)
            for c in extra_cols:
                splits[s].extra[c].append(r.get(c) or "")
    classes = sorted(set(splits["train"].labels))
    if len(classes) < 2:
        raise ValueError(f"{path}: need at least two classes in the train split, found {classes}")
    return Dataset(classes, splits, sha256_file(path), str(path), split_source)
