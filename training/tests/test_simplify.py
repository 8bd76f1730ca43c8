"""simplify: a freshly exported BERT-style trunk (a small random one, exported and quantised as the
trainer does) loses its computed reshapes, gets one attention operator a layer, a key padding
mask and residual sums, and computes exactly what it did without onnxruntime's SkipLayerNormFusion,
alone and in padded batches; a rewrite that changes the numbers is refused and leaves the file as it
was; the shipped trunks are already simplified."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from moe_training import simplify
from moe_training.backbone import Trunk
from moe_training.export import export_torch, quantize_int8
from onnx import numpy_helper
from transformers import BertConfig, BertModel

MODELS = Path(__file__).resolve().parents[2] / "models"
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=6000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        initializer_range=0.3,  # peaked attention, as in a trained model: a wrong scale shows
    )
    trunk = Trunk(BertModel(cfg, add_pooling_layer=False), NAMES).eval()
    d = tmp_path_factory.mktemp("tiny")
    ids = np.array([[101, 2000, 3000, 102, 0], [101, 1500, 2500, 3500, 102]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
    export_torch(trunk, feeds, NAMES, "embedding", d / "fp32.onnx")
    quantize_int8(d / "fp32.onnx", d / "int8.onnx")
    return d


def _run(path, feeds, disabled=()):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return session.run(None, feeds)[0]


def _residual_adds(graph) -> int:
    """Adds whose only consumer is a LayerNormalization: what SkipLayerNormFusion fuses."""
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    return sum(n.op_type == "Add" and consumers.get(n.output[0]) == ["LayerNormalization"] for n in graph.node)


@pytest.mark.parametrize("graph", ["fp32.onnx", "int8.onnx"])
def test_the_same_numbers_from_fewer_nodes(exported, graph, tmp_path):
    src, dst = exported / graph, tmp_path / graph
    done = simplify.simplify(src, dst)
    assert done["fused_attention"] == 2 and done["key_padding_masks"] == 2 and done["constant_reshapes"] > 0
    assert done["nodes"][1] < done["nodes"][0] / 2 and done["max_abs_diff"] == 0.0
    # the embeddings' LayerNormalization and two a layer: residual sums, none left to fuse
    assert done["residual_sums"] == 5 and _residual_adds(onnx.load(str(src)).graph) == 5
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops and "Shape" not in ops[:5]
    assert ops.count("Sum") == 5 and _residual_adds(onnx.load(str(dst)).graph) == 0
    # Independently of the probes simplify checks itself on: a batch of texts padded to other lengths.
    # The rewritten graph in a default session computes what the original does without the fusion.
    rng = np.random.default_rng(1)
    for lengths in ([7], [3, 11, 6, 9], [20, 4]):
        ids = np.zeros((len(lengths), max(lengths)), np.int64)
        for r, n in enumerate(lengths):
            ids[r, :n] = rng.integers(1, 6000, n)
        feeds = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
        assert np.array_equal(_run(src, feeds, ["SkipLayerNormFusion"]), _run(dst, feeds))


def _scale_off_by_1_percent(monkeypatch):
    fuse = simplify._fuse_attention

    def wrong(model):
        n = fuse(model)
        for node in model.graph.node:
            for a in node.attribute:
                if node.op_type == "MultiHeadAttention" and a.name == "scale":
                    a.f *= 1.01
        return n

    monkeypatch.setattr(simplify, "_fuse_attention", wrong)


def _no_padding_mask(monkeypatch):
    def wrong(model):  # attends to the padding too
        fused = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
        for node in fused:
            del node.input[3:]
        simplify._drop_dead(model)
        return len(fused)

    monkeypatch.setattr(simplify, "_key_padding_mask", wrong)


def test_a_rewrite_that_changes_the_numbers_is_refused(exported, tmp_path, monkeypatch):
    _scale_off_by_1_percent(monkeypatch)
    dst = tmp_path / "int8.onnx"
    dst.write_bytes(b"untouched")
    with pytest.raises(ValueError, match="differs by"):
        simplify.simplify(exported / "int8.onnx", dst)
    assert dst.read_bytes() == b"untouched"


def test_a_mask_rewrite_that_changes_the_numbers_is_dropped(exported, tmp_path, monkeypatch):
    """The per-layer attention biases stay when one key padding mask does not compute the same."""
    _no_padding_mask(monkeypatch)
    done = simplify.simplify(exported / "int8.onnx", tmp_path / "int8.onnx")
    assert done["fused_attention"] == 2 and done["key_padding_masks"] == 0 and done["max_abs_diff"] == 0.0
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    assert all(len(n.input) == 6 and n.input[5] for n in graph.node if n.op_type == "MultiHeadAttention")


def test_the_shipped_trunks_are_simplified():
    for meta_path in sorted((MODELS / "trunks").glob("*/trunk.json")):
        meta = json.loads(meta_path.read_text())
        assert meta["simplified"]["residual_sums"] == 13, meta["id"]
        assert meta["simplified"]["earlier"]["fused_attention"] == 6, meta["id"]
        graph = onnx.load(str(meta_path.parent / meta["graph"]["file"])).graph
        assert sum(n.op_type == "MultiHeadAttention" for n in graph.node) == 6
        assert sum(n.op_type == "Sum" for n in graph.node) == 13 and _residual_adds(graph) == 0


def test_simplify_root_rewrites_trunks_once(exported, tmp_path):
    """`simplify SRC OUT`: a trunk from the exporter gets a new id (its graph's hash) and a record of
    what it was; an already simplified one (the shipped trunk) is kept byte for byte, id and all."""
    from argparse import Namespace

    from moe_training.cli import simplify as simplify_root
    from moe_training.data import sha256_file

    shipped = next((MODELS / "trunks").iterdir())
    src = tmp_path / "src"
    shutil.copytree(shipped, src / "trunks" / shipped.name)
    fresh = src / "trunks" / "tiny-int8-000000000000"
    fresh.mkdir()
    shutil.copy(exported / "int8.onnx", fresh / "trunk.onnx")
    shutil.copy(shipped / "tokenizer.json", fresh / "tokenizer.json")
    meta = {"schema": 1, "id": fresh.name, "graph": {"file": "trunk.onnx", "sha256": sha256_file(fresh / "trunk.onnx")}}
    (fresh / "trunk.json").write_text(json.dumps(meta))
    simplify_root(Namespace(src=str(src), out=str(tmp_path / "out")))
    out = tmp_path / "out" / "trunks"
    assert sha256_file(out / shipped.name / "trunk.onnx") == sha256_file(shipped / "trunk.onnx")
    (new,) = [d for d in out.iterdir() if d.name.startswith("tiny-int8-")]
    got = json.loads((new / "trunk.json").read_text())
    sha = sha256_file(new / "trunk.onnx")
    assert new.name == got["id"] == f"tiny-int8-{sha[:12]}" and got["graph"]["sha256"] == sha
    assert got["rewritten_from"]["id"] == fresh.name and got["simplified"]["fused_attention"] == 2
    assert not list(out.glob("*/*.simplified"))


def test_shape_inference_leaves_no_files_where_it_runs(tmp_path, monkeypatch):
    """Symbolic shape inference that cannot finish (here: an operator it does not know) saves the
    model as `sym_shape_infer_temp.onnx` plus `<uuid>.data` in the working directory before it gives
    up (how 70 MB of them once reached a commit); `_constant_reshapes` keeps the graph as it is and
    the directory as it was."""
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")  # over 1 KB: external data
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Mystery", ["x", "w"], ["y"], domain="com.example")],
        "unknown_operator",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    opsets = [onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.example", 1)]
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    monkeypatch.chdir(tmp_path)
    assert simplify._constant_reshapes(model) == 0
    assert list(tmp_path.iterdir()) == []
