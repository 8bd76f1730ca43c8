import csv

import pytest
from conftest import DATA
from moe_training.data import load_dataset, stratified_split


def test_wikihow_splits_as_given():
    ds = load_dataset(DATA)
    assert len(ds.classes) == 19
    assert (len(ds["train"].texts), len(ds["val"].texts), len(ds["test"].texts)) == (4611, 580, 580)
    assert ds.split_source == "column:split"
    assert len(ds.sha256) == 64


def test_notebook_corpus_without_split_column(tmp_path):
    # The notebook's corpus_CAT.csv layout: title, url, categorie; no split column.
    p = tmp_path / "corpus_CAT.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["title", "url", "categorie"])
        for i in range(60):
            w.writerow([f"how to do thing {i}", f"u{i}", ["Food", "Travel", "Health"][i % 3]])
        w.writerow(["", "u", "Food"])  # empty text is skipped
    ds = load_dataset(p, text_col="title", label_col="categorie", split_col="split")
    assert ds.classes == ["Food", "Health", "Travel"]
    assert ds.split_source == "stratified-seed-42"
    n = {s: len(ds[s].texts) for s in ("train", "val", "test")}
    assert n == {"train": 48, "val": 6, "test": 6}
    for s in ("train", "val", "test"):
        assert sorted(set(ds[s].labels)) == ["Food", "Health", "Travel"], "stratified"
    again = load_dataset(p, text_col="title", label_col="categorie")
    assert again["val"].texts == ds["val"].texts, "seeded"
    # Extra columns follow their rows through the split (the teacher reads train summaries so).
    kept = load_dataset(p, text_col="title", label_col="categorie", extra_cols=("url", "absent"))
    for s in ("train", "val", "test"):
        assert kept[s].extra["url"] == [f"u{t.split()[-1]}" for t in kept[s].texts]
        assert kept[s].extra["absent"] == [""] * len(kept[s].texts)


def test_missing_column_is_a_clear_error(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("text,label\na,b\n")
    with pytest.raises(ValueError, match="column 'title' not found"):
        load_dataset(p)


def test_stratified_split_fractions():
    s = stratified_split(["a"] * 10 + ["b"] * 20, seed=1)
    assert s.count("train") == 24 and s.count("val") == 3 and s.count("test") == 3
