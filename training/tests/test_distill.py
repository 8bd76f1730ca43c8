"""Distillation, resumable training and training-time text on small cases: a teacher's logits file,
a student trunk trained on it (a real bundle), a checkpointed run that resumes to the same weights as
an unbroken one, and the augmentations."""

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA
from moe_training import augment, backbone, candidates

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    subprocess.run([sys.executable, "-m", "moe_training", *args], cwd=ROOT, check=True)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    common = ["--data", str(DATA), "--quick", "--max-steps", "2", "--checkpoints", str(d / "ckpt"), "--threads", "1"]
    _run("teach", "--out", str(d / "teacher.npz"), *common)
    _run("build", "--out", str(d / "root"), "--algorithms", "kd19-logreg", "--classes", "Travel",
         "--teacher", str(d / "teacher.npz"), "--head-augment", "2", *common)  # fmt: skip
    return d


def test_teacher_file_holds_labelled_augmented_and_unlabelled_rows(distilled):
    t = np.load(distilled / "teacher.npz")
    summary = json.loads((distilled / "teacher.json").read_text())
    rows = summary["rows"]
    n = rows["train_titles"] + rows["augmented"] + rows["summary_chunks"]
    assert t["logits"].shape == (n, len(t["classes"])) == (len(t["texts"]), 19)
    labels = t["labels"]
    assert (labels[: rows["train_titles"] + rows["augmented"]] >= 0).all()
    assert (labels[rows["train_titles"] + rows["augmented"] :] == -1).all() and rows["summary_chunks"] > 0
    # The teacher's logits are its model's: the augmented copies differ from their titles.
    k = rows["train_titles"]
    assert t["texts"][k] != t["texts"][0] or t["texts"][k + 1] != t["texts"][1]


def test_distilled_trunk_and_head_are_a_bundle_that_names_its_teacher(distilled):
    root = distilled / "root"
    card = json.loads((root / "travel--kd19-logreg" / "card.json").read_text())
    trunk = json.loads((root / "trunks" / card["trunk"]["id"] / "trunk.json").read_text())
    assert card["trunk"]["id"].startswith("minilm-l6-kd19-int8-")
    ft = trunk["fine_tuned"]
    assert "fine-tuned 19-way" in ft["distilled_from"] and ft["temperature"] == 2.0 and ft["steps"] == 2
    assert ft["rows"] > ft["labelled_rows"] > 0
    # The head was fitted on every train title and two noisy copies of each, with their labels.
    prov = card["provenance"]
    assert prov["augmented_copies_per_title"] == 2
    assert prov["rebalance"]["rows"] % 3 == 0 and prov["rebalance"]["positives"] % 3 == 0


def test_head_rows_are_the_titles_then_labelled_noisy_copies():
    from types import SimpleNamespace

    from moe_training.cli import head_rows

    train = SimpleNamespace(texts=["how to pack a bag", "how to bake bread at home"], labels=["Travel", "Food"])
    texts, labels = head_rows(SimpleNamespace(head_augment=3, seed=42), train)
    assert texts[:2] == train.texts and len(texts) == 8
    assert labels == ["Travel", "Food"] + ["Travel"] * 3 + ["Food"] * 3
    assert head_rows(SimpleNamespace(head_augment=0, seed=42), train) == (train.texts, train.labels)


def test_distillation_loss_is_the_tempered_kl_plus_the_labelled_cross_entropy():
    """candidates.distillation_loss against the formula written out in numpy."""
    rng = np.random.default_rng(3)
    student, teacher = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    labels = np.array([2, -1, 0, -1, 4, 1])
    t, w = 2.0, 0.5

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_t, p_s = softmax(teacher / t), softmax(student / t)
    kl = t**2 * np.sum(p_t * (np.log(p_t) - np.log(p_s))) / len(student)
    rows = labels >= 0
    ce = -np.mean(np.log(softmax(student[rows])[np.arange(rows.sum()), labels[rows]]))
    got = candidates.distillation_loss(
        torch.tensor(student), torch.tensor(p_t), torch.tensor(labels), temperature=t, hard_weight=w
    )
    assert float(got) == pytest.approx(kl + w * ce, rel=1e-9)
    # A student equal to its teacher on unlabelled rows costs nothing; a different one does.
    none = torch.full((6,), -1)
    same = candidates.distillation_loss(torch.tensor(teacher), torch.tensor(p_t), none, t, w)
    assert (
        abs(float(same))
        < 1e-12
        < float(candidates.distillation_loss(torch.tensor(student), torch.tensor(p_t), none, t, w))
    )


