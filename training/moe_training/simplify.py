"""Trunk graphs with fewer nodes and the same numbers.

The legacy torch exporter writes a BERT-style encoder as ~800 ONNX nodes, of which onnxruntime
still runs ~220 after its own fusions at load: per layer a chain of Shape -> Gather -> Unsqueeze ->
Concat feeding each Reshape, the attention spelled out as Reshape/Transpose/Mul/MatMul/Softmax/
IsNaN/Where/MatMul/Reshape/Transpose/Reshape, and a padding mask rebuilt from `attention_mask`
with Range/Expand/And/Where in every layer. For a 10-token title their fixed costs add up (in
onnxruntime's profiler the Shape/Gather/Unsqueeze/Concat/Reshape/Transpose nodes took about a third
of the node time), so `simplify` rewrites them:

1. every Reshape whose target shape is computed gets a constant one (0 keeps the input's dim at
   that position, -1 the one remaining dim), read off onnxruntime's symbolic shape inference;
2. each layer's attention becomes one `com.microsoft.MultiHeadAttention` over the same Q, K, V
   projections (the int8 products stay as they are), with the exported scale;
3. the per-layer masks become that operator's key padding mask, `attention_mask` cast to int32
   (kept as per-layer attention biases when that would change the numbers);
4. each residual `Add` feeding a LayerNormalization becomes a `Sum` of the same two tensors (the same
   IEEE addition), which onnxruntime's SkipLayerNormFusion does not match. Its fused
   SkipLayerNormalization kernel was the slow part of the layer (18 us a node against 4 for a plain
   LayerNormalization, and ~9 % of the service's samples at concurrency 16; docs/BENCHMARKS.md,
   ab-skip-layer-norm). It also rounds differently: the int8 trunks' next activation scale carries
   the last-bit differences on, so the graph computes what onnxruntime computes for the original
   with that fusion off, not what its default session did. The choice lives in the graph (and its
   hash and id), so every runtime that loads it, the service and the Python oracle alike, computes
   the same numbers, and thresholds measured on it hold wherever it runs.

Whatever no longer feeds an output is dropped (~98 nodes run instead of ~220). The rewrite is
checked, not trusted: `simplify` runs the original (with SkipLayerNormFusion off, what rewrite 4
promises) and the rewritten graph (a default session) on padded probe batches and refuses
(ValueError, the file untouched) when any output differs by more than `TOLERANCE`. On the shipped
MiniLM-L6 trunks the outputs are bit-for-bit equal. Rewrites 1-3 cost a title 0.88-0.92 x the time
(three runs; the last, bench/forward.py, in docs/bench/forward.jsonl), rewrite 4 another ~0.85 x.
A graph whose attention does not have this exported shape keeps it as it is; rewrite 1 applies
wherever shape inference gets through.
"""

from __future__ import annotations

import collections
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Largest |difference| allowed between the original and the rewritten graph on the probes.
TOLERANCE = 1e-5


def simplify(src: Path, dst: Path) -> dict:
    """Rewrite `src` into `dst` (may be the same file); returns what changed and the largest
    difference seen on the probes. When the key padding mask changes the numbers (an attention bias
    that is more than padding, e.g. a position bias) the per-layer biases are kept and the rest is
    checked again. Raises ValueError, leaving `dst` as it was, when no rewrite computes what `src`
    does."""
    model = onnx.load(str(src))
    before = len(model.graph.node)
    original = model.SerializeToString()
    reference = probe_outputs(original, fuse_skip_layer_norm=False)  # the original's, computed once
    reshapes = _constant_reshapes(model)
    attention = _fuse_attention(model)
    sums = _residual_sums(model)
    unmasked = model.SerializeToString()
    masks = _key_padding_mask(model) if attention else 0
    rewritten = model.SerializeToString()
    got = probe_outputs(rewritten)
    diff = max_difference(reference, got)
    if not diff <= TOLERANCE and masks:
        model, masks = onnx.load_from_string(unmasked), 0
        rewritten = unmasked
        got = probe_outputs(rewritten)
        diff = max_difference(reference, got)
    if not diff <= TOLERANCE:
        raise ValueError(f"{src}: the simplified graph differs by {diff:.3g} (> {TOLERANCE}); kept the original")
    fused = max_difference(probe_outputs(original), got) if sums else 0.0
    Path(dst).write_bytes(rewritten)
    return {
        "constant_reshapes": reshapes,
        "fused_attention": attention,
        "key_padding_masks": masks,
        "residual_sums": sums,
        "nodes": [before, len(model.graph.node)],
        "max_abs_diff": diff,
        "max_abs_diff_from_fused_default": fused,
    }


