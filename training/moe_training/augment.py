"""Training-time text: what real traffic looks like (augmented titles) and unlabelled in-domain text
for distillation (chunks of the train rows' summaries).

The data set is lower-cased without punctuation; traffic is cased, punctuated, has typos and extra
words. The augmentations here are drawn with their own seed and their own phrase lists, NOT the
report's (crates/tools/src/report.rs `perturbations`), so the report's perturbed test titles stay unseen
phrasings: a gain there is robustness, not memorised wrappers.
"""

from __future__ import annotations

import random

PREFIXES = ["how do i", "what is the best way to", "help me", "looking for tips:", "question:", "ok so"]
SUFFIXES = ["quickly", "for beginners", "at home", "any advice", "thanks", "in 2024", "without help"]
KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"


def typo(word: str, rng: random.Random) -> str:
    """One edit: drop, double, swap two neighbours or replace a letter."""
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    op = rng.randrange(4)
    if op == 0:
        return word[:i] + word[i + 1 :]
    if op == 1:
        return word[:i] + word[i] + word[i:]
    if op == 2:
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    return word[:i] + rng.choice(KEYBOARD) + word[i + 1 :]


def augment(text: str, rng: random.Random) -> str:
    """One noisy variant of a title: each of typos, casing/punctuation, extra words and dropping
    "how to" applies with its own chance, so variants mix them."""
    words = text.split()
    if rng.random() < 0.5:
        words = [typo(w, rng) if rng.random() < 0.25 else w for w in words]
    if rng.random() < 0.3 and words[:2] == ["how", "to"] and len(words) > 3:
        words = words[2:]
    if rng.random() < 0.4:
        prefix = rng.choice(PREFIXES).split()
        if prefix[-1] in ("i", "to") and words[:2] == ["how", "to"]:
            words = words[2:]  # "how do i" / "... way to" replace "how to"
        words = prefix + words
    if rng.random() < 0.4:
        words = words + rng.choice(SUFFIXES).split()
    out = " ".join(words)
    if rng.random() < 0.5:
        out = out.title() if rng.random() < 0.5 else out[:1].upper() + out[1:]
        out += rng.choice(["?", ".", "!", ""])
    return out


def augmented(texts: list[str], copies: int, seed: int) -> list[str]:
    """`copies` noisy variants of every text, in order (text 0's variants first)."""
    rng = random.Random(seed)
    return [augment(t, rng) for t in texts for _ in range(copies)]


def chunks(passages: list[str], seed: int, low: int = 6, high: int = 14) -> list[str]:
    """Consecutive pieces of `low`..`high` words cut from each passage (title-sized unlabelled text)."""
    rng = random.Random(seed)
    out = []
    for p in passages:
        words = p.split()
        i = 0
        while len(words) - i >= low:
            n = rng.randint(low, high)
            out.append(" ".join(words[i : i + n]))
            i += n
    return out
