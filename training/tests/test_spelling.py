"""spelling: the lexicon is built from the train text only, attached to trunks and full bundles
without writing through hard links, and corrects by the documented rule (tests/spelling.rs checks
the Rust corrector against this one on the shipped lexicon)."""

import json
import os
from pathlib import Path

import pytest
from moe_training.data import sha256_file
from moe_training.spelling import attach, build_lexicon, correct, read_lexicon


def test_build_counts_the_training_text_and_knows_dictionary_words(tmp_path: Path):
    d = tmp_path / "words"
    d.write_text("Water\nplants\naren't\nzebra\n")
    tok = tmp_path / "tokenizer.json"
    tok.write_text(json.dumps({"model": {"vocab": {"[CLS]": 0, "##ing": 1, "quokka": 2}}}))
    text = build_lexicon(["How to water plants", "water the plants, then water again"], d, tok, "unit")
    lex_file = tmp_path / "lexicon.txt"
    lex_file.write_text(text)
    lex = read_lexicon(lex_file)
    assert lex["water"] == 3 and lex["plants"] == 2 and lex["how"] == 1
    assert lex["zebra"] == 0 and lex["quokka"] == 0  # known, never offered
    assert "aren" not in lex and "arent" not in lex and "ing" not in lex and "cls" not in lex
    words = [line.split("\t")[0] for line in text.splitlines() if not line.startswith("#")]
    assert words == sorted(words)


def test_the_rule():
    lex = {"how": 9, "to": 9, "water": 5, "waiter": 5, "plants": 3, "planets": 1, "known": 0, "vacuum": 2}
    assert correct("how to watre air plnats", lex) == "how to water air plants"
    assert correct("How to Vacum, Plants?", lex) == "How to Vacuum, Plants?"
    assert correct("hwo", lex) == "how"
    for t in ["knwn known", "PLNTS", "hw", "plnts2", "plnätes", "", "  ,  "]:
        assert correct(t, lex) == t
    assert correct("carx", {"cart": 2, "card": 2}) == "card"  # ties: the smaller word


def test_bad_lexicons_are_refused(tmp_path: Path):
    for bad in ["Word\t1\n", "word 1\n", "w\tx\n"]:
        p = tmp_path / "bad.txt"
        p.write_text(bad)
        with pytest.raises(ValueError, match="expected `word<TAB>count`"):
            read_lexicon(p)


def test_attach_names_the_lexicon_in_trunks_and_full_bundles_only(tmp_path: Path):
    root = tmp_path / "root"
    (root / "trunks" / "t1").mkdir(parents=True)
    (root / "trunks" / "t1" / "trunk.json").write_text(json.dumps({"id": "t1"}))
    for name, kind in [("a--full", "full"), ("b--head", "linear")]:
        (root / name).mkdir()
        (root / name / "card.json").write_text(json.dumps({"kind": kind}))
    # A hard-linked copy of the trunk card (linearize links files): attach must not write through.
    other = tmp_path / "other.json"
    os.link(root / "trunks" / "t1" / "trunk.json", other)
    lex = tmp_path / "lexicon.txt"
    lex.write_text("# x\nhow\t3\n")
    assert attach(lex, root) == ["trunks/t1", "a--full"]
    for d, card in [(root / "trunks" / "t1", "trunk.json"), (root / "a--full", "card.json")]:
        c = json.loads((d / card).read_text())
        assert c["spelling"] == {"file": "lexicon.txt", "sha256": sha256_file(lex)}
        assert (d / "lexicon.txt").read_bytes() == lex.read_bytes()
    assert "spelling" not in json.loads((root / "b--head" / "card.json").read_text())
    assert json.loads(other.read_text()) == {"id": "t1"}
