"""The candidate algorithms ("the pool"). Each returns an ONNX graph with the common contract:
token inputs (input_ids, attention_mask[, token_type_ids]) -> logits [batch, 2], or, for heads on the
shared trunk, embedding [batch, dim] -> logits [batch, 2]."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from . import backbone
from .export import OPSET, export_torch, quantize_int8, run_onnx, softmax_pos

# Default rebalancing per algorithm (overridable on the command line), and whether it is a trunk head.
ALGORITHMS = {
    "trunk-logreg": {"kind": "head", "rebalance": "class_weight", "ratio": 3.0, "trunk": "frozen"},
    "trunk-mlp": {"kind": "head", "rebalance": "class_weight", "ratio": 3.0, "trunk": "frozen"},
    # logistic head on a trunk fine-tuned once as a 19-way classifier (shared by all classes)
    "ft19-logreg": {"kind": "head", "rebalance": "class_weight", "ratio": 3.0, "trunk": "ft19"},
    "tokenbag": {"kind": "full", "rebalance": "oversample", "ratio": 3.0},
    "finetune-minilm": {"kind": "full", "rebalance": "undersample", "ratio": 3.0},
}


@dataclass
class TrainSettings:
    seed: int = 42
    quick: bool = False
    logreg_c: float = 10.0
    mlp_hidden: int = 128
    mlp_epochs: int = 60
    tokenbag_dim: int = 64
    tokenbag_epochs: int = 8
    finetune_epochs: int = 2
    finetune_lr: float = 5e-5
    global_epochs: int = 3
    batch_size: int = 32
    max_steps: int | None = None  # quick mode caps optimisation steps


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _save_graph(graph, path: Path) -> None:
    """A hand-built head graph as a checked ONNX model (opset and IR version the service loads)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="moe-training")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_column_head(weights: np.ndarray, bias: np.ndarray, k: int, path: Path) -> None:
    """One class of a multi-class classifier as a one-vs-all expert head: z = W.x + b over all C
    classes, logits = [logsumexp_{j != k} z_j, z_k], so softmax(logits)[1] == softmax(z)[k] exactly.
    The 19 column heads of one global model are that model, served through the expert contract."""
    dim, classes = weights.shape
    mask = np.zeros(classes, dtype=np.float32)
    mask[k] = -1e4  # exp underflows to 0: column k leaves the log-sum-exp
    pick = np.zeros((classes, 1), dtype=np.float32)
    pick[k, 0] = 1.0
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["embedding", "W", "B"], ["z"]),
            helper.make_node("Add", ["z", "mask"], ["others"]),
            helper.make_node("ReduceLogSumExp", ["others"], ["rest"], axes=[1], keepdims=1),
            helper.make_node("MatMul", ["z", "pick"], ["mine"]),
            helper.make_node("Concat", ["rest", "mine"], ["logits"], axis=1),
        ],
        "column_head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "B"),
            numpy_helper.from_array(mask, "mask"),
            numpy_helper.from_array(pick, "pick"),
        ],
    )
    _save_graph(graph, path)


# ---------------------------------------------------------------- shared trunk
class _Global(torch.nn.Module):
    """MiniLM + mean pooling + a linear layer over all classes: the 19-way global classifier."""

    def __init__(self, encoder, classes: int):
        super().__init__()
        self.encoder = encoder
        self.out = torch.nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.out(backbone.mean_pool(h.last_hidden_state, attention_mask))


def finetune_global(tok, texts: list[str], labels: list[str], classes: list[str], s: TrainSettings):
    """Fine-tune MiniLM as one multi-class classifier (the global baseline; its encoder can serve
    as a fine-tuned shared trunk)."""
    _seed(s.seed)
    model = _Global(backbone.load_encoder(), len(classes))
    y = torch.from_numpy(np.array([classes.index(c) for c in labels]))
    epochs = 1 if s.quick else s.global_epochs
    names = ["input_ids", "attention_mask", "token_type_ids"]
    step = _train_loop(
        model,
        names,
        tok,
        texts,
        epochs,
        s.finetune_lr,
        s,
        "global fine-tune",
        lambda out, i: torch.nn.functional.cross_entropy(out, y[i]),
    )
    return model, {"epochs": epochs, "steps": step, "lr": s.finetune_lr, "batch_size": s.batch_size}


