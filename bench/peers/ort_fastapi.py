"""Peer (b): what a careful Python user writes. FastAPI + onnxruntime over the same ONNX bundles:
tokenize, run the shared trunk once, then the experts' heads one after another (a linear head's dot
product in numpy, as the service computes it in Rust). Run with
`uvicorn --workers <cores> bench.peers.ort_fastapi:app`."""

import json

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

from bench.peers.common import answer, experts, feeds, tokenizer

opts = ort.SessionOptions()
opts.intra_op_num_threads = 1  # one thread per worker process; workers = cores
EXPERTS = experts()
CLASSES = [e[0] for e in EXPERTS]
THRESHOLDS = [e[1]["threshold"]["value"] for e in EXPERTS]
_sessions, _tokenizers = {}, {}


def session(path):
    if path not in _sessions:
        _sessions[path] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return _sessions[path]


PLAN = []
for cls, card, bdir, tdir in EXPERTS:
    if tdir is not None:
        tok = _tokenizers.setdefault(tdir, tokenizer(tdir / "tokenizer.json", card["max_seq_len"]))
        if card["kind"] == "linear":
            head = json.loads((bdir / card["graph"]["file"]).read_text())
            graph = (np.array(head["weights"], dtype=np.float32), np.float32(head["bias"]))
        else:
            graph = session(bdir / card["graph"]["file"])
        PLAN.append((tok, session(tdir / "trunk.onnx"), graph))
    else:
        tok = tokenizer(bdir / "tokenizer.json", card["max_seq_len"])
        PLAN.append((tok, None, session(bdir / card["graph"]["file"])))

app = FastAPI()


class Req(BaseModel):
    text: str


@app.post("/classify")
def classify(req: Req):
    probs, cache, tokens = [], {}, {}
    for tok, trunk, graph in PLAN:
        if id(tok) not in tokens:  # tokenize once per distinct tokenizer, as the service does
            tokens[id(tok)] = feeds(tok, req.text)
        f = tokens[id(tok)]
        if trunk is not None:
            if id(trunk) not in cache:
                names = [i.name for i in trunk.get_inputs()]
                cache[id(trunk)] = trunk.run(None, {k: f[k] for k in names})[0]
            if isinstance(graph, tuple):  # linear head: sigmoid(w . embedding + b)
                w, b = graph
                probs.append(float(1.0 / (1.0 + np.exp(-(cache[id(trunk)][0] @ w + b)))))
                continue
            logits = graph.run(None, {graph.get_inputs()[0].name: cache[id(trunk)]})[0]
        else:
            names = [i.name for i in graph.get_inputs()]
            logits = graph.run(None, {k: f[k] for k in names})[0]
        z = logits[0] - logits[0].max()
        probs.append(float(np.exp(z[1]) / np.exp(z).sum()))
    return answer(CLASSES, probs, THRESHOLDS)