def probe_feeds(names: set[str]) -> list[dict]:
    """Token batches to compare two graphs on (only the inputs in `names`): single texts and padded
    batches, ids drawn from the part of the vocabulary every backbone here shares."""
    rng = np.random.default_rng(7)
    feeds = []
    for lengths in ([12], [5], [9, 14, 6], [32, 3]):
        width = max(lengths)
        ids = np.zeros((len(lengths), width), np.int64)
        mask = np.zeros_like(ids)
        for r, n in enumerate(lengths):
            ids[r, :n] = [101, *rng.integers(1000, 5000, n - 2), 102]
            mask[r, :n] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds.append({k: v for k, v in feed.items() if k in names})
    return feeds


def probe_outputs(graph: bytes, fuse_skip_layer_norm: bool = True) -> list[list[np.ndarray]]:
    """A serialised graph's outputs on `probe_feeds`, one thread; a default session, or one with
    onnxruntime's SkipLayerNormFusion off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    off = [] if fuse_skip_layer_norm else ["SkipLayerNormFusion"]
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"], disabled_optimizers=off)
    return [session.run(None, feed) for feed in probe_feeds({i.name for i in session.get_inputs()})]


def max_difference(reference: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """Largest |difference| between two graphs' `probe_outputs` (inf when a shape differs)."""
    worst = 0.0
    for xs, ys in zip(reference, got):
        for x, y in zip(xs, ys):
            if x.shape != y.shape:
                return float("inf")
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)))
    return worst


def _constant_reshapes(model: onnx.ModelProto) -> int:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # Shape inference that cannot finish saves the model as `sym_shape_infer_temp.onnx` and
    # `<uuid>.data` in the working directory and leaves them there: run it in a folder of its own.
    with tempfile.TemporaryDirectory(prefix="moe-shapes-") as scratch, contextlib.chdir(scratch):
        try:
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception:  # an operator it does not know (e.g. after the per-row rewrite): keep them
            return 0
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        shapes[vi.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim
        ]
    g = model.graph
    constants = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    changed = 0
    for n in g.node:
        allowzero = any(a.name == "allowzero" and a.i for a in n.attribute)
        if n.op_type != "Reshape" or n.input[1] in constants or allowzero:
            continue
        given, wanted = shapes.get(n.input[0]), shapes.get(n.output[0])
        if not given or not wanted:
            continue
        target = []
        for k, d in enumerate(wanted):
            if isinstance(d, int) and d > 0:
                target.append(d)
            elif d is not None and k < len(given) and given[k] == d:
                target.append(0)  # allowzero=0: copy the input's dim
            else:
                target.append(-1)
        if target.count(-1) > 1:
            continue
        name = n.output[0] + "/constant_shape"
        g.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        n.input[1] = name
        changed += 1
    _drop_dead(model)  # the Shape/Gather/Concat chains that computed them
    return changed


class _Graph:
    def __init__(self, g):
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = collections.defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.initializers = {i.name: i for i in g.initializer}

    def up(self, name: str, op: str):
        n = self.producer.get(name)
        if n is None or n.op_type != op:
            raise LookupError(f"{name} is not made by {op}")
        return n

    def down(self, name: str, op: str):
        found = self.consumers.get(name, [])
        if len(found) != 1 or found[0].op_type != op:
            raise LookupError(f"{name} feeds {[n.op_type for n in found]}, not one {op}")
        return found[0]

    def scalar(self, name: str) -> float:
        if name in self.initializers:
            return float(numpy_helper.to_array(self.initializers[name]).ravel()[0])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant":
            return float(numpy_helper.to_array(n.attribute[0].t).ravel()[0])
        raise LookupError(f"{name} is not a constant")

    def perm(self, n) -> list[int]:
        return [int(p) for a in n.attribute if a.name == "perm" for p in a.ints]


