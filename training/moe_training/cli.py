"""Command line: `python -m moe_training build ...` trains the candidate pool and writes bundles;
`python -m moe_training reference ...` prints onnxruntime (Python) probabilities for a bundle."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2-thread training slows 20x under contention without it


def _versions() -> dict:
    import onnx
    import onnxruntime
    import sklearn
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


def _subsample(split, per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    keep = []
    labels = np.array(split.labels)
    for c in sorted(set(split.labels)):
        idx = np.flatnonzero(labels == c)
        keep.extend(rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist())
    keep.sort()
    split.texts = [split.texts[i] for i in keep]
    split.labels = [split.labels[i] for i in keep]
    split.extra = {c: [v[i] for i in keep] for c, v in split.extra.items()}


def _probabilities(tok, trunk: Path | None, graph: Path, texts: list[str]) -> list[float]:
    """A bundle's positive probability per text, one text per run as the service answers it (int8
    graphs are batch-dependent); `trunk` is the shared trunk a head reads, None for a full model."""
    from . import backbone
    from .export import run_onnx, softmax_pos

    out = []
    for t in texts:
        feeds = backbone.encode(tok, [t])
        if trunk is not None:
            feeds = {"embedding": run_onnx(trunk, feeds).astype(np.float32)}
        out.append(float(softmax_pos(run_onnx(graph, feeds))[0]))
    return out


def _workdir(prefix: str, name: str = "minilm-l6"):
    """A scratch folder holding the backbone's tokenizer.json (copied into every bundle and trunk)."""
    from . import backbone

    work = Path(tempfile.mkdtemp(prefix=prefix))
    tok = backbone.load_tokenizer(name)
    tok.save(str(work / "tokenizer.json"))
    return work, tok, work / "tokenizer.json"


def _data_info(ds, args, **extra) -> dict:
    """Where the training data came from, as cards and manifests record it."""
    return {
        "file": Path(ds.source).name,
        "sha256": ds.sha256,
        "split": ds.split_source,
        "text_column": args.text_col,
        "label_column": args.label_col,
        "quick": args.quick,
        **extra,
    }


def _selftest_texts(texts: list[str], labels: list[str], cls: str) -> list[str]:
    pos = [t for t, y in zip(texts, labels) if y == cls][:2]
    neg = [t for t, y in zip(texts, labels) if y != cls][:2]
    return pos + neg


def _load_data(args, extra_cols: tuple[str, ...] = ()):
    """The labelled data set (subsampled with --quick)."""
    from .data import load_dataset

    ds = load_dataset(args.data, args.text_col, args.label_col, args.split_col or None, args.seed, extra_cols)
    if args.quick:
        for split, n in (("train", 12), ("val", 4), ("test", 4)):
            _subsample(ds[split], n, args.seed)
    return ds


def _build_plan(args, ds) -> tuple[list[str], list[str]]:
    """The classes and algorithms `build` trains, checked against the data and the known algorithms."""
    from . import candidates

    classes = args.classes.split(",") if args.classes else ds.classes
    unknown = [c for c in classes if c not in ds.classes]
    if unknown:
        sys.exit(f"unknown classes: {unknown}; the data has {ds.classes}")
    algos = args.algorithms.split(",")
    for a in algos:
        if a not in candidates.ALGORITHMS:
            sys.exit(f"unknown algorithm {a!r}; choose from {', '.join(candidates.ALGORITHMS)}")
    return classes, algos


def _settings(args, **extra):
    """Training settings from the command line: the backbone's 19-way recipe unless overridden."""
    from . import candidates

    recipe = dict(candidates.GLOBAL_RECIPES[args.backbone])
    for k in ("global_lr", "global_head_lr", "warmup", "global_epochs", "batch_size", *candidates.FAST_LEVERS):
        if getattr(args, k, None) is not None:
            recipe[k] = getattr(args, k)
    return candidates.TrainSettings(
        seed=args.seed,
        quick=args.quick,
        max_steps=args.max_steps,
        backbone=args.backbone,
        checkpoints=Path(args.checkpoints) if args.checkpoints else None,
        **recipe,
        **extra,
    )


