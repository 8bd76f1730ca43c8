"""CLINC150: the fitted MoE (served by `moe serve`) against one global logistic regression on the
same frozen trunk, on the in-scope test rows, with paired bootstrap intervals.

Usage (from the repository root, with a fitted root and a server on it):
  target/release/moe fit --data data/clinc150/clinc150.csv --oos-label oos --drop-conflicts --out /tmp/clinc-fit
  target/release/moe serve --models /tmp/clinc-fit --state /tmp/clinc-state --port 18500 &
  .venv/bin/python training/scripts/clinc_vs_global.py /tmp/clinc-fit http://127.0.0.1:18500 OUT.json

The global model: scikit-learn's multinomial LogisticRegression on the trunk's embeddings (the same
int8 graph, tokenizer and spelling correction the service applies; onnxruntime, one text at a time),
raw or standardized features and C chosen on val accuracy (the choices `moe fit` has), fitted on train. The MoE's predictions are the served best guesses
(closed-set). Rows: the file's in-scope rows, minus texts labelled two ways (as `--drop-conflicts`).
"""

import csv
import json
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from moe_training.spelling import correct, read_lexicon  # noqa: E402

DATA = Path("data/clinc150/clinc150.csv")


def rows() -> dict[str, list[tuple[str, str]]]:
    labels = defaultdict(set)
    all_rows = list(csv.DictReader(DATA.open()))
    for r in all_rows:
        labels[r["text"]].add(r["label"])
    out = defaultdict(list)
    for r in all_rows:
        if r["label"] != "oos" and len(labels[r["text"]]) == 1:
            out[r["split"]].append((r["text"], r["label"]))
    return out


def embed(trunk: Path, texts: list[str]) -> np.ndarray:
    card = json.loads((trunk / "trunk.json").read_text())
    tok = Tokenizer.from_file(str(trunk / card["tokenizer"]["file"]))
    tok.enable_truncation(card["max_seq_len"])
    lexicon = read_lexicon(trunk / card["spelling"]["file"]) if card.get("spelling") else None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(trunk / card["graph"]["file"]), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out = np.zeros((len(texts), card["embedding_dim"]), dtype=np.float32)
    for i, t in enumerate(texts):
        enc = tok.encode(correct(t, lexicon) if lexicon else t)
        feed = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        out[i] = sess.run(None, {k: v for k, v in feed.items() if k in names})[0][0]
    return out


def served(base: str, texts: list[str]) -> list[str]:
    guesses = []
    for i in range(0, len(texts), 64):
        body = json.dumps({"texts": texts[i : i + 64]}).encode()
        req = urllib.request.Request(
            f"{base}/classify?experts=none", body, {"content-type": "application/json"}, method="POST"
        )
        guesses += [r["best_guess"] for r in json.load(urllib.request.urlopen(req))["results"]]
    return guesses


def paired_interval(a: np.ndarray, b: np.ndarray, truth: np.ndarray, metric, seed: int = 0, n: int = 2000):
    """95 % percentile interval of metric(a) - metric(b) over bootstrap resamples of the rows."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(truth), len(truth))
        diffs.append(metric(truth[idx], a[idx]) - metric(truth[idx], b[idx]))
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def main(root: Path, base: str, out: Path) -> None:
    by_split = rows()
    trunk = next((root / "trunks").iterdir())
    emb = {s: embed(trunk, [t for t, _ in by_split[s]]) for s in ("train", "val", "test")}
    y = {s: np.array([lab for _, lab in by_split[s]]) for s in ("train", "val", "test")}
    best = None
    # The same choices the MoE's heads get: raw or standardized features, C on val.
    for features in ("raw", "standardized"):
        model_of = (lambda m: m) if features == "raw" else (lambda m: make_pipeline(StandardScaler(), m))
        for c in (0.01, 0.1, 1.0, 10.0, 100.0):
            m = model_of(LogisticRegression(C=c, max_iter=3000)).fit(emb["train"], y["train"])
            acc = float((m.predict(emb["val"]) == y["val"]).mean())
            print(f"global logreg {features} C={c}: val accuracy {acc:.4f}", file=sys.stderr)
            if best is None or acc > best[0]:
                best = (acc, c, m, features)
    val_acc, c, model, features = best
    test_texts = [t for t, _ in by_split["test"]]
    truth = y["test"]
    glob = model.predict(emb["test"])
    moe = np.array(served(base, test_texts))

    def acc(t, p):
        return float((t == p).mean())

    def macro_f1(t, p):
        return float(f1_score(t, p, average="macro"))

    result = {
        "rows": {s: len(by_split[s]) for s in by_split},
        "global": {
            "C": c,
            "features": features,
            "val_accuracy": val_acc,
            "test_accuracy": acc(truth, glob),
            "test_macro_f1": macro_f1(truth, glob),
        },
        "moe": {"test_accuracy": acc(truth, moe), "test_macro_f1": macro_f1(truth, moe)},
        "moe_minus_global": {
            "accuracy": acc(truth, moe) - acc(truth, glob),
            "accuracy_95": paired_interval(moe, glob, truth, acc),
            "macro_f1": macro_f1(truth, moe) - macro_f1(truth, glob),
            "macro_f1_95": paired_interval(moe, glob, truth, macro_f1, n=500),
        },
        "bootstrap": "paired, rows resampled with replacement; 2,000 resamples (accuracy), 500 (macro-F1); seed 0",
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
