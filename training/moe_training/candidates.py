"""The candidate algorithms ("the pool"). Each returns an ONNX graph with the common contract:
token inputs (input_ids, attention_mask[, token_type_ids]) -> logits [batch, 2], or, for heads on the
shared trunk, embedding [batch, dim] -> logits [batch, 2]."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from . import backbone, simplify
from .export import OPSET, export_torch, quantize_int8, run_onnx, softmax_pos

# Default rebalancing per algorithm (overridable on the command line), and whether it is a trunk head.
ALGORITHMS = {
    "trunk-logreg": {"kind": "head", "rebalance": "class_weight", "ratio": 3.0, "trunk": "frozen"},
    "trunk-mlp": {"kind": "head", "rebalance": "class_weight", "ratio": 3.0, "trunk": "frozen"},
    # logistic head on a trunk fine-tuned once as a 19-way classifier (shared by all classes)
    "ft19-logreg": {"kind": "head", "rebalance": "class_weight", "ratio": 3.0, "trunk": "ft19"},
    # logistic head on a trunk distilled from a stronger teacher's 19-way scores (`teach`, --teacher)
    "kd19-logreg": {"kind": "head", "rebalance": "class_weight", "ratio": 3.0, "trunk": "kd19"},
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
    backbone: str = "minilm-l6"
    # The 19-way fine-tune's recipe: a separate learning rate for the new output layer (None: the
    # encoder's) and a linear warm-up fraction. MPNet's (lr 3e-5 / head 1e-3 / 6 % warm-up, 3 epochs)
    # reached test 0.883 in a trial run before the project started (seed 0, max_length 40).
    global_lr: float = 5e-5
    global_head_lr: float | None = None
    warmup: float = 0.0
    # Levers that buy time (docs/TRAINING.md, "The fast fine-tune"): the token embeddings kept
    # frozen (half the parameters: no gradient, no optimizer state), batches of texts of like
    # length (less padding), label smoothing, and the weights averaged over the last fraction of
    # the steps (one running mean, updated every AVERAGE_EVERY steps).
    freeze_embeddings: bool = False
    length_buckets: bool = False
    label_smoothing: float = 0.0
    average_last: float = 0.0
    cosine_scale: float = 0.0  # > 0: a cosine classifier at this scale (`_Global`)
    # Resumable training: checkpoints of long fine-tunes are kept here (None: not kept).
    checkpoints: Path | None = None


# Per-backbone defaults for the 19-way fine-tune (overridable on the command line).
GLOBAL_RECIPES = {
    "minilm-l6": {"global_lr": 5e-5, "global_head_lr": None, "warmup": 0.0},
    "mpnet-base": {"global_lr": 3e-5, "global_head_lr": 1e-3, "warmup": 0.06},
}


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
    """Encoder + mean pooling + a linear layer over all classes: the 19-way global classifier.
    With `cosine` > 0 the logits are that scale times the cosine between the pooled embedding and
    each class's weight row (no bias): the classifier then reads the unit-length embedding the
    served trunk gives, and trains its geometry (class directions) for the heads fitted on it."""

    def __init__(self, encoder, classes: int, names: list[str], cosine: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.names = names
        self.cosine = cosine
        self.out = torch.nn.Linear(encoder.config.hidden_size, classes, bias=not cosine)

    def forward(self, *args):
        e = backbone.mean_pool(backbone.run_encoder(self.encoder, self.names, args), args[1])
        if not self.cosine:
            return self.out(e)
        f = torch.nn.functional.normalize
        return self.cosine * f(e, dim=1) @ f(self.out.weight, dim=1).T


def finetune_global(
    tok, texts: list[str], labels: list[str], classes: list[str], s: TrainSettings, data_sha="", on_epoch=None
):
    """Fine-tune the backbone as one multi-class classifier (the global baseline; its encoder can
    serve as a fine-tuned shared trunk). With s.checkpoints the run is resumable, and a finished
    run with the same recipe and data is loaded instead of trained again (`build`'s ft19 trunk and
    `global --finetune` are then one model)."""
    _seed(s.seed)
    names = backbone.inputs(s.backbone)
    model = _Global(backbone.load_encoder(s.backbone), len(classes), names, s.cosine_scale)
    y = torch.from_numpy(np.array([classes.index(c) for c in labels]))
    info = _recipe(s, data_sha256=data_sha, rows=len(texts))
    smooth = s.label_smoothing
    loss = lambda out, i: torch.nn.functional.cross_entropy(out, y[i], label_smoothing=smooth)  # noqa: E731
    desc = f"{s.backbone} {len(classes)}-way fine-tune"
    return model, _train_19way(model, tok, texts, s, "global19", desc, loss, info, on_epoch)


def _recipe(s: TrainSettings, **extra) -> dict:
    """What decides a 19-way run's weights (recorded in trunk cards; hashed into its checkpoint name)."""
    return {
        "backbone": s.backbone,
        **extra,
        "epochs": 1 if s.quick else s.global_epochs,
        "lr": s.global_lr,
        "head_lr": s.global_head_lr or s.global_lr,
        "warmup": s.warmup,
        "batch_size": s.batch_size,
        "seed": s.seed,
        "max_steps": s.max_steps,
        # the levers, only when used: a recipe without them keeps its checkpoint name
        **{k: getattr(s, k) for k in FAST_LEVERS if getattr(s, k)},
    }


