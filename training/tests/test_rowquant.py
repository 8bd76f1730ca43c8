"""rowquant: the shipped int8 trunk rewritten to per-row activation scales gives each text the same
embedding alone and in any batch (other texts, other padded lengths), stays close to the trunk it
came from, and `rowquant` writes a root whose bundles point at the new trunk with matching
self-tests. onnxruntime at its default (extended) optimisations: the fusion that mis-read per-row
scales runs there."""

import json
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import DATA
from moe_training.cli import bundle_probabilities, rowquant
from moe_training.rowquant import QUANTIZATION, per_row
from moe_training.tokens import encode
from tokenizers import Tokenizer

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLE = "travel--kd19-logreg"
TEXTS = [
    "travel",
    "How to Pack a Suitcase",
    "how to make a delicious chocolate cake for your best friend's birthday party this weekend",
    "How to Decorate a Christmas Tree With Lights",
    "How to Train a Puppy to Sit, Stay and Come When Called",
]


def _trunk_dir() -> Path:
    card = json.loads((MODELS / BUNDLE / "card.json").read_text())
    return MODELS / "trunks" / card["trunk"]["id"]


def _embed(session, tok, texts):
    tok.enable_padding()
    feeds = encode(tok, texts)
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    d = _trunk_dir()
    out = tmp_path_factory.mktemp("rowq") / "trunk.onnx"
    assert per_row(d / "trunk.onnx", out) > 0
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.enable_truncation(max_length=128)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    make = lambda p: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])  # noqa: E731
    return make(d / "trunk.onnx"), make(out), tok


def test_each_text_alone_and_in_every_batch(sessions):
    old, new, tok = sessions
    alone = np.stack([_embed(new, tok, [t])[0] for t in TEXTS])
    rng = np.random.default_rng(0)
    compositions = [list(range(len(TEXTS))), [2, 0], [0, 2], [4, 1, 3]] + [
        list(rng.permutation(len(TEXTS))[: rng.integers(2, len(TEXTS) + 1)]) for _ in range(6)
    ]
    worst = 0.0
    for idx in compositions:
        got = _embed(new, tok, [TEXTS[i] for i in idx])
        worst = max(worst, float(np.abs(got - alone[idx]).max()))
    assert worst <= 1e-6, worst
    # The per-tensor trunk it came from does depend on the batch (what the rewrite removes).
    old_alone = np.stack([_embed(old, tok, [t])[0] for t in TEXTS])
    assert np.abs(_embed(old, tok, TEXTS) - old_alone).max() > 1e-4
    cos = (old_alone * alone).sum(1) / np.linalg.norm(old_alone, axis=1) / np.linalg.norm(alone, axis=1)
    assert cos.min() > 0.99, cos


def test_rowquant_root_points_bundles_at_the_new_trunk(tmp_path):
    src = tmp_path / "src"
    (src / "trunks").mkdir(parents=True)
    shutil.copytree(MODELS / BUNDLE, src / BUNDLE)
    shutil.copytree(_trunk_dir(), src / "trunks" / _trunk_dir().name)
    rowquant(Namespace(src=str(src), out=str(tmp_path / "out")))
    out = tmp_path / "out"
    card = json.loads((out / BUNDLE / "card.json").read_text())
    tdir = out / "trunks" / card["trunk"]["id"]
    meta = json.loads((tdir / "trunk.json").read_text())
    assert "-rowq-" in meta["id"] and meta["id"] == tdir.name
    assert meta["rewritten_from"]["id"] == _trunk_dir().name
    old = json.loads((MODELS / BUNDLE / "card.json").read_text())
    assert card["threshold"] == old["threshold"] and card["calibration"] == old["calibration"]
    texts = [t["text"] for t in card["selftest"]]
    assert bundle_probabilities(out, BUNDLE, texts) == [t["probability"] for t in card["selftest"]]
    with pytest.raises(SystemExit):  # never over an existing folder
        rowquant(Namespace(src=str(src), out=str(out)))


def test_trunk_command_fine_tunes_resumably_and_exports_a_batchable_trunk(tmp_path):
    """`moe_training trunk` (the accurate path's first step): a fine-tuned, per-row int8 trunk
    whose card names what it was tuned on; a rerun loads the finished checkpoint instead of
    training again and writes the same graph."""

    def run(out):
        cmd = [sys.executable, "-m", "moe_training", "trunk", "--data", str(DATA), "--out", str(out)]
        cmd += ["--quick", "--max-steps", "2", "--checkpoints", str(tmp_path / "ck")]
        done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True, text=True)
        (tdir,) = (out / "trunks").iterdir()
        return tdir, json.loads((tdir / "trunk.json").read_text()), done.stdout

    tdir, meta, log = run(tmp_path / "a")
    assert "resumed" not in log
    assert "-ft-int8-rowq-" in meta["id"] and meta["quantization"] == QUANTIZATION
    assert meta["fine_tuned"]["steps"] == 2 and meta["fine_tuned"]["task"] == "19-way classification on train"
    assert meta["parity"]["int8_min_cosine"] > 0.98
    opts = ort.SessionOptions()
    new = ort.InferenceSession(str(tdir / "trunk.onnx"), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    tok.enable_truncation(max_length=128)
    alone = np.stack([_embed(new, tok, [t])[0] for t in TEXTS])
    assert np.abs(_embed(new, tok, TEXTS) - alone).max() <= 1e-6
    _, meta2, log2 = run(tmp_path / "b")
    assert "resumed at step 2 of 2" in log2
    assert meta2["id"] == meta["id"] and meta2["fine_tuned"]["checkpoint"] == meta["fine_tuned"]["checkpoint"]
