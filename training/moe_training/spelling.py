"""Spelling correction before tokenization: the lexicon a trunk (or a full-model bundle) names, and
the correction `moe` applies to every text before its tokenizer (crates/core/src/inference/tokenize.rs).

This module is the Rust corrector's independent oracle (the parity test runs both on the same
texts) and builds and attaches the lexicon.

The rule (both implementations, keep them identical):
- a *word* is a maximal run of alphanumeric characters; only the first `MAX_WORDS` words of a text
  are looked at (the tokenizer truncates at 128 tokens anyway, and this bounds the work a hostile
  text can cause);
- a word is left alone unless it is 3..=24 ASCII letters, not all upper case (acronyms), and its
  lower case is not in the lexicon;
- otherwise its candidates are the lexicon words one edit away (drop, swap two neighbours, replace
  or insert a letter a-z) that were *seen in the training text* (count >= 1) and have 3+ letters;
  the most frequent wins, ties to the smallest word; none: the word stays;
- the correction keeps the word's case shape (Capitalised stays Capitalised).

Lexicon file: `# ...` comment lines, then `word<TAB>count` lines (lower-case a-z words). Count 0
marks a word that is known (never corrected) but never offered as a correction (dictionary and
tokenizer vocabulary words not seen in the training text).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

from .bundle import write_json
from .data import sha256_file

MAX_WORDS = 128
MIN_LEN, MAX_LEN = 3, 24
LETTERS = "abcdefghijklmnopqrstuvwxyz"
FILE = "lexicon.txt"
WORD = re.compile(r"[^\W_]+")
ASCII_WORD = re.compile(r"[A-Za-z]+")


def read_lexicon(path: Path) -> dict[str, int]:
    words = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        word, _, count = line.partition("\t")
        if not re.fullmatch(r"[a-z]+", word) or not count.isdigit():
            raise ValueError(f"{path}:{n}: expected `word<TAB>count`, got {line!r}")
        words[word] = int(count)
    return words


def edits1(word: str) -> set[str]:
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    drops = [a + b[1:] for a, b in splits if b]
    swaps = [a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1]
    replaces = [a + c + b[1:] for a, b in splits if b for c in LETTERS]
    inserts = [a + c + b for a, b in splits for c in LETTERS]
    return set(drops + swaps + replaces + inserts)


def correct_word(word: str, lexicon: dict[str, int]) -> str:
    if not (MIN_LEN <= len(word) <= MAX_LEN) or not ASCII_WORD.fullmatch(word) or word.isupper():
        return word
    low = word.lower()
    if low in lexicon:
        return word
    cands = [c for c in edits1(low) if len(c) >= MIN_LEN and lexicon.get(c, 0) >= 1]
    if not cands:
        return word
    best = min(cands, key=lambda c: (-lexicon[c], c))
    return best[0].upper() + best[1:] if word[0].isupper() else best


def correct(text: str, lexicon: dict[str, int]) -> str:
    out, last = [], 0
    for n, m in enumerate(WORD.finditer(text)):
        if n >= MAX_WORDS:
            break
        out.append(text[last : m.start()])
        out.append(correct_word(m.group(0), lexicon))
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def build_lexicon(train_texts: list[str], dictionary: Path, tokenizer_json: Path | None, source: str) -> str:
    """The lexicon file's text: counts of the training text's words, and (count 0) the
    dictionary's and the tokenizer vocabulary's whole words."""
    counts = Counter(w for t in train_texts for w in re.findall(r"[a-z]+", t.lower()))
    known = dict(counts)
    dict_words = dictionary.read_text(encoding="utf-8", errors="replace").split()
    vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"] if tokenizer_json else {}
    for w in [*dict_words, *vocab]:
        w = w.lower()
        if re.fullmatch(r"[a-z]+", w):
            known.setdefault(w, 0)
    head = [
        "# moe spelling lexicon v1: word<TAB>count (count: occurrences in the training text; 0: known, never",
        "# offered as a correction). Built by `python -m moe_training lexicon build` from:",
        f"#   training text: {source} ({len(counts)} words, {sum(counts.values())} occurrences)",
        f"#   dictionary: {dictionary.name} (SCOWL via Debian wamerican; licence in data/words/COPYRIGHT)",
        f"#   tokenizer vocabulary: {tokenizer_json.name if tokenizer_json else 'none'}",
    ]
    return "\n".join(head + [f"{w}\t{known[w]}" for w in sorted(known)]) + "\n"


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace (never write through) a file: model roots hard-link their files (linearize)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def attach(lexicon: Path, root: Path) -> list[str]:
    """Name `lexicon` as the spelling step of every trunk and full-model bundle under `root` (a copy
    beside each tokenizer, its hash in trunk.json / card.json). Returns what was changed."""
    data = Path(lexicon).read_bytes()
    read_lexicon(lexicon)  # refuse a malformed file before touching anything
    targets = [(d, d / "trunk.json") for d in sorted((root / "trunks").glob("*")) if (d / "trunk.json").is_file()]
    for d in sorted(p for p in root.iterdir() if (p / "card.json").is_file()):
        if json.loads((d / "card.json").read_text()).get("kind") == "full":
            targets.append((d, d / "card.json"))
    changed = []
    for d, card_path in targets:
        _write_atomic(d / FILE, data)
        card = json.loads(card_path.read_text())
        card["spelling"] = {"file": FILE, "sha256": sha256_file(d / FILE)}
        write_json(card_path, card)  # writes a new file and renames it over the old one
        changed.append(str(d.relative_to(root)))
    return changed