def _fuse_attention(model: onnx.ModelProto) -> int:
    """softmax(Q' K'^T + mask) V' with Q' = heads(q) * c, K' = heads(k) * c, the exporter's shape of
    scaled dot-product attention, becomes MultiHeadAttention(q, k, v, attention_bias=mask)."""
    g = model.graph
    x = _Graph(g)
    fused = {}
    for sm in [n for n in g.node if n.op_type == "Softmax"]:
        try:
            add = x.up(sm.input[0], "Add")
            scores = next(x.producer[i] for i in add.input if getattr(x.producer.get(i), "op_type", "") == "MatMul")
            mask = next(i for i in add.input if i != scores.output[0])
            q, cq, heads = _scaled_heads(x, scores.input[0], [0, 2, 1, 3])
            k, ck, _ = _scaled_heads(x, scores.input[1], [0, 2, 3, 1])
            after = x.consumers[sm.output[0]]  # IsNaN and the Where that zeroes a fully masked row
            isnan = next(n for n in after if n.op_type == "IsNaN")
            where = x.down(isnan.output[0], "Where")
            if len(after) != 2 or where not in after:
                raise LookupError("softmax feeds more than its NaN guard")
            context = x.down(where.output[0], "MatMul")
            v_heads = x.up(context.input[1], "Transpose")
            v = x.up(v_heads.input[0], "Reshape").input[0]
            merge = x.down(context.output[0], "Reshape")
            merge = x.down(merge.output[0], "Transpose")
            merge = x.down(merge.output[0], "Reshape")
        except (LookupError, StopIteration):
            continue
        fused[id(merge)] = helper.make_node(
            "MultiHeadAttention",
            [q, k, v, "", "", mask],
            [merge.output[0]],
            domain="com.microsoft",
            num_heads=heads,
            scale=cq * ck,
            name=sm.name.rsplit("/", 1)[0] + "/MultiHeadAttention",
        )
    if fused:
        nodes = [fused.get(id(n), n) for n in g.node]
        del g.node[:]
        g.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        _drop_dead(model)
    return len(fused)


def _scaled_heads(x: _Graph, name: str, perm: list[int]) -> tuple[str, float, int]:
    """Mul(Transpose(Reshape(t, [0, 0, heads, size]), perm), c): (t, c, heads)."""
    mul = x.up(name, "Mul")
    t = next(x.producer[i] for i in mul.input if getattr(x.producer.get(i), "op_type", "") == "Transpose")
    if x.perm(t) != perm:
        raise LookupError(f"{t.name}: perm {x.perm(t)}")
    c = x.scalar(next(i for i in mul.input if i != t.output[0]))
    r = x.up(t.input[0], "Reshape")
    shape = numpy_helper.to_array(x.initializers[r.input[1]]) if r.input[1] in x.initializers else None
    if shape is None or len(shape) != 4 or shape[2] <= 0:
        raise LookupError(f"{r.name}: not a constant split into heads")
    return r.input[0], c, int(shape[2])


def _key_padding_mask(model: onnx.ModelProto) -> int:
    """The attention bias each layer rebuilds from `attention_mask` becomes the operator's key
    padding mask (1 = attend): one Cast instead of ~15 nodes a layer. Checked by the probes, whose
    padded batches a different mask would fail."""
    g = model.graph
    if "attention_mask" not in {i.name for i in g.input}:
        return 0
    mha = [n for n in g.node if n.op_type == "MultiHeadAttention"]
    g.node.insert(0, helper.make_node("Cast", ["attention_mask"], ["attention_mask/int32"], to=TensorProto.INT32))
    for n in mha:
        del n.input[4:]
        n.input.append("attention_mask/int32")
    _drop_dead(model)
    return len(mha)


def _residual_sums(model: onnx.ModelProto) -> int:
    """Add(x, y) -> LayerNormalization becomes Sum(x, y) -> LayerNormalization (module doc, rewrite
    4): only where the Add feeds nothing else, the case onnxruntime would fuse."""
    g = model.graph
    x = _Graph(g)
    outputs = {o.name for o in g.output}
    changed = 0
    for n in g.node:
        if n.op_type != "Add" or n.domain not in ("", "ai.onnx") or n.output[0] in outputs:
            continue
        after = x.consumers.get(n.output[0], [])
        if len(after) == 1 and after[0].op_type == "LayerNormalization" and after[0].input[0] == n.output[0]:
            n.op_type = "Sum"
            changed += 1
    return changed


def _drop_dead(model: onnx.ModelProto) -> None:
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed |= set(n.input)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    initializers = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(initializers)