def _build_trunk(args, name: str, ds, settings, tok, work: Path, tok_path: Path, out: Path, embed: bool = True) -> dict:
    """Export one shared trunk ("frozen": the pretrained backbone; "ft19": the backbone fine-tuned
    once as a multi-class classifier on train) into `out`, and (with `embed`) embed train with the
    artefact that is served."""
    from . import backbone, bundle, candidates
    from .export import run_onnx

    t0 = time.time()
    train, val = ds["train"], ds["val"]
    encoder, extra = None, {}
    if name in ("ft19", "ft"):  # "ft": the `trunk` command's, named for any number of classes
        model, info = candidates.finetune_global(tok, train.texts, train.labels, ds.classes, settings, ds.sha256)
        encoder = model.encoder
        extra = {"fine_tuned": {**info, "task": f"{len(ds.classes)}-way classification on train"}}
    elif name == "kd19":
        if not args.teacher:
            sys.exit("kd19-logreg needs --teacher (a file `python -m moe_training teach` wrote)")
        teacher = dict(np.load(args.teacher, allow_pickle=False))
        if list(teacher["classes"]) != list(ds.classes):
            sys.exit(f"{args.teacher}: the teacher's classes differ from the data's")
        model, info = candidates.distill_global(tok, teacher, ds.classes, settings, args.temperature, args.hard_weight)
        encoder = model.encoder
        extra = {"fine_tuned": {**info, "task": f"{len(ds.classes)}-way distillation from {info['distilled_from']}"}}
    graph, meta = candidates.export_trunk(tok, work, val.texts[:32], encoder=encoder, tag=name, name=args.backbone)
    if args.trunk_precision == "fp32":  # the unquantised export (batch-independent, larger)
        graph = work / f"trunk-{name}-fp32.onnx"
        meta["quantization"] = "none (fp32)"
    p = args.trunk_precision
    if p == "int8" and getattr(args, "activations", "per-tensor") == "per-row":  # batchable (rowquant.py)
        from . import rowquant

        rowquant.per_row(graph, graph)
        meta["quantization"], p = rowquant.QUANTIZATION, "int8-rowq"
        feeds = backbone.encode(tok, val.texts[:32])  # the parity of the graph that is served
        ref, got = run_onnx(work / f"trunk-{name}-fp32.onnx", feeds), run_onnx(graph, feeds)
        cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        meta["parity"].update(int8_max_abs_diff=float(np.max(np.abs(ref - got))), int8_min_cosine=float(cos.min()))
    prefix = f"{args.backbone}-{p}" if name == "frozen" else f"{args.backbone}-{name}-{p}"
    trunk_id = bundle.write_trunk(out, prefix, graph, tok_path, {**meta, **extra, "created": bundle.utc_now()})
    path = out / "trunks" / trunk_id / "trunk.onnx"
    ref = {"id": trunk_id, "sha256": json.loads((path.parent / "trunk.json").read_text())["graph"]["sha256"]}
    summary = {"id": trunk_id, "seconds": round(time.time() - t0, 1), **meta["parity"], **extra}
    if not embed:
        return {"ref": ref, "path": path, "summary": summary}
    # Heads are trained on the embeddings of the artefact that is served (the int8 trunk), of the
    # train titles and of --head-augment noisy copies of each (`head_rows`).
    texts, labels = head_rows(args, train)
    x = run_onnx(path, backbone.encode(tok, texts)).astype(np.float32)
    print(f"trunk {trunk_id}: exported and embedded {len(texts)} titles in {time.time() - t0:.1f}s")
    return {
        "ref": ref,
        "path": path,
        "x_train": x,
        "labels": labels,  # the class of each row of x_train
        "summary": {"id": trunk_id, "seconds": round(time.time() - t0, 1), **meta["parity"]},
    }


