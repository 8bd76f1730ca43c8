"""A quick build of real bundles: export parity, card contents, self-test values."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from moe_training.bundle import slug
from moe_training.cli import _load_data
from sklearn.metrics import accuracy_score, f1_score

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("candidates")
    cmd = [
        sys.executable,
        "-m",
        "moe_training",
        "build",
        "--data",
        str(DATA),
        "--out",
        str(out),
        "--quick",
        "--classes",
        "Travel",
        "--algorithms",
        "trunk-logreg,trunk-mlp,tokenbag,finetune-minilm,ft19-logreg",
        "--max-steps",
        "2",
        "--tokenbag-dim",
        "8",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return out


def test_every_algorithm_writes_a_bundle(built):
    names = sorted(p.name for p in built.iterdir() if (p / "card.json").exists())
    assert names == [
        "travel--finetune-minilm",
        "travel--ft19-logreg",
        "travel--tokenbag",
        "travel--trunk-logreg",
        "travel--trunk-mlp",
    ]
    trunks = sorted(t.name for t in (built / "trunks").iterdir())
    assert len(trunks) == 2 and trunks[0].startswith("minilm-l6-ft19-int8-") and trunks[1].startswith("minilm-l6-int8-")
    manifest = json.loads(next(built.glob("manifest-*.json")).read_text())
    assert manifest["data"]["sha256"] and manifest["versions"]["torch"]
    assert len(manifest["bundles"]) == 5


def test_cards_record_rebalancing_hashes_and_no_threshold_yet(built):
    from moe_training.data import sha256_file

    for d in built.iterdir():
        if not (d / "card.json").exists():
            continue
        card = json.loads((d / "card.json").read_text())
        assert card["class"] == "Travel" and card["threshold"] is None
        assert sha256_file(d / card["graph"]["file"]) == card["graph"]["sha256"]
        assert card["provenance"]["rebalance"]["method"] in ("class_weight", "oversample", "undersample")
        assert len(card["selftest"]) == 4
        if card["kind"] == "head":
            assert (built / "trunks" / card["trunk"]["id"] / "trunk.onnx").exists()
        else:
            assert sha256_file(d / "tokenizer.json") == card["tokenizer"]["sha256"]


def test_export_parity_is_recorded_and_small(built):
    trunk_dir = next((built / "trunks").glob("minilm-l6-int8-*"))
    trunk = json.loads(trunk_dir.joinpath("trunk.json").read_text())
    assert trunk["parity"]["fp32_max_abs_diff"] < 1e-4
    assert trunk["parity"]["int8_min_cosine"] > 0.98
    # Measured here too, not only read from what the exporter wrote: the exported int8 graph in
    # onnxruntime against the torch encoder it came from, on titles the exporter never saw.
    import onnxruntime as ort
    import torch
    from moe_training import backbone

    titles = [r["title"] for r in csv.DictReader(open(DATA)) if r["split"] == "test"][:24]
    tok = backbone.load_tokenizer()
    tok.enable_padding()
    enc = tok.encode_batch(titles)
    feeds = {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.zeros((len(enc), len(enc[0].ids)), dtype=np.int64),
    }
    names = backbone.inputs()
    with torch.no_grad():
        want = backbone.Trunk(backbone.load_encoder(), names).eval()(*(torch.from_numpy(feeds[n]) for n in names))
    sess = ort.InferenceSession(str(trunk_dir / "trunk.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
    want = want.numpy()
    cosine = np.sum(want * got, axis=1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert cosine.min() > 0.98, cosine
    ft = json.loads((built / "travel--finetune-minilm" / "card.json").read_text())["provenance"]["training"]
    assert ft["parity_fp32_max_prob_diff"] < 1e-4
    assert ft["parity_int8_max_prob_diff"] < 0.05
    tb = json.loads((built / "travel--tokenbag" / "card.json").read_text())["provenance"]["training"]
    assert tb["parity_fp32_max_prob_diff"] < 1e-5


def test_selftest_values_are_what_onnxruntime_gives(built):
    for name in ("travel--trunk-logreg", "travel--ft19-logreg", "travel--finetune-minilm", "travel--tokenbag"):
        card = json.loads((built / name / "card.json").read_text())
        texts = [s["text"] for s in card["selftest"]]
        out = subprocess.run(
            [sys.executable, "-m", "moe_training", "reference", "--root", str(built), "--bundle", name, *texts],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        got = np.array(json.loads(out.stdout)["probabilities"])
        want = np.array([s["probability"] for s in card["selftest"]])
        assert np.max(np.abs(got - want)) < 1e-6


def build_parser_args(argv):
    """The options `_load_data` reads, as the trainer's command line sets them."""
    import argparse

    return argparse.Namespace(
        data=argv[1], text_col="title", label_col="label", split_col="split", seed=42, quick="--quick" in argv
    )