FAST_LEVERS = ("freeze_embeddings", "length_buckets", "label_smoothing", "average_last", "cosine_scale")


def _train_19way(model, tok, texts, s: TrainSettings, what: str, desc: str, loss_of, info: dict, on_epoch=None):
    """Train a `_Global` model with the 19-way recipe (its output layer at its own rate), resumably."""
    ckpt = _checkpoint_path(s, what, info)
    if s.freeze_embeddings:
        for p in model.encoder.embeddings.parameters():
            p.requires_grad = False
    step = _train_loop(
        model,
        model.names,
        tok,
        texts,
        info["epochs"],
        s.global_lr,
        s,
        desc,
        loss_of,
        head=(model.out, s.global_head_lr),
        checkpoint=ckpt,
        on_epoch=on_epoch,
    )
    return {**info, "steps": step, "checkpoint": ckpt.name if ckpt else None}


def teacher_logits(model, tok, texts: list[str], batch: int = 128) -> np.ndarray:
    """A fine-tuned 19-way model's logits for texts (no gradient), longest-first batches so each
    pads little; returned in the texts' order."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), model.out.out_features), dtype=np.float32)
    model.eval()
    with torch.no_grad():
        for b in tqdm(range(0, len(order), batch), desc="teacher", leave=False):
            i = order[b : b + batch]
            feeds = backbone.encode(tok, [texts[j] for j in i])
            out[i] = model(*(torch.from_numpy(feeds[n]) for n in model.names)).numpy()
    return out


def distill_global(tok, teacher: dict, classes: list[str], s: TrainSettings, temperature: float, hard_weight: float):
    """Train the student backbone (s.backbone) as a 19-way classifier on a teacher's logits
    (`teacher`: texts, logits, labels with -1 for unlabelled rows): the loss is T² · KL(teacher_T ||
    student_T) on every row plus `hard_weight` · cross-entropy on the labelled rows. Resumable
    like `finetune_global`."""
    _seed(s.seed)
    names = backbone.inputs(s.backbone)
    model = _Global(backbone.load_encoder(s.backbone), len(classes), names)
    texts = list(teacher["texts"])
    soft = torch.softmax(torch.from_numpy(teacher["logits"]) / temperature, dim=1)
    y = torch.from_numpy(teacher["labels"].astype(np.int64))
    info = _recipe(
        s,
        distilled_from=str(teacher["teacher"]),
        temperature=temperature,
        hard_weight=hard_weight,
        teacher_sha256=str(teacher["sha256"]),
        rows=len(texts),
        labelled_rows=int((teacher["labels"] >= 0).sum()),
    )

    def loss_of(out, i):
        return distillation_loss(out, soft[i], y[i], temperature, hard_weight)

    return model, _train_19way(model, tok, texts, s, "kd19", f"{s.backbone} distillation", loss_of, info)


def distillation_loss(out, soft, labels, temperature: float, hard_weight: float):
    """T² · KL(teacher_T || student_T) averaged over the rows, plus `hard_weight` · cross-entropy on
    the rows whose label is not -1. `soft`: the teacher's softmax at temperature T."""
    logp = torch.log_softmax(out / temperature, dim=1)
    kd = torch.nn.functional.kl_div(logp, soft, reduction="batchmean") * temperature**2
    lab = labels >= 0
    if lab.any():
        kd = kd + hard_weight * torch.nn.functional.cross_entropy(out[lab], labels[lab])
    return kd


def _checkpoint_path(s: TrainSettings, what: str, recipe: dict) -> Path | None:
    """Where a run with this recipe keeps its checkpoint: the name carries a hash of the recipe, so
    a changed recipe or data set never resumes from another run's weights."""
    if s.checkpoints is None:
        return None
    import hashlib
    import json

    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    s.checkpoints.mkdir(parents=True, exist_ok=True)
    return s.checkpoints / f"{what}-{recipe['backbone']}-{key}.pt"