def head_rows(args, train) -> tuple[list[str], list[str]]:
    """The rows heads on a shared trunk are fitted on: the train titles, then --head-augment noisy
    copies of each (augment.py, seeded apart from the teacher's copies), with their titles' labels."""
    from . import augment

    k = getattr(args, "head_augment", 0)
    noisy = augment.augmented(train.texts, k, args.seed + 1) if k else []
    return list(train.texts) + noisy, list(train.labels) + [train.labels[i // k] for i in range(len(noisy))]


def _train_candidate(args, ctx: dict, cls: str, algo: str) -> dict:
    """Train one (class, algorithm) candidate on train, write its bundle; returns its manifest row."""
    from . import backbone, bundle, candidates
    from .rebalance import rebalance

    ds, tok, work, settings, trunks = ctx["ds"], ctx["tok"], ctx["work"], ctx["settings"], ctx["trunks"]
    train, val = ds["train"], ds["val"]
    spec = candidates.ALGORITHMS[algo]
    tname = spec.get("trunk")
    # Heads on a shared trunk see the augmented rows too; token models train on the titles.
    y = np.array(trunks[tname]["labels"] if tname else train.labels) == cls
    method = args.rebalance or spec["rebalance"]
    ratio = args.ratio or spec["ratio"]
    idx, w = rebalance(y, method, ratio, args.seed)
    t0 = time.time()
    graph = work / f"{bundle.slug(cls)}--{algo}.onnx"
    texts = [train.texts[i] for i in idx] if not tname else []
    x_train = trunks[tname]["x_train"] if tname else None
    if algo in ("trunk-logreg", "ft19-logreg", "kd19-logreg"):
        info = candidates.logreg_head(x_train[idx], y[idx], w, settings, graph)
    elif algo == "trunk-mlp":
        info = candidates.mlp_head(x_train[idx], y[idx], w, settings, graph)
    elif algo == "tokenbag":
        info = candidates.tokenbag(tok, texts, y[idx], w, settings, graph, val.texts[:32])
    else:
        info = candidates.finetune(tok, texts, y[idx], w, settings, graph, val.texts[:32])
    seconds = round(time.time() - t0, 2)
    st = _selftest_texts(val.texts, val.labels, cls)
    provenance = {
        "trainer": "moe_training",
        "created": bundle.utc_now(),
        "data": ctx["data_info"],
        "rebalance": {"method": method, "ratio": ratio, "rows": int(len(idx)), "positives": int(y[idx].sum())},
        "augmented_copies_per_title": getattr(args, "head_augment", 0) if tname else 0,
        "training": {**info, "seed": args.seed, "seconds": seconds},
        "backbone": backbone.spec(args.backbone)["model"] if algo != "tokenbag" else None,
        "trunk": trunks[tname]["ref"]["id"] if tname else None,
        "versions": ctx["versions"],
    }
    probs = _probabilities(tok, trunks[tname]["path"] if tname else None, graph, st)
    d = bundle.write_bundle(
        Path(args.out),
        cls,
        algo,
        graph,
        kind=spec["kind"],
        max_seq_len=backbone.MAX_SEQ_LEN,
        provenance=provenance,
        selftest=[{"text": t, "probability": p} for t, p in zip(st, probs)],
        trunk=trunks[tname]["ref"] if tname else None,
        tokenizer_json=ctx["tok_path"] if spec["kind"] == "full" else None,
        embedding_dim=int(x_train.shape[1]) if tname else None,
    )
    print(f"{d.name}: trained in {seconds}s ({method}, {len(idx)} rows)")
    return {"bundle": d.name, "class": cls, "algorithm": algo, "seconds": seconds}


def build(args) -> None:
    """Train the candidate pool: the shared trunks the algorithms need, then every (class,
    algorithm) candidate; writes the bundles and a manifest into --out."""
    import torch

    from . import bundle, candidates

    torch.set_num_threads(args.threads)
    t_start = time.time()
    ds = _load_data(args)
    classes, algos = _build_plan(args, ds)
    settings = _settings(args, finetune_epochs=args.finetune_epochs, tokenbag_dim=args.tokenbag_dim)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work, tok, tok_path = _workdir("moe-train-", args.backbone)
    data_info = _data_info(ds, args, train_rows=len(ds["train"].texts), val_rows=len(ds["val"].texts))
    manifest = {
        "started": bundle.utc_now(),
        "data": data_info,
        "versions": _versions(),
        "classes": classes,
        "algorithms": algos,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()},
        "seed": args.seed,
        "trunks": [],
        "bundles": [],
    }
    trunks = {
        name: _build_trunk(args, name, ds, settings, tok, work, tok_path, out)
        for name in sorted({candidates.ALGORITHMS[a].get("trunk") for a in algos} - {None})
    }
    manifest["trunks"] = [t["summary"] for t in trunks.values()]
    ctx = {
        "ds": ds,
        "tok": tok,
        "tok_path": tok_path,
        "work": work,
        "settings": settings,
        "trunks": trunks,
        "data_info": data_info,
        "versions": manifest["versions"],
    }
    manifest["bundles"] = [_train_candidate(args, ctx, cls, algo) for cls in classes for algo in algos]
    manifest["finished"] = bundle.utc_now()
    manifest["seconds"] = round(time.time() - t_start, 1)
    bundle.write_json(out / f"manifest-{manifest['started'].replace(':', '')}.json", manifest)
    print(f"wrote {len(manifest['bundles'])} bundles to {out} in {manifest['seconds']}s")


def trunk(args) -> None:
    """The accurate path's trunk: fine-tune the backbone as one classifier over the CSV's labels
    (train split only; resumable with --checkpoints: a rerun continues, a finished run is loaded)
    and export its encoder, int8, as a shared trunk under OUT/trunks/<id>/ for `moe fit --trunk`."""
    import torch

    torch.set_num_threads(args.threads)
    ds = _load_data(args)
    settings = _settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work, tok, tok_path = _workdir("moe-trunk-", args.backbone)
    built = _build_trunk(args, "ft", ds, settings, tok, work, tok_path, out, embed=False)
    summary = {**built["summary"], "path": str(built["path"].parent), "data": _data_info(ds, args)}
    (out / f"trunk-{built['ref']['id']}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    print(f"next: moe fit --data {args.data} --trunk {built['path'].parent} --out DIR")


class _Globals:
    """Builds the global baselines into one model root and collects their sklearn scores."""

    def __init__(self, args):
        from . import bundle

        self.args = args
        self.ds = _load_data(args)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work, self.tok, self.tok_path = _workdir("moe-global-", args.backbone)
        self.settings = _settings(args)
        self.short = backbone_short(args.backbone)
        self.classes = self.ds.classes
        self.data_info = _data_info(self.ds, args)
        self.versions = _versions()
        self.result = {
            "data": self.data_info,
            "classes": self.classes,
            "versions": self.versions,
            "created": bundle.utc_now(),
            "baselines": {},
        }

    def scores(self, pred_val, pred_test) -> dict:
        from sklearn.metrics import accuracy_score, f1_score

        return {
            s: {
                "accuracy": float(accuracy_score(self.ds[s].labels, p)),
                "macro_f1": float(f1_score(self.ds[s].labels, p, average="macro")),
            }
            for s, p in (("val", pred_val), ("test", pred_test))
        }

    def one_at_a_time(self, graph: Path, texts: list[str]) -> np.ndarray:
        """Outputs as the service answers a text (int8 graphs are batch-dependent)."""
        from . import backbone
        from .export import run_onnx

        return np.concatenate([run_onnx(graph, backbone.encode(self.tok, [t])) for t in texts])

    def record(self, algorithm: str, scores: dict) -> None:
        self.result["baselines"][algorithm] = scores
        print(algorithm, scores)

    def write_heads(self, algorithm: str, trunk_id: str, w: np.ndarray, b: np.ndarray, info: dict) -> None:
        """One column head per class (`candidates.write_column_head`) on the trunk `trunk_id`."""
        from . import backbone, bundle, candidates

        tdir = self.out / "trunks" / trunk_id
        ref = {"id": trunk_id, "sha256": json.loads((tdir / "trunk.json").read_text())["graph"]["sha256"]}
        val = self.ds["val"]
        for k, cls in enumerate(self.classes):
            graph = self.work / f"{bundle.slug(cls)}--{algorithm}.onnx"
            candidates.write_column_head(w, b, k, graph)
            st = _selftest_texts(val.texts, val.labels, cls)
            probs = _probabilities(self.tok, tdir / "trunk.onnx", graph, st)
            provenance = {
                "trainer": "moe_training",
                "created": bundle.utc_now(),
                "data": self.data_info,
                "global_model": {**info, "classes": self.classes, "column": k, "seed": self.args.seed},
                "rebalance": {"method": "none"},
                "trunk": trunk_id,
                "versions": self.versions,
            }
            bundle.write_bundle(
                self.out,
                cls,
                algorithm,
                graph,
                kind="head",
                max_seq_len=backbone.MAX_SEQ_LEN,
                provenance=provenance,
                selftest=[{"text": t, "probability": p} for t, p in zip(st, probs)],
                trunk=ref,
                embedding_dim=int(w.shape[0]),
            )
        print(f"wrote {len(self.classes)} {algorithm} column heads on {trunk_id}")

    def frozen_trunk(self) -> str:
        """The pretrained int8 trunk of the backbone, written into the root; returns its id."""
        from . import bundle, candidates

        b = self.args.backbone
        int8, meta = candidates.export_trunk(self.tok, self.work, self.ds["val"].texts[:8], name=b)
        return bundle.write_trunk(self.out, f"{b}-int8", int8, self.tok_path, {**meta, "created": bundle.utc_now()})

    def logreg_on(self, trunk_id: str, algorithm: str, what: str) -> None:
        """One multi-class logistic regression on a trunk's embeddings, as column heads."""
        from sklearn.linear_model import LogisticRegression

        t0, c = time.time(), self.args.logreg_c
        path = self.out / "trunks" / trunk_id / "trunk.onnx"
        # The same rows the mixture's heads are fitted on (titles + --head-augment noisy copies).
        texts, labels = head_rows(self.args, self.ds["train"])
        emb = {"train": self.one_at_a_time(path, texts)}
        emb |= {s: self.one_at_a_time(path, self.ds[s].texts) for s in ("val", "test")}
        clf = LogisticRegression(C=c, max_iter=3000).fit(emb["train"], labels)
        coef, icpt = clf.coef_, clf.intercept_
        if len(clf.classes_) == 2:  # sklearn keeps one row for two classes: logits [0, w.x + b]
            coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], icpt])
        order = [list(clf.classes_).index(k) for k in self.classes]
        info = {
            "model": f"{what} + one {len(self.classes)}-way logistic regression (C={c})",
            "train_rows": len(texts),
            "augmented_copies_per_title": getattr(self.args, "head_augment", 0),
            "seconds": round(time.time() - t0, 1),
        }
        self.write_heads(algorithm, trunk_id, coef[order].T, icpt[order], info)
        self.record(algorithm, {**self.scores(clf.predict(emb["val"]), clf.predict(emb["test"])), **info})

    def finetuned(self) -> None:
        """The backbone fine-tuned as one multi-class classifier, int8; its logits are the trunk
        output and identity column heads read them."""
        from . import backbone, bundle, candidates
        from .export import export_torch, quantize_int8

        t0, classes, ds = time.time(), self.classes, self.ds
        model, info = candidates.finetune_global(
            self.tok, ds["train"].texts, ds["train"].labels, classes, self.settings, ds.sha256
        )
        b = self.args.backbone
        names = backbone.inputs(b)
        feeds = backbone.encode(self.tok, ds["val"].texts[:8])
        fp32, q8 = self.work / "global-fp32.onnx", self.work / "global-int8.onnx"
        export_torch(model, feeds, names, "embedding", fp32)  # its 19 logits are the column heads' input
        quantize_int8(fp32, q8)
        trunk_id = bundle.write_trunk(
            self.out,
            f"{b}-global19-int8",
            q8,
            self.tok_path,
            {
                "backbone": backbone.spec(b)["model"],
                "licence": backbone.spec(b)["licence"],
                "pooling": f"mean, then the fine-tuned {len(classes)}-way output layer: the embedding is the logits",
                "embedding_dim": len(classes),
                "max_seq_len": backbone.MAX_SEQ_LEN,
                "quantization": "dynamic int8, per-channel weights (onnxruntime.quantization.quantize_dynamic)",
                "fine_tuned": {**info, "task": f"{len(classes)}-way classification on train"},
                "created": bundle.utc_now(),
            },
        )
        trunk = self.out / "trunks" / trunk_id / "trunk.onnx"
        logits = {s: self.one_at_a_time(trunk, ds[s].texts) for s in ("val", "test")}
        pred = {s: [classes[i] for i in logits[s].argmax(1)] for s in ("val", "test")}
        desc = {
            "model": f"{self.short} fine-tuned as one {len(classes)}-way classifier, int8 ONNX",
            "training": info,
            "seconds": round(time.time() - t0, 1),
        }
        eye, zeros = np.eye(len(classes), dtype=np.float32), np.zeros(len(classes), dtype=np.float32)
        self.write_heads("global-finetune", trunk_id, eye, zeros, desc)
        self.record("global-finetune", {**self.scores(pred["val"], pred["test"]), **desc})

    def write_summary(self) -> None:
        from . import bundle

        summary = Path(self.args.summary) if self.args.summary else self.out / "global.json"
        summary.parent.mkdir(parents=True, exist_ok=True)
        if summary.exists():  # baselines not refitted in this run keep their earlier entries
            earlier = json.loads(summary.read_text()).get("baselines", {})
            self.result["baselines"] = {**earlier, **self.result["baselines"]}
        bundle.write_json(summary, self.result)
        print(f"wrote {summary}")