def global_predictions(root, name, classes, trunk_id, texts):
    """A global baseline's predicted class per text: the argmax of its column heads' probabilities."""
    from moe_training.export import run_onnx, softmax_pos
    from moe_training.tokens import encode
    from tokenizers import Tokenizer

    tdir = root / "trunks" / trunk_id
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    tok.no_padding()
    z = np.concatenate([run_onnx(tdir / "trunk.onnx", encode(tok, [t])) for t in texts]).astype(np.float32)
    probs = np.stack(
        [softmax_pos(run_onnx(root / f"{slug(c)}--{name}" / "head.onnx", {"embedding": z})) for c in classes], axis=1
    )
    return [classes[i] for i in probs.argmax(1)]


def test_global_baselines_are_column_head_bundles_equal_to_the_softmax(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "moe_training",
        "global",
        "--data",
        str(DATA),
        "--out",
        str(tmp_path),
        "--quick",
        "--finetune",
        "--max-steps",
        "2",
        "--head-augment",
        "1",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True)
    g = json.loads((tmp_path / "global.json").read_text())
    quick = _load_data(build_parser_args(["--data", str(DATA), "--quick"]))
    classes = g["classes"]
    frozen = g["baselines"]["global-frozen-logreg"]  # fitted on the titles and one noisy copy of each
    assert frozen["augmented_copies_per_title"] == 1 and frozen["train_rows"] % 2 == 0
    for name in ("global-frozen-logreg", "global-finetune"):
        cards = [json.loads((tmp_path / f"{slug(c)}--{name}" / "card.json").read_text()) for c in classes]
        assert [c["class"] for c in cards] == classes and all(c["kind"] == "head" for c in cards)
        # The recorded figures are those of the exported bundles, recomputed here from the graphs
        # (argmax over the column heads; at most one near-tie may fall the other way in float32).
        for split in ("val", "test"):
            texts, labels = quick[split].texts, quick[split].labels
            pred = global_predictions(tmp_path, name, classes, cards[0]["trunk"]["id"], texts)
            recorded = g["baselines"][name][split]
            assert abs(recorded["accuracy"] - accuracy_score(labels, pred)) <= 1 / len(texts) + 1e-9
            assert abs(recorded["macro_f1"] - f1_score(labels, pred, average="macro")) <= 2 / len(texts) + 1e-9
    # Head k's probability is the global model's softmax for class k: the columns sum to one.
    from moe_training.export import run_onnx, softmax_pos
    from moe_training.tokens import encode
    from tokenizers import Tokenizer

    card = json.loads((tmp_path / f"{slug(classes[0])}--global-finetune" / "card.json").read_text())
    tdir = tmp_path / "trunks" / card["trunk"]["id"]
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    tok.no_padding()
    z = run_onnx(tdir / "trunk.onnx", encode(tok, ["how to pack a suitcase"])).astype(np.float32)
    assert z.shape == (1, len(classes))
    probs = np.array(
        [
            softmax_pos(run_onnx(tmp_path / f"{slug(c)}--global-finetune" / "head.onnx", {"embedding": z}))[0]
            for c in classes
        ]
    )
    want = np.exp(z[0] - z[0].max()) / np.exp(z[0] - z[0].max()).sum()
    assert np.max(np.abs(probs - want)) < 1e-5