def export_trunk(tok, workdir: Path, example_texts: list[str], encoder=None, tag: str = "frozen") -> tuple[Path, dict]:
    """Export a MiniLM trunk (fp32 then int8) and measure torch <-> ONNX parity."""
    enc = encoder if encoder is not None else backbone.load_encoder()
    trunk = backbone.Trunk(enc).eval()
    feeds = backbone.encode(tok, example_texts)
    with torch.no_grad():  # reference BEFORE export: the legacy exporter perturbs the module
        ref = trunk(*(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask", "token_type_ids"))).numpy()
    fp32 = workdir / f"trunk-{tag}-fp32.onnx"
    int8 = workdir / f"trunk-{tag}-int8.onnx"
    export_torch(trunk, feeds, ["input_ids", "attention_mask", "token_type_ids"], "embedding", fp32)
    quantize_int8(fp32, int8)
    got32 = run_onnx(fp32, feeds)
    got8 = run_onnx(int8, feeds)
    cos8 = float(np.min(np.sum(ref * got8, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got8, axis=1))))
    meta = {
        "backbone": "sentence-transformers/all-MiniLM-L6-v2",
        "licence": backbone.BACKBONES["minilm-l6"][1],
        "pooling": "mean, L2-normalised",
        "embedding_dim": int(ref.shape[1]),
        "max_seq_len": backbone.MAX_SEQ_LEN,
        "quantization": "dynamic int8, per-channel weights (onnxruntime.quantization.quantize_dynamic)",
        "parity": {
            "inputs": len(example_texts),
            "fp32_max_abs_diff": float(np.max(np.abs(ref - got32))),
            "int8_max_abs_diff": float(np.max(np.abs(ref - got8))),
            "int8_min_cosine": cos8,
        },
    }
    return int8, meta


def logreg_head(x: np.ndarray, y: np.ndarray, w: np.ndarray, s: TrainSettings, path: Path) -> dict:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=s.logreg_c, max_iter=2000)
    clf.fit(x, y, sample_weight=w)
    coef = clf.coef_.reshape(-1).astype(np.float32)
    weights = np.stack([np.zeros_like(coef), coef], axis=1)  # logits = [0, w.x + b]
    bias = np.array([0.0, clf.intercept_[0]], dtype=np.float32)
    _write_linear_head(weights, bias, path)
    return {"C": s.logreg_c, "solver": "lbfgs", "iterations": int(clf.n_iter_[0])}


def _write_linear_head(weights: np.ndarray, bias: np.ndarray, path: Path) -> None:
    dim = weights.shape[0]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["embedding", "W", "B"], ["logits"])],
        "linear_head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    _save_graph(graph, path)


class _Mlp(torch.nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(hidden, 1)
        )

    def forward(self, embedding):
        return self.net(embedding)


def mlp_head(x: np.ndarray, y: np.ndarray, w: np.ndarray, s: TrainSettings, path: Path) -> dict:
    _seed(s.seed)
    model = backbone.BinaryFromScore(_Mlp(x.shape[1], s.mlp_hidden))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)), torch.from_numpy(w)
    epochs = 3 if s.quick else s.mlp_epochs
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for b in range(0, len(xt), 128):
            i = perm[b : b + 128]
            z = model(xt[i])[:, 1]
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, yt[i], reduction="none") * wt[i]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    export_torch(model, {"embedding": x[:4]}, ["embedding"], "logits", path, batch_only=True)
    return {"hidden": s.mlp_hidden, "epochs": epochs, "optimizer": "AdamW lr 2e-3", "dropout": 0.1}


