"""linearize: a one-node Gemm head becomes a linear head with the same probabilities."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from moe_training.linearize import gemm_weights, linearize

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLE = "travel--kd19-logreg"


def _gemm_head_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A model root with two one-node Gemm head bundles (random weights) on the shipped trunk's
    card: the shipped heads are linear already."""
    import onnx
    from moe_training.bundle import write_json
    from moe_training.data import sha256_file
    from onnx import TensorProto, helper, numpy_helper

    card = json.loads((MODELS / BUNDLE / "card.json").read_text())
    dim = card["embedding_dim"]
    rng = np.random.default_rng(0)
    w = rng.normal(size=(dim, 2)).astype(np.float32)
    b = rng.normal(size=2).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["embedding", "W", "B"], ["logits"])],
        "head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    src = tmp_path / "src"
    for name in (BUNDLE, "travel--other"):
        (src / name).mkdir(parents=True)
        onnx.save(helper.make_model(g), str(src / name / "head.onnx"))
        sha = sha256_file(src / name / "head.onnx")
        write_json(src / name / "card.json", {**card, "kind": "head", "graph": {"file": "head.onnx", "sha256": sha}})
    trunk = src / "trunks" / card["trunk"]["id"]
    trunk.mkdir(parents=True)
    (trunk / "trunk.json").write_text((MODELS / "trunks" / card["trunk"]["id"] / "trunk.json").read_text())
    (src / "registry.json").write_text(json.dumps({"experts": {"Travel": BUNDLE}}))
    return src, w, b


def test_a_gemm_head_becomes_a_linear_head_with_the_same_probabilities(tmp_path):
    src, _, _ = _gemm_head_root(tmp_path)
    out = tmp_path / "models"
    converted = linearize(src, out, [BUNDLE])
    assert converted == [BUNDLE]
    card = json.loads((out / BUNDLE / "card.json").read_text())
    assert card["kind"] == "linear" and card["graph"]["file"] == "head.json"
    assert card["threshold"] == json.loads((src / BUNDLE / "card.json").read_text())["threshold"]
    head = json.loads((out / BUNDLE / "head.json").read_text())
    w, b = np.array(head["weights"], dtype=np.float32), np.float32(head["bias"])
    x = (np.random.default_rng(1).normal(size=(16, w.size)) / np.sqrt(w.size)).astype(np.float32)
    sess = ort.InferenceSession(str(src / BUNDLE / "head.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    want = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))
    got = 1 / (1 + np.exp(-(x @ w + b)))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # The trunks, the registry and the bundles not named come along unchanged.
    assert (out / "trunks" / card["trunk"]["id"] / "trunk.json").exists()
    assert json.loads((out / "registry.json").read_text())["experts"] == {"Travel": BUNDLE}
    other = json.loads((out / "travel--other" / "card.json").read_text())
    assert other["kind"] == "head" and (out / "travel--other" / "head.onnx").exists()


def test_only_one_node_gemm_heads_are_converted(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["embedding"], ["logits"])],
        "not_a_head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g), str(path))
    try:
        gemm_weights(path)
    except ValueError as e:
        assert "Gemm" in str(e)
    else:
        raise AssertionError("a non-Gemm graph was converted")