class _Tiny(torch.nn.Module):
    """A token-bag classifier: fast enough to train twice in a test."""

    def __init__(self, vocab):
        super().__init__()
        self.emb = torch.nn.EmbeddingBag(vocab, 8)
        self.out = torch.nn.Linear(8, 3)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, input_ids, attention_mask):
        return self.out(self.drop(self.emb(input_ids, per_sample_weights=None)))


def test_a_resumed_run_ends_with_the_weights_of_an_unbroken_one(tmp_path, monkeypatch):
    tok = backbone.load_tokenizer()
    texts = [f"how to do thing number {i}" for i in range(40)]
    y = torch.tensor([i % 3 for i in range(40)])

    class Killed(Exception):
        pass

    def train(ckpt, killed_at=None):
        torch.manual_seed(0)
        model = _Tiny(tok.get_vocab_size())
        s = candidates.TrainSettings(batch_size=8, max_steps=12, warmup=0.2)
        calls = []

        def loss(out, i):
            if killed_at is not None and len(calls) == killed_at:
                raise Killed  # the process dies during step killed_at + 1
            calls.append(1)
            return torch.nn.functional.cross_entropy(out, y[i])

        steps = candidates._train_loop(model, ["input_ids", "attention_mask"], tok, texts, 3, 1e-2, s, "t", loss,
                                       head=(model.out, 5e-2), checkpoint=ckpt)  # fmt: skip
        return model, steps, len(calls)

    unbroken, n, _ = train(None)
    assert n == 12
    monkeypatch.setattr(candidates, "CHECKPOINT_EVERY", 5)
    monkeypatch.setattr(candidates, "CHECKPOINT_SECONDS", 0.0)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Killed):
        train(ckpt, killed_at=7)  # checkpoint at step 5; steps 6 and 7 are lost with the process
    assert torch.load(ckpt, weights_only=False)["step"] == 5
    resumed, n, trained = train(ckpt)
    assert (n, trained) == (12, 7)  # steps 6..12 run again, 1..5 are replayed from the checkpoint
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    # A finished checkpoint is loaded, not trained again.
    again, n, trained = train(ckpt)
    assert (n, trained) == (12, 0)
    for a, b in zip(unbroken.state_dict().values(), again.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_fine_tunes_run_on_the_gpu_torch_sees_unless_told_otherwise(monkeypatch, capsys):
    monkeypatch.delenv("MOE_TRAIN_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backbone.train_device() == torch.device("cuda")
    monkeypatch.setenv("MOE_TRAIN_DEVICE", "cpu")
    assert backbone.train_device() == torch.device("cpu")
    monkeypatch.delenv("MOE_TRAIN_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backbone.train_device() == torch.device("cpu")
    # The loop says where it trains and hands the model back on the CPU (export and parity run there).
    tok = backbone.load_tokenizer()
    model = _Tiny(tok.get_vocab_size())
    s = candidates.TrainSettings(batch_size=4, max_steps=2, warmup=0.0)
    y = torch.tensor([0, 1, 2, 0])
    candidates._train_loop(model, ["input_ids", "attention_mask"], tok, ["a b", "c d", "e f", "g h"], 1, 1e-2, s,
                           "tiny", lambda out, i: torch.nn.functional.cross_entropy(out, y[i]))  # fmt: skip
    assert "tiny: training on cpu" in capsys.readouterr().out
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_augmentations_are_seeded_noisy_and_keep_the_title():
    titles = ["how to improve your artistic skills quickly", "how to keep safe during rides at a disney park"]
    a = augment.augmented(titles, 20, seed=1)
    assert a == augment.augmented(titles, 20, seed=1) and len(a) == 40
    assert sum(x != titles[i // 20] for i, x in enumerate(a)) >= 30
    assert any(x[:1].isupper() for x in a) and any(x.endswith("?") for x in a)
    w = augment.typo("artistic", random.Random(3))
    assert w != "artistic" and abs(len(w) - len("artistic")) <= 1
    c = augment.chunks(["one two three four five six seven eight nine ten eleven twelve thirteen"], seed=0, low=6)
    assert all(6 <= len(x.split()) <= 14 for x in c) and " ".join(c).startswith("one two three")


def test_length_buckets_keep_every_row_once_and_batch_like_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=1000)
    plain = candidates.epoch_batches(np.random.default_rng(1), lengths, 16, buckets=False)
    bucketed = candidates.epoch_batches(np.random.default_rng(1), lengths, 16, buckets=True)
    for batches in (plain, bucketed):
        assert len(batches) == 63  # ceil(1000 / 16) either way: resumed runs count steps alike
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    pad = lambda bs: sum(len(b) * lengths[b].max() - lengths[b].sum() for b in bs)  # noqa: E731
    assert pad(bucketed) < pad(plain) / 3  # padding tokens, the work the buckets save
    # Batches come in a shuffled order, not shortest first.
    assert not np.all(np.diff([lengths[b].max() for b in bucketed]) >= 0)


def test_levers_freeze_the_embeddings_average_the_weights_and_read_the_unit_embedding():
    enc = backbone.load_encoder()
    tok = backbone.load_tokenizer()
    model = candidates._Global(enc, 3, backbone.inputs(), cosine=10.0)
    feeds = backbone.encode(tok, ["book a flight", "what is my balance"])
    args = [torch.from_numpy(feeds[n]) for n in model.names]
    with torch.no_grad():
        logits = model(*args)
        e = torch.nn.functional.normalize(backbone.mean_pool(backbone.run_encoder(enc, model.names, args), args[1]))
        w = torch.nn.functional.normalize(model.out.weight)
    assert torch.allclose(logits, 10.0 * e @ w.T, atol=1e-5) and logits.abs().max() <= 10.0 + 1e-4
    assert model.out.bias is None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    texts = ["book a flight", "what is my balance", "play some music", "set an alarm"] * 2
    y = torch.tensor([0, 1, 2, 0] * 2)
    s = candidates.TrainSettings(batch_size=4, max_steps=4, freeze_embeddings=True, average_last=1.0)
    snapshots = []
    old = candidates.AVERAGE_EVERY
    candidates.AVERAGE_EVERY = 1
    try:
        steps = candidates._train_19way(
            model, tok, texts, s, "t", "t", lambda out, i: torch.nn.functional.cross_entropy(out, y[i]),
            candidates._recipe(s), on_epoch=lambda m, k: snapshots.append(k),
        )  # fmt: skip
    finally:
        candidates.AVERAGE_EVERY = old
    assert steps["steps"] == 4 and snapshots == [1, 2]  # 2 steps an epoch: the hook after each whole one
    after = model.state_dict()
    emb = [k for k in before if k.startswith("encoder.embeddings.")]
    assert emb and all(torch.equal(before[k], after[k]) for k in emb)
    assert not torch.equal(
        before["encoder.encoder.layer.5.output.dense.weight"], after["encoder.encoder.layer.5.output.dense.weight"]
    )
    assert candidates._recipe(s)["freeze_embeddings"] is True
    assert "cosine_scale" not in candidates._recipe(candidates.TrainSettings())  # old recipes keep their names


def test_the_average_is_the_mean_of_the_weights_it_saw():
    lin = torch.nn.Linear(2, 1)
    avg = candidates._Average(lin, start=2)
    seen = []
    for step in range(1, 7):
        with torch.no_grad():
            lin.weight.fill_(float(step))
        avg.update(step)
        if step >= 2 and (step - 2) % candidates.AVERAGE_EVERY == 0:
            seen.append(float(step))
    avg.apply()
    assert seen and torch.allclose(lin.weight, torch.full_like(lin.weight, float(np.mean(seen))))