def global_baselines(args) -> None:
    """The global classifiers the mixture is compared with, written as expert bundles into a model
    root so the service (and `moe report`) runs them through the same runtime as the experts: each
    global model becomes 19 column heads (`candidates.write_column_head`) on one trunk.
      global-frozen-logreg: one 19-way logistic regression on the frozen int8 MiniLM trunk;
      global-ft19-logreg (--same-trunk ID): the same on a trunk already in the root (the MoE's);
      global-finetune (--finetune): MiniLM fine-tuned as one 19-way classifier, int8, whose 19
        logits are the "embedding" its column heads read.
    Fitted on train; sklearn's val/test accuracy is recorded in --summary as a cross-check."""
    import torch

    torch.set_num_threads(args.threads)
    g = _Globals(args)
    if not args.no_frozen:
        g.logreg_on(g.frozen_trunk(), "global-frozen-logreg", f"frozen {g.short} int8 trunk")
    if args.same_trunk:
        g.logreg_on(args.same_trunk, "global-ft19-logreg", f"the MoE's trunk {args.same_trunk}")
    if args.finetune:
        g.finetuned()
    g.write_summary()


def teach(args) -> None:
    """Write a teacher's 19-way logits for distillation: the backbone fine-tuned 19-way on train
    (the same resumable run as `build`'s ft19 trunk: a finished checkpoint is loaded, not retrained)
    scored on the train titles, --augment noisy copies of each (augment.py) and chunks of the train
    rows' summaries (unlabelled). Val and test rows are never read."""
    import torch

    from . import augment, backbone, bundle, candidates

    torch.set_num_threads(args.threads)
    ds = _load_data(args, (args.summary_col,) if args.summary_col else ())
    settings = _settings(args)
    tok = backbone.load_tokenizer(args.backbone)
    train = ds["train"]
    model, info = candidates.finetune_global(tok, train.texts, train.labels, ds.classes, settings, ds.sha256)
    texts = list(train.texts)
    labels = [ds.classes.index(c) for c in train.labels]
    noisy = augment.augmented(train.texts, args.augment, args.seed)
    texts += noisy
    labels += [labels[i // args.augment] for i in range(len(noisy))] if args.augment else []
    unlabelled = augment.chunks(train.extra.get(args.summary_col, []), args.seed)
    if args.quick:
        args.max_unlabelled = min(args.max_unlabelled, 64)
    if len(unlabelled) > args.max_unlabelled:  # a seeded subset, in the order they were cut
        keep = np.random.default_rng(args.seed).choice(len(unlabelled), args.max_unlabelled, replace=False)
        unlabelled = [unlabelled[i] for i in sorted(keep)]
    texts += unlabelled
    labels += [-1] * len(unlabelled)
    t0 = time.time()
    logits = candidates.teacher_logits(model, tok, texts)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        texts=np.array(texts),
        logits=logits,
        labels=np.array(labels, dtype=np.int64),
        classes=np.array(ds.classes),
        teacher=np.array(f"{backbone.spec(args.backbone)['model']} fine-tuned 19-way ({info['checkpoint']})"),
        sha256=np.array(ds.sha256),
    )
    summary = {
        "created": bundle.utc_now(),
        "teacher": info,
        "rows": {"train_titles": len(train.texts), "augmented": len(noisy), "summary_chunks": len(unlabelled)},
        "teacher_accuracy_on_train_titles": float(
            np.mean(logits[: len(train.texts)].argmax(1) == labels[: len(train.texts)])
        ),
        "seconds": round(time.time() - t0, 1),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


def backbone_short(name: str) -> str:
    from . import backbone

    return backbone.spec(name)["short"]


def _data_args(p) -> None:
    """The labelled CSV and its columns."""
    p.add_argument("--data", required=True, help="CSV file")
    p.add_argument("--text-col", default="title")
    p.add_argument("--label-col", default="label")
    p.add_argument("--split-col", default="split", help="empty: split stratified with --seed")


def _run_args(p) -> None:
    """Seed, threads, and the caps tests use."""
    p.add_argument("--max-steps", type=int, default=None, help="cap optimisation steps (token models)")
    p.add_argument("--quick", action="store_true", help="tiny subset, few steps: for tests")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)


def _trunk_precision_arg(p) -> None:
    p.add_argument(
        "--trunk-precision",
        default="int8",
        choices=["int8", "fp32"],
        help="shared trunks as exported (fp32) or dynamically quantised (int8)",
    )


def _training_args(p) -> None:
    """Options `build` and `global` share: the backbone, its fine-tune recipe, checkpoints."""
    p.add_argument("--backbone", default="minilm-l6", choices=["minilm-l6", "mpnet-base"])
    p.add_argument("--checkpoints", default="", help="folder for resumable fine-tune checkpoints")
    p.add_argument("--global-epochs", type=int, default=None, help="19-way fine-tune epochs (default 3)")
    p.add_argument("--global-lr", type=float, default=None, help="19-way fine-tune encoder learning rate")
    p.add_argument("--global-head-lr", type=float, default=None, help="19-way fine-tune output-layer rate")
    p.add_argument("--warmup", type=float, default=None, help="warm-up fraction of the 19-way fine-tune")


def lexicon_build(args) -> None:
    """Only the train split's text: val and test words must not become known words."""
    from .data import load_dataset
    from .spelling import build_lexicon

    ds = load_dataset(Path(args.data), args.text_col, args.label_col, args.split_col, extra_cols=(args.summary_col,))
    train = ds["train"]
    texts = train.texts + train.extra[args.summary_col]
    source = f"{Path(args.data).name} split train, columns {args.text_col} + {args.summary_col}"
    tok = Path(args.tokenizer) if args.tokenizer else None
    Path(args.out).write_text(build_lexicon(texts, Path(args.dictionary), tok, source), encoding="utf-8")
    print(f"lexicon: {args.out}")


def spell(args) -> None:
    from .spelling import correct, read_lexicon

    lexicon = read_lexicon(Path(args.lexicon))
    print(json.dumps([correct(t, lexicon) for t in json.load(sys.stdin)]))


def reference(args) -> None:
    """Probabilities of one bundle for texts, computed by onnxruntime's Python API (parity oracle;
    a linear head's dot product in numpy). Needs only numpy, tokenizers and onnxruntime (no torch)."""
    probs = bundle_probabilities(Path(args.root), args.bundle, args.texts)
    print(json.dumps({"bundle": args.bundle, "probabilities": probs}))


def bundle_probabilities(root: Path, name: str, texts: list[str], card: dict | None = None) -> list[float]:
    """One bundle's probabilities for texts, one text per run (what the service answers for a text);
    `card`: the bundle's card when the caller holds it (default: read from its folder)."""
    from tokenizers import Tokenizer

    from .export import run_onnx, softmax_pos
    from .spelling import correct, read_lexicon
    from .tokens import encode

    card = card or json.loads((root / name / "card.json").read_text())
    if card["kind"] in ("head", "linear"):
        tdir = root / "trunks" / card["trunk"]["id"]
        tok_file, trunk = tdir / "tokenizer.json", tdir / "trunk.onnx"
        spelling = json.loads((tdir / "trunk.json").read_text()).get("spelling")
        spelling_dir = tdir
    else:
        tok_file, trunk = root / name / card["tokenizer"]["file"], None
        spelling, spelling_dir = card.get("spelling"), root / name
    lexicon = read_lexicon(spelling_dir / spelling["file"]) if spelling else None
    tok = Tokenizer.from_file(str(tok_file))
    tok.no_padding()
    tok.enable_truncation(max_length=card["max_seq_len"])
    # head.json: sigmoid(w . embedding + b), here in numpy
    head = json.loads((root / name / card["graph"]["file"]).read_text()) if card["kind"] == "linear" else None
    probs = []
    for text in texts:
        feeds = encode(tok, [correct(text, lexicon) if lexicon else text])
        if trunk is not None:
            feeds = {"embedding": run_onnx(trunk, feeds).astype(np.float32)}
        if head is not None:
            z = float(feeds["embedding"][0].astype(np.float64) @ np.array(head["weights"]) + head["bias"])
            probs.append(1.0 / (1.0 + np.exp(-z)))
            continue
        probs.append(float(softmax_pos(run_onnx(root / name / card["graph"]["file"], feeds))[0]))
    return probs


def rowquant(args) -> None:
    """Copy a model root with every dynamically quantised trunk rewritten to per-row activation
    scales (rowquant.py: each text's numbers its own, so the service can batch it), the bundles on
    it re-pointed and their self-test probabilities recomputed. Heads, thresholds, calibration and
    the registry are kept as they are: the same experts on a batch-invariant trunk."""
    from . import rowquant

    def rewrite(graph: Path, meta: dict) -> str:
        n = rowquant.per_row(graph, graph)
        meta.update(quantization=rowquant.QUANTIZATION)
        meta["rewritten_from"]["quantize_linear_nodes"] = n
        return f"{n} activations quantised per row"

    _rewrite_root(Path(args.src), Path(args.out), rewrite, "-rowq")


def simplify(args) -> None:
    """Copy a model root with every trunk graph simplified (simplify.py: constant reshapes, one
    attention operator a layer, a key padding mask, residual sums; refused unless the outputs match
    the original's with SkipLayerNormFusion off), the bundles on it re-pointed and their self-tests
    recomputed. Heads and thresholds are kept: after rewrite 4 they were measured on slightly
    different numbers, so recalibrate (`moe calibrate`) when it applied."""
    from . import simplify as graphs

    def rewrite(graph: Path, meta: dict) -> str:
        new = graph.with_name(graph.name + ".simplified")
        done = graphs.simplify(graph, new)
        if not (done["constant_reshapes"] or done["fused_attention"] or done["residual_sums"]):
            new.unlink()  # the graph, its hash and its id stay as they are
            raise ValueError("nothing to simplify")
        new.replace(graph)
        earlier = meta.get("simplified")
        meta["simplified"] = {**done, **({"earlier": earlier} if earlier else {})}
        return f"{done['nodes'][0]} -> {done['nodes'][1]} nodes, outputs within {done['max_abs_diff']:.3g}"

    _rewrite_root(Path(args.src), Path(args.out), rewrite, "")


def _rewrite_root(src: Path, out: Path, rewrite, tag: str) -> None:
    """Copy `src` to `out` with `rewrite(graph, meta)` applied to every trunk graph (a ValueError
    keeps that trunk as it was): each rewritten trunk gets the id `<prefix><tag>-<sha12>` and a
    `rewritten_from` record, and the bundles on it are re-pointed with their self-test
    probabilities recomputed on the new graph. Written beside `out` and renamed when complete."""
    from . import bundle
    from .data import sha256_file

    if out.exists():
        sys.exit(f"{out} exists: choose a new folder")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    renamed = {}
    for tdir in sorted((tmp / "trunks").iterdir()):
        meta = json.loads((tdir / "trunk.json").read_text())
        graph = tdir / meta["graph"]["file"]
        earlier = meta.get("rewritten_from")
        meta["rewritten_from"] = {"id": tdir.name, "at": bundle.utc_now(), **({"earlier": earlier} if earlier else {})}
        try:
            said = rewrite(graph, meta)
        except ValueError as e:
            print(f"{tdir.name}: kept ({e})")
            continue
        sha = sha256_file(graph)
        prefix = meta["id"].rsplit("-", 1)[0] if meta["id"].count("-") else meta["id"]
        new_id = f"{prefix}{tag}-{sha[:12]}"
        meta.update(id=new_id, graph={**meta["graph"], "sha256": sha})
        bundle.write_json(tdir / "trunk.json", meta)
        tdir.rename(tdir.with_name(new_id))
        renamed[tdir.name] = (new_id, sha)
        print(f"{tdir.name} -> {new_id}: {said}")
    for card_path in sorted(tmp.glob("*/card.json")):
        card = json.loads(card_path.read_text())
        ref = card.get("trunk") or {}
        if ref.get("id") not in renamed:
            continue
        card["trunk"] = {**ref, "id": renamed[ref["id"]][0], "sha256": renamed[ref["id"]][1]}
        texts = [t["text"] for t in card["selftest"]]
        probs = bundle_probabilities(tmp, card_path.parent.name, texts, card)
        card["selftest"] = [{**t, "probability": p} for t, p in zip(card["selftest"], probs)]
        bundle.write_json(card_path, card)
    tmp.rename(out)
    print(f"wrote {out}: {len(renamed)} trunk(s) rewritten")


def _add_build(sub) -> None:
    b = sub.add_parser("build", help="train the candidate pool and write bundles")
    _data_args(b)
    b.add_argument("--out", required=True, help="model root to write candidates into")
    b.add_argument("--classes", default="", help="comma-separated subset (default: all)")
    b.add_argument("--algorithms", default="trunk-logreg,trunk-mlp,tokenbag")
    b.add_argument("--rebalance", default="", help="override: none|undersample|oversample|class_weight")
    b.add_argument("--ratio", type=float, default=0.0, help="negatives per positive for under/oversampling")
    b.add_argument("--finetune-epochs", type=int, default=2)
    b.add_argument("--tokenbag-dim", type=int, default=64)
    _trunk_precision_arg(b)
    _run_args(b)
    b.add_argument(
        "--head-augment", type=int, default=0, help="heads on a shared trunk: noisy copies of each train title"
    )
    b.add_argument("--teacher", default="", help="kd19-logreg: the logits file `teach` wrote")
    b.add_argument("--temperature", type=float, default=2.0, help="kd19-logreg: distillation temperature")
    b.add_argument("--hard-weight", type=float, default=0.5, help="kd19-logreg: weight of the labelled loss")
    _training_args(b)
    b.set_defaults(func=build)


def _add_trunk(sub) -> None:
    tr = sub.add_parser("trunk", help="fine-tune the backbone on a CSV's labels and export it as a trunk")
    _data_args(tr)
    tr.add_argument("--out", required=True, help="folder to write trunks/<id>/ into")
    _trunk_precision_arg(tr)
    tr.add_argument(
        "--activations",
        default="per-row",
        choices=["per-row", "per-tensor"],
        help="int8 activation scales: per text row (batchable) or per batch (rowquant.py)",
    )
    _run_args(tr)
    _training_args(tr)
    _fast_levers(tr)
    tr.set_defaults(func=trunk)


def _fast_levers(p) -> None:
    """The levers that buy time (candidates.TrainSettings; docs/TRAINING.md, "The fast fine-tune")."""
    g = p.add_argument_group("fast fine-tune levers")
    g.add_argument("--batch-size", type=int, default=None, help="texts per step (default 32)")
    g.add_argument("--freeze-embeddings", action="store_true", default=None, help="keep the token embeddings frozen")
    g.add_argument("--length-buckets", action="store_true", default=None, help="batch texts of like length")
    g.add_argument("--label-smoothing", type=float, default=None, help="cross-entropy label smoothing")
    g.add_argument("--average-last", type=float, default=None, help="average the weights over this last share")
    g.add_argument("--cosine-scale", type=float, default=None, help="a cosine classifier at this scale")


def _add_teach(sub) -> None:
    t = sub.add_parser("teach", help="write a fine-tuned teacher's logits for distillation")
    _data_args(t)
    t.add_argument("--summary-col", default="summary", help="unlabelled text: chunks of train rows' summaries")
    t.add_argument("--augment", type=int, default=1, help="noisy copies of each train title")
    t.add_argument("--max-unlabelled", type=int, default=12000, help="at most this many summary chunks")
    t.add_argument("--out", required=True, help="the .npz to write (and a .json summary beside it)")
    _run_args(t)
    _training_args(t)
    t.set_defaults(func=teach)


def _add_global(sub) -> None:
    g = sub.add_parser("global", help="train and score the global multi-class baselines")
    _data_args(g)
    g.add_argument("--out", required=True, help="model root to write the column-head bundles and trunks into")
    g.add_argument("--summary", default="", help="where to write the sklearn scores (default: OUT/global.json)")
    g.add_argument("--same-trunk", default="", help="trunk id in OUT: also fit a 19-way logistic regression on it")
    g.add_argument("--finetune", action="store_true", help="also fine-tune the backbone as one 19-way classifier")
    g.add_argument("--no-frozen", action="store_true", help="skip the logistic regression on the frozen trunk")
    g.add_argument("--logreg-c", type=float, default=10.0)
    g.add_argument(
        "--head-augment", type=int, default=0, help="logistic regressions: noisy copies of each train title too"
    )
    _run_args(g)
    _training_args(g)
    g.set_defaults(func=global_baselines)


def _add_report(sub) -> None:
    rp = sub.add_parser("report", help="draw docs/REPORT.md and its figures from `moe report` JSON")
    rp.add_argument("--json", default="../docs/report/report.json")
    rp.add_argument("--bench", default="../docs/bench/results.jsonl", help="benchmark results (may be absent)")
    rp.add_argument("--out", default="../docs/REPORT.md")
    rp.add_argument("--figures", default="../docs/report")
    rp.add_argument("--command", default="scripts/report.sh", help="the command named in the page")
    rp.add_argument(
        "--online", default="../docs/report/online.json", help="scripts/online_eval.py results (may be absent)"
    )
    rp.add_argument(
        "--clinc", default="../docs/results/clinc150-vs-global.json", help="clinc_vs_global.py results (may be absent)"
    )
    rp.add_argument("--clinc-fit", default="../docs/results/clinc150-fit-summary.json", help="moe fit's summary")
    rp.add_argument(
        "--clinc-accurate",
        default="../docs/results/clinc150-accurate.json",
        help="the accurate path's figures (scripts/fit-accurate.sh; may be absent)",
    )
    rp.add_argument(
        "--clinc-accurate-paired",
        default="../docs/results/clinc150-accurate-vs-frozen.json",
        help="training/scripts/paired_sets.py: the accurate set against the frozen-trunk fit",
    )
    rp.add_argument(
        "--open-intent",
        default="../docs/results/wikihow-open-intent.json",
        help="open_intent.py results (may be absent)",
    )
    rp.add_argument(
        "--unknowns", default="../docs/results/clinc150-unknowns.json", help="clinc_unknowns.py results (may be absent)"
    )
    for flag, file in (
        ("coverage-wikihow", "wikihow-coverage"),
        ("coverage-wikihow-softmax", "wikihow-coverage-softmax"),
        ("coverage-clinc", "clinc150-coverage"),
    ):
        rp.add_argument(f"--{flag}", default=f"../docs/results/{file}.json", help="coverage.py results (may be absent)")
    for flag, file in (("adb-frozen", "clinc150-adb-frozen"), ("adb-tuned", "clinc150-adb-tuned")):
        rp.add_argument(
            f"--{flag}", default=f"../docs/results/{file}.json", help="adb_protocol.py results (may be absent)"
        )
    rp.set_defaults(func=lambda a: __import__("moe_training.report", fromlist=["main"]).main(a))


def _add_model_root_tools(sub) -> None:
    """The commands that copy, extend or query a model root: linearize, lexicon, rowquant, simplify, reference, spell."""
    lz = sub.add_parser("linearize", help="copy a model root with its Gemm heads as linear heads (computed in Rust)")
    lz.add_argument("src")
    lz.add_argument("out")
    lz.add_argument("bundles", nargs="*", help="only these bundles (default: every Gemm head)")
    lz.set_defaults(
        func=lambda a: print(
            "linear:",
            len(__import__("moe_training.linearize", fromlist=["x"]).linearize(Path(a.src), Path(a.out), a.bundles)),
        )
    )
    sp = sub.add_parser("lexicon", help="build the spelling lexicon, or attach one to a model root's trunks")
    sp_sub = sp.add_subparsers(dest="lexicon_cmd", required=True)
    spb = sp_sub.add_parser("build", help="count the train split's titles and summaries; add dictionary words")
    _data_args(spb)
    spb.add_argument("--summary-col", default="summary")
    spb.add_argument("--dictionary", default="../data/words/american-english")
    spb.add_argument("--tokenizer", default="", help="a tokenizer.json whose whole-word vocabulary is known too")
    spb.add_argument("--out", required=True)
    spb.set_defaults(func=lexicon_build)
    spa = sp_sub.add_parser("attach", help="name a lexicon as the spelling step of every trunk / full bundle")
    spa.add_argument("lexicon")
    spa.add_argument("root")
    spa.set_defaults(
        func=lambda a: print(
            "spelling:",
            ", ".join(__import__("moe_training.spelling", fromlist=["x"]).attach(Path(a.lexicon), Path(a.root))),
        )
    )
    rq = sub.add_parser("rowquant", help="copy a model root with its int8 trunks quantised per row (batchable)")
    rq.add_argument("src")
    rq.add_argument("out")
    rq.set_defaults(func=rowquant)
    si = sub.add_parser(
        "simplify", help="copy a model root with its trunk graphs simplified (checked against the original)"
    )
    si.add_argument("src")
    si.add_argument("out")
    si.set_defaults(func=simplify)
    r = sub.add_parser("reference", help="onnxruntime probabilities for texts")
    r.add_argument("--root", required=True)
    r.add_argument("--bundle", required=True)
    r.add_argument("texts", nargs="+")
    r.set_defaults(func=reference)
    sc = sub.add_parser("spell", help="correct JSON texts (stdin) with a lexicon: the Rust corrector's oracle")
    sc.add_argument("lexicon")
    sc.set_defaults(func=spell)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="moe_training", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (_add_build, _add_trunk, _add_teach, _add_global, _add_report, _add_model_root_tools):
        add(sub)
    args = p.parse_args(argv)
    args.func(args)
