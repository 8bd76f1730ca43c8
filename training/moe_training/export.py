"""ONNX export, int8 quantisation, parity checks and hashing."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

OPSET = 17
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_torch(
    module,
    example: dict[str, np.ndarray],
    input_names: list[str],
    output_name: str,
    path: Path,
    batch_only: bool = False,
) -> None:
    """Legacy exporter, dynamic batch (and sequence) axes."""
    import onnx
    import torch

    module.eval()
    args = tuple(torch.from_numpy(example[n]) for n in input_names)
    axes = {n: ({0: "batch"} if batch_only else {0: "batch", 1: "seq"}) for n in input_names}
    axes[output_name] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=[output_name],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


_SESSIONS: dict[str, ort.InferenceSession] = {}


def session(path: Path) -> ort.InferenceSession:
    key = f"{path}:{path.stat().st_mtime_ns}"
    if key not in _SESSIONS:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        _SESSIONS[key] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def run_onnx(path: Path, feeds: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    """Run a graph on feeds (only the inputs it declares), in batches; returns the first output."""
    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    n = len(next(iter(feeds.values())))
    outs = []
    for s in range(0, n, batch):
        outs.append(sess.run(None, {k: feeds[k][s : s + batch] for k in names})[0])
    return np.concatenate(outs, axis=0)


def softmax_pos(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e[:, 1] / e.sum(axis=1)).astype(np.float64)
