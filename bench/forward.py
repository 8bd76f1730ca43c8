"""Per-title forward time of trunk graphs in onnxruntime (Python, the library the service loads),
one intra-op thread, test-split titles one per run; the variants interleaved in rounds, and every
variant's outputs compared with the first's.

    .venv/bin/python bench/forward.py GRAPH [GRAPH ...] [--unfused-layer-norm] [--batch N] [--titles 256] [--rounds 5]
    .venv/bin/python bench/forward.py --decisions models      # served decisions, fused vs not

Each GRAPH is a trunk folder (trunk.onnx + tokenizer.json) or a .onnx file (tokenized with the first
folder's tokenizer). `--unfused-layer-norm` adds, for each graph, a variant with onnxruntime's
SkipLayerNormFusion disabled (what a trunk computes after `simplify`'s residual sums; a graph that
has them is not fused either way). `--batch N` adds, for each graph, the titles run N at a time,
padded to the longest of each batch, in file order and sorted by token count (what batching costs
in padding: a per-row int8 graph gives each title the same numbers either way). Prints one JSON line
per variant: median and best microseconds per title over the rounds, and the largest |difference|
of its outputs from the first variant's.

`--decisions ROOT` instead scores every val and test title with the registry's experts of ROOT
(linear heads on one trunk, spelling as the service does it) with SkipLayerNormFusion on and off, and
prints how many threshold decisions and best guesses differ (a root exported before the residual sums,
e.g. the models/ of 2026-12-05 03:00: 4 of 22,040).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="*")
    ap.add_argument("--unfused-layer-norm", action="store_true")
    ap.add_argument("--titles", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=0, help="also run the titles N at a time (padded)")
    ap.add_argument("--decisions", metavar="ROOT", help="compare served decisions, fused vs unfused")
    args = ap.parse_args()
    if args.decisions:
        return decisions(Path(args.decisions))
    paths = [Path(g) / "trunk.onnx" if Path(g).is_dir() else Path(g) for g in args.graphs]
    tok_dir = next(Path(g) for g in args.graphs if Path(g).is_dir())
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=128)
    data = ROOT / "data" / "wikihow19_titles.csv"
    titles = [r["title"] for r in csv.DictReader(open(data)) if r["split"] == "test"][: args.titles]
    variants = []
    for p in paths:
        for disabled in [[]] + ([["SkipLayerNormFusion"]] if args.unfused_layer_norm else []):
            s = one_thread(p, disabled)
            names = {i.name for i in s.get_inputs()}
            fs = [{k: v for k, v in title_feed(tok, t).items() if k in names} for t in titles]
            # (name, session, feeds, batches or None, index of the same graph run one title at a time)
            variants.append((str(p) + (" (SkipLayerNormFusion off)" if disabled else ""), s, fs, None, None))
            alone = len(variants) - 1
            if args.batch > 1 and not disabled:
                by_len = sorted(range(len(titles)), key=lambda i: len(fs[i]["input_ids"][0]))
                for how, order in (("file order", list(range(len(titles)))), ("sorted by length", by_len)):
                    batches = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]
                    bf = [padded([fs[i] for i in b]) for b in batches]
                    variants.append((f"{p} (batch {args.batch}, {how})", s, bf, batches, alone))
    outs = [per_title(s, fs, batches, len(titles)) for _, s, fs, batches, _ in variants]
    times = {name: [] for name, *_ in variants}
    for _ in range(args.rounds):
        for name, s, fs, *_ in variants:
            t0 = time.perf_counter()
            for f in fs:
                s.run(None, f)
            times[name].append((time.perf_counter() - t0) / len(titles) * 1e6)
    for (name, *_, alone), out in zip(variants, outs):
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outs[0], out))
        row = {
            "graph": name,
            "titles": len(titles),
            "rounds": args.rounds,
            "us_per_title_median": round(statistics.median(times[name]), 1),
            "us_per_title_best": round(min(times[name]), 1),
            "max_abs_diff_vs_first": diff,
        }
        if alone is not None:
            row["max_abs_diff_vs_alone"] = max(float(np.abs(a - b).max()) for a, b in zip(outs[alone], out))
        print(json.dumps(row))


def padded(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Single-title feeds as one batch, zero-padded to the longest (mask 0 on the padding)."""
    n = max(f["input_ids"].shape[1] for f in feeds)
    pad = lambda a: np.pad(a, ((0, 0), (0, n - a.shape[1])))  # noqa: E731
    return {k: np.concatenate([pad(f[k]) for f in feeds]) for k in feeds[0]}


def per_title(s: ort.InferenceSession, feeds, batches, n: int) -> list[np.ndarray]:
    """Each title's output row, in title order, whether it ran alone or in a batch."""
    if batches is None:
        return [s.run(None, f)[0] for f in feeds]
    out = [None] * n
    for f, b in zip(feeds, batches):
        rows = s.run(None, f)[0]
        for j, i in enumerate(b):
            out[i] = rows[j : j + 1]
    return out


def one_thread(graph: Path, disabled: list[str]) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def title_feed(tok: Tokenizer, text: str) -> dict[str, np.ndarray]:
    """One title as a batch of one (no padding)."""
    ids = np.array([tok.encode(text).ids], np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def decisions(root: Path) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "training"))
    from moe_training.spelling import correct, read_lexicon

    reg = json.loads((root / "registry.json").read_text())["experts"]
    classes = list(reg)
    cards = [json.loads((root / reg[c] / "card.json").read_text()) for c in classes]
    if any(c["kind"] != "linear" for c in cards) or len({c["trunk"]["id"] for c in cards}) != 1:
        raise SystemExit(f"{root}: --decisions takes a set of linear heads on one trunk")
    heads = [json.loads((root / reg[c] / card["graph"]["file"]).read_text()) for c, card in zip(classes, cards)]
    w, b = np.array([h["weights"] for h in heads]), np.array([h["bias"] for h in heads])
    thresholds = np.array([c["threshold"]["value"] for c in cards])
    tdir = root / "trunks" / cards[0]["trunk"]["id"]
    meta = json.loads((tdir / "trunk.json").read_text())
    lexicon = read_lexicon(tdir / meta["spelling"]["file"]) if meta.get("spelling") else None
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    tok.enable_truncation(max_length=cards[0]["max_seq_len"])
    fused, unfused = (one_thread(tdir / "trunk.onnx", d) for d in ([], ["SkipLayerNormFusion"]))
    rows = [r for r in csv.DictReader(open(ROOT / "data" / "wikihow19_titles.csv")) if r["split"] in ("val", "test")]
    flipped = guesses = 0
    worst = 0.0
    for r in rows:
        feed = title_feed(tok, correct(r["title"], lexicon) if lexicon else r["title"])
        p, q = (1 / (1 + np.exp(-(w @ s.run(None, feed)[0][0] + b))) for s in (fused, unfused))
        worst = max(worst, float(np.abs(p - q).max()))
        flipped += int(((p >= thresholds) != (q >= thresholds)).sum())
        guesses += int(p.argmax() != q.argmax())
    print(
        json.dumps(
            {
                "titles": len(rows),
                "decisions": len(rows) * len(classes),
                "threshold_decisions_differ": flipped,
                "best_guesses_differ": guesses,
                "max_abs_probability_diff": worst,
            }
        )
    )


if __name__ == "__main__":
    main()