# ---------------------------------------------------------------- full models
class _TokenBag(torch.nn.Module):
    """fastText-like: mean of token embeddings (masked) -> linear score."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.out = torch.nn.Linear(dim, 1)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        bag = (self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.out(bag)


class _FineTuned(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.out = torch.nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.out(backbone.mean_pool(h.last_hidden_state, attention_mask))


def _train_loop(model, names, tok, texts, epochs, lr, s: TrainSettings, desc: str, loss_of) -> int:
    """AdamW with linear decay over shuffled batches padded to their longest; `loss_of(outputs, rows)`.
    Returns the number of optimisation steps (capped by s.max_steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    total = epochs * math.ceil(len(texts) / s.batch_size)
    if s.max_steps is not None:
        total = min(total, s.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / max(1, total)))
    rng = np.random.default_rng(s.seed)
    model.train()
    step = 0
    with tqdm(total=total, desc=desc, leave=False) as bar:
        while step < total:
            order = rng.permutation(len(texts))
            for b in range(0, len(order), s.batch_size):
                if step >= total:
                    break
                i = order[b : b + s.batch_size]
                feeds = backbone.encode(tok, [texts[j] for j in i])
                loss = loss_of(model(*(torch.from_numpy(feeds[n]) for n in names)), i)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
    model.eval()
    return step


def _train_token_model(model, names, tok, texts, y, w, epochs, lr, s: TrainSettings, desc: str) -> int:
    """Binary one-vs-all training: weighted BCE on the positive logit."""
    yt, wt = torch.from_numpy(y.astype(np.float32)), torch.from_numpy(w)

    def loss_of(out, i):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 1], yt[i], reduction="none")
        return (bce * wt[i]).mean()

    return _train_loop(model, names, tok, texts, epochs, lr, s, desc, loss_of)


def tokenbag(tok, texts, y, w, s: TrainSettings, path: Path, parity_texts: list[str]) -> dict:
    _seed(s.seed)
    names = ["input_ids", "attention_mask"]
    model = backbone.BinaryFromScore(_TokenBag(tok.get_vocab_size(), s.tokenbag_dim))
    steps = _train_token_model(model, names, tok, texts, y, w, 1 if s.quick else s.tokenbag_epochs, 5e-3, s, "tokenbag")
    parity = _export_with_parity(model, names, tok, parity_texts, path, quantize=False)
    return {"dim": s.tokenbag_dim, "steps": steps, "optimizer": "AdamW lr 5e-3 linear decay", **parity}


def finetune(tok, texts, y, w, s: TrainSettings, path: Path, parity_texts: list[str]) -> dict:
    _seed(s.seed)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    model = backbone.BinaryFromScore(_FineTuned(backbone.load_encoder()))
    steps = _train_token_model(model, names, tok, texts, y, w, s.finetune_epochs, s.finetune_lr, s, "finetune")
    parity = _export_with_parity(model, names, tok, parity_texts, path, quantize=True)
    return {
        "epochs": s.finetune_epochs,
        "steps": steps,
        "lr": s.finetune_lr,
        "batch_size": s.batch_size,
        "optimizer": "AdamW linear decay",
        **parity,
    }


def _export_with_parity(model, names, tok, parity_texts, path: Path, quantize: bool) -> dict:
    feeds = backbone.encode(tok, parity_texts)
    with torch.no_grad():
        ref = softmax_pos(model(*(torch.from_numpy(feeds[n]) for n in names)).numpy())
    fp32 = path.with_suffix(".fp32.onnx") if quantize else path
    export_torch(model, feeds, names, "logits", fp32)
    out = {
        "parity_inputs": len(parity_texts),
        "parity_fp32_max_prob_diff": float(np.max(np.abs(ref - softmax_pos(run_onnx(fp32, feeds))))),
    }
    if quantize:
        quantize_int8(fp32, path)
        p8 = softmax_pos(run_onnx(path, feeds))
        out["parity_int8_max_prob_diff"] = float(np.max(np.abs(ref - p8)))
        out["parity_int8_same_decision_at_0.5"] = float(np.mean((ref >= 0.5) == (p8 >= 0.5)))
        out["quantization"] = "dynamic int8, per-channel weights"
        fp32.unlink()
    return out