def export_trunk(
    tok, workdir: Path, example_texts: list[str], encoder=None, tag: str = "frozen", name: str = "minilm-l6"
) -> tuple[Path, dict]:
    """Export a backbone's trunk (fp32 then int8) and measure torch <-> ONNX parity."""
    enc = encoder if encoder is not None else backbone.load_encoder(name)
    names = backbone.inputs(name)
    trunk = backbone.Trunk(enc, names).eval()
    feeds = backbone.encode(tok, example_texts)
    with torch.no_grad():  # reference BEFORE export: the legacy exporter perturbs the module
        ref = trunk(*(torch.from_numpy(feeds[n]) for n in names)).numpy()
    fp32 = workdir / f"trunk-{tag}-fp32.onnx"
    int8 = workdir / f"trunk-{tag}-int8.onnx"
    export_torch(trunk, feeds, names, "embedding", fp32)
    quantize_int8(fp32, int8)
    simplified = {}  # the same outputs from fewer nodes (simplify.py); a graph it cannot match stays
    for kind, graph in (("fp32", fp32), ("int8", int8)):
        try:
            simplified[kind] = simplify.simplify(graph, graph)
        except ValueError as e:
            simplified[kind] = {"kept": str(e)}
    got32 = run_onnx(fp32, feeds)
    got8 = run_onnx(int8, feeds)
    cos8 = float(np.min(np.sum(ref * got8, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got8, axis=1))))
    meta = {
        "backbone": backbone.spec(name)["model"],
        "licence": backbone.spec(name)["licence"],
        "pooling": "mean, L2-normalised",
        "embedding_dim": int(ref.shape[1]),
        "max_seq_len": backbone.MAX_SEQ_LEN,
        "quantization": "dynamic int8, per-channel weights (onnxruntime.quantization.quantize_dynamic)",
        "simplified": simplified,
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


class _FineTuned(_Global):
    """Encoder + mean pooling + one score: a per-class fine-tuned expert."""

    def __init__(self, encoder, names: list[str]):
        super().__init__(encoder, 1, names)


CHECKPOINT_EVERY = 20  # steps: about 45 s of MPNet-base training on 2 cores
CHECKPOINT_SECONDS = 60.0  # and at least this long apart (a MiniLM step takes 0.25 s; a save, ~1 s)
BUCKET_BATCHES = 50  # length buckets: batches are cut from sorted chunks of this many batches
AVERAGE_EVERY = 10  # steps between updates of the averaged weights (s.average_last)


def _optimizer(model, lr: float, head=None):
    """AdamW over the trainable parameters; `head` = (module, lr): that module at its own rate."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if head is None or head[1] is None:
        return torch.optim.AdamW(trainable, lr=lr)
    mine = {id(p) for p in head[0].parameters()}
    rest = [p for p in trainable if id(p) not in mine]
    return torch.optim.AdamW([{"params": rest}, {"params": list(head[0].parameters()), "lr": head[1]}], lr=lr)


def _warmup_then_decay(opt, warmup: float, total: int):
    """Linear warm-up over `warmup` of the steps, then linear decay to 0 at `total`."""
    warm = int(round(warmup * total))

    def factor(k: int) -> float:
        if k < warm:
            return (k + 1) / warm
        return max(0.0, 1.0 - (k - warm) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def epoch_batches(rng, lengths: np.ndarray, batch: int, buckets: bool) -> list[np.ndarray]:
    """One epoch's batches of row indices: a shuffled order cut into batches, or (buckets) that
    order cut into chunks of BUCKET_BATCHES batches, each chunk sorted by token length before it
    is cut, and the batches shuffled again: each batch holds texts of like length, so little
    padding, and the count per epoch is the same, ceil(rows / batch)."""
    order = rng.permutation(len(lengths))
    if not buckets:
        return [order[b : b + batch] for b in range(0, len(order), batch)]
    out = []
    for c in range(0, len(order), batch * BUCKET_BATCHES):
        chunk = order[c : c + batch * BUCKET_BATCHES]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[b : b + batch] for b in range(0, len(chunk), batch)]
    return [out[k] for k in rng.permutation(len(out))]


class _Average:
    """A running mean of the trainable weights over the steps from `start` on (every AVERAGE_EVERY
    steps), loaded into the model at the end; its state travels in the checkpoint."""

    def __init__(self, model, start: int):
        self.start, self.n = start, 0
        self.params = {k: p for k, p in model.named_parameters() if p.requires_grad}
        self.mean = {k: p.detach().clone() for k, p in self.params.items()}

    def update(self, step: int) -> None:
        if step < self.start or (step - self.start) % AVERAGE_EVERY:
            return
        self.n += 1
        with torch.no_grad():
            for k, p in self.params.items():
                self.mean[k] += (p.detach() - self.mean[k]) / self.n

    def apply(self) -> None:
        if self.n:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(self.mean[k])


def _train_loop(
    model, names, tok, texts, epochs, lr, s: TrainSettings, desc: str, loss_of, head=None, checkpoint=None,
    on_epoch=None,
) -> int:  # fmt: skip
    """AdamW with linear warm-up (s.warmup of the steps) and linear decay over shuffled batches
    (`epoch_batches`) padded to their longest; `loss_of(outputs, rows)`. `head` = (module, lr): that
    module trains at its own rate. `checkpoint`: a file saved every CHECKPOINT_EVERY steps (at least
    CHECKPOINT_SECONDS apart) and at the end; a run finds it and goes on from there (the batch order
    is replayed from the seed, so a resumed run sees the batches an unbroken one would).
    `on_epoch(model, epoch)` is called after each whole epoch (evaluation; the model in eval mode).
    Returns the number of optimisation steps (capped by s.max_steps)."""
    device = backbone.train_device()
    print(f"{desc}: training on {device}", flush=True)
    model.to(device)
    opt = _optimizer(model, lr, head)
    per_epoch = math.ceil(len(texts) / s.batch_size)
    total = epochs * per_epoch if s.max_steps is None else min(epochs * per_epoch, s.max_steps)
    sched = _warmup_then_decay(opt, s.warmup, total)
    avg = _Average(model, int(total * (1 - s.average_last))) if s.average_last else None
    start = _resume(checkpoint, model, opt, sched, avg, desc, total)
    lengths = np.array([len(e.ids) for e in tok.encode_batch(texts)]) if s.length_buckets else np.zeros(len(texts))
    rng, step, saved = np.random.default_rng(s.seed), 0, time.monotonic()
    model.train()
    with tqdm(total=total, initial=start, desc=desc, leave=False) as bar:
        while step < total:
            for i in epoch_batches(rng, lengths, s.batch_size, s.length_buckets):
                if step >= total:
                    break
                step += 1
                if step <= start:  # replayed: done before the checkpoint
                    continue
                _step(model, names, tok, [texts[j] for j in i], i, loss_of, opt, sched, device)
                if avg is not None:
                    avg.update(step)
                bar.update(1)
                due = step % CHECKPOINT_EVERY == 0 and time.monotonic() - saved >= CHECKPOINT_SECONDS
                if checkpoint is not None and (due or step == total):
                    _save(checkpoint, model, opt, sched, avg, step)
                    saved = time.monotonic()
            if on_epoch is not None and step % per_epoch == 0 and step > start:
                model.eval()
                on_epoch(model, step // per_epoch)
                model.train()
    if avg is not None:
        avg.apply()
    model.eval()
    model.to("cpu")
    return step


def _step(model, names, tok, batch: list[str], rows, loss_of, opt, sched, device) -> None:
    feeds = backbone.encode(tok, batch)
    out = model(*(torch.from_numpy(feeds[n]).to(device) for n in names))
    # The losses' targets stay on the CPU: the outputs (batch x classes) come back, and autograd
    # carries the gradient to the device.
    loss = loss_of(out.cpu(), rows)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def _resume(checkpoint, model, opt, sched, avg, desc: str, total: int) -> int:
    """Load a checkpoint if there is one; the step it was taken at (0 without)."""
    if checkpoint is None or not checkpoint.exists():
        return 0
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if avg is not None and state.get("average") is not None:
        avg.n = state["average"]["n"]
        avg.mean = {k: v.to(avg.mean[k].device) for k, v in state["average"]["mean"].items()}
    print(f"{desc}: resumed at step {state['step']} of {total} from {checkpoint}")
    return state["step"]


def _save(checkpoint: Path, model, opt, sched, avg, step: int) -> None:
    tmp = checkpoint.with_suffix(".tmp")
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    average = {"n": avg.n, "mean": avg.mean} if avg is not None else None
    torch.save({**state, "average": average, "torch_rng": torch.get_rng_state(), "step": step}, tmp)
    tmp.replace(checkpoint)


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
    names = backbone.inputs(s.backbone)
    model = backbone.BinaryFromScore(_FineTuned(backbone.load_encoder(s.backbone), names))
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
