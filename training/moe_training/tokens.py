"""The service's input contract, shared by training, export checks and the parity oracle."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer


def encode(tok: Tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """Tokenize and pad to the longest in the batch, as the service's executors do."""
    encs = tok.encode_batch(texts)
    n = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), n), dtype=np.int64)
    mask = np.zeros((len(encs), n), dtype=np.int64)
    types = np.zeros((len(encs), n), dtype=np.int64)
    for i, e in enumerate(encs):
        k = len(e.ids)
        ids[i, :k] = e.ids
        mask[i, :k] = e.attention_mask
        types[i, :k] = e.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
