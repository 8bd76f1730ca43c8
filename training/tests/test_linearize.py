"""linearize: a one-node Gemm head becomes a linear head with the same probabilities."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from moe_training.linearize import gemm_weights, linearize

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLE = "travel--kd19-logreg"


def test_a_gemm_head_becomes_a_linear_head_with_the_same_probabilities(tmp_path):
    out = tmp_path / "models"
    converted = linearize(MODELS, out, [BUNDLE])
    assert converted == [BUNDLE]
    card = json.loads((out / BUNDLE / "card.json").read_text())
    assert card["kind"] == "linear" and card["graph"]["file"] == "head.json"
    assert card["threshold"] == json.loads((MODELS / BUNDLE / "card.json").read_text())["threshold"]
    head = json.loads((out / BUNDLE / "head.json").read_text())
    w, b = np.array(head["weights"], dtype=np.float32), np.float32(head["bias"])
    x = (np.random.default_rng(0).normal(size=(16, w.size)) / np.sqrt(w.size)).astype(np.float32)
    sess = ort.InferenceSession(str(MODELS / BUNDLE / "head.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    want = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))
    got = 1 / (1 + np.exp(-(x @ w + b)))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # The trunks come along, so the converted root serves as it is.
    assert (out / "trunks" / card["trunk"]["id"] / "trunk.json").exists()


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
