"""CLINC150 unknowns, end to end through the service: intents the set never saw arrive as traffic,
are declined, grouped by `GET /unknowns`, and taught back as classes by
`POST /unknowns/{group}/teach`; the taught classes are judged on test texts.

Per seed: `--held-out` intents are drawn at random and every row of them leaves the CSV (train,
val and test: nothing upstream sees them; the trunk is the general MiniLM, never trained on
CLINC150). `moe fit` fits the rest with `--oos-label oos`; the service serves it with the reduced
CSV as `--data` (the trainer samples negatives there). Traffic: the held-out intents' val texts
and the out-of-scope val queries. Each listed group whose texts are mostly one held-out intent is
taught under that intent's name (an operator reading its examples would name it so); groups of
out-of-scope queries and second groups of an intent already taught are left. Judged on test: how
many of each taught intent's test texts get its label (recall) and how many texts of other classes
and out-of-scope queries it takes (precision), and the known intents' accuracy before and after.

Usage (from the repository root, after `cargo build --release`):
  .venv/bin/python training/scripts/clinc_unknowns.py OUT.json [--seeds 0 1 2] [--held-out 20]
"""

import argparse
import csv
import json
import random
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from served import MOE, serving

DATA = Path("data/clinc150/clinc150.csv")
TOKEN = "clinc-unknowns"


def call(base, method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    req.add_header("authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def classify(base, texts):
    out = []
    for i in range(0, len(texts), 64):
        status, body = call(base, "POST", "/classify?experts=none", {"texts": texts[i : i + 64]})
        assert status == 200, body
        out.extend(body["results"])
    return out


def run(seed, held_out, work):
    rows = list(csv.DictReader(DATA.open()))
    intents = sorted({r["label"] for r in rows if r["label"] != "oos"})
    unseen = set(random.Random(seed).sample(intents, held_out))
    kept = [r for r in rows if r["label"] not in unseen]
    data = work / "known.csv"
    with data.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "split"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("text", "label", "split")} for r in kept)
    models = work / "models"
    t = time.time()
    fit = ["fit", "--data", str(data), "--oos-label", "oos", "--drop-conflicts", "--out", str(models)]
    subprocess.run([str(MOE), *fit], check=True, stdout=subprocess.DEVNULL)
    fit_s = time.time() - t
    known, new, oos = test_rows(rows, unseen)
    test = known + new + oos
    # The set as fitted, on test, by a server that keeps no unknowns (test texts never reach the store).
    serve, port = ["--data", str(data), "--text-col", "text", "--admin-token", TOKEN], 18700 + seed
    with serving(
        models, work / "state-before", port, work / "state-before.log", [*serve, "--unknowns-cap", "0"]
    ) as base:
        before = classify(base, [t for t, _ in test])
    with serving(models, work / "state", port, work / "state.log", serve) as base:
        result = measure(base, rows, unseen, before)
    return result | {"seed": seed, "held_out": sorted(unseen), "fit_s": round(fit_s, 1)}


def split(rows, name, keep):
    return [(r["text"], r["label"]) for r in rows if r["split"] == name and keep(r["label"])]


def test_rows(rows, unseen):
    """Test rows of the known intents, of the held-out ones, out-of-scope ones (in this order)."""
    return (
        split(rows, "test", lambda label: label not in unseen and label != "oos"),
        split(rows, "test", lambda label: label in unseen),
        split(rows, "test", lambda label: label == "oos"),
    )


def measure(base, rows, unseen, before):
    traffic = split(rows, "val", lambda label: label in unseen or label == "oos")
    test_known, test_unseen, test_oos = test_rows(rows, unseen)
    test = test_known + test_unseen + test_oos
    answers = classify(base, [t for t, _ in traffic])
    declined_unseen = sum(a["abstained"] for a, (_, y) in zip(answers, traffic) if y != "oos")
    declined_oos = sum(a["abstained"] for a, (_, y) in zip(answers, traffic) if y == "oos")
    label_of = dict(traffic)
    want = sum(a["abstained"] for a in answers)
    for _ in range(300):  # the store keeps declined texts a moment after the answers
        status, listing = call(base, "GET", "/unknowns?examples=10000")
        assert status == 200, listing
        if listing["seen"] >= want:
            break
        time.sleep(0.1)
    groups = []
    for g in listing["groups"]:
        truth = Counter(label_of[t] for t in g["examples"])
        top, n = truth.most_common(1)[0]
        groups.append({"id": g["id"], "size": g["size"], "majority": top, "purity": n / g["size"]})
    taught, timings = [], []
    for g in groups:
        if g["majority"] == "oos" or g["majority"] in taught:
            continue
        status, job = call(base, "POST", f"/unknowns/{g['id']}/teach", {"class": g["majority"]})
        assert status == 202, job
        while job["state"] == "running":
            time.sleep(0.5)
            job = call(base, "GET", f"/jobs/{job['id']}")[1]
        if job["state"] == "succeeded":
            taught.append(g["majority"])
            timings.append(job["result"]["timings_ms"]["total"] / 1e3)
        g["taught"] = job["state"]
    after = classify(base, [t for t, _ in test])

    def known_accuracy(answers):
        n = len(test_known)
        return sum(a["label"] == y for a, (_, y) in zip(answers[:n], test_known)) / n

    per_class = {}
    for c in taught:
        hits = sum(a["label"] == c for a, (_, y) in zip(after, test) if y == c)
        claimed = sum(a["label"] == c for a in after)
        per_class[c] = {"recall": hits / sum(y == c for _, y in test), "precision": hits / max(claimed, 1)}
    unseen_texts = [(a, y) for a, (_, y) in zip(after, test) if y in unseen]
    return {
        "traffic": {"unseen_texts": sum(y != "oos" for _, y in traffic), "oos": sum(y == "oos" for _, y in traffic)},
        "declined": {"unseen": declined_unseen, "oos": declined_oos},
        "listing": {k: listing[k] for k in ("kept", "seen", "ungrouped", "similarity", "min_size")},
        "groups": groups,
        "intents_grouped": len({g["majority"] for g in groups if g["majority"] != "oos"}),
        "grouped_purity": sum(g["purity"] * g["size"] for g in groups) / max(sum(g["size"] for g in groups), 1),
        "taught": len(taught),
        "teach_job_s_median": sorted(timings)[len(timings) // 2] if timings else None,
        "test": {
            "taught_recall_mean": sum(v["recall"] for v in per_class.values()) / max(len(per_class), 1),
            "taught_precision_mean": sum(v["precision"] for v in per_class.values()) / max(len(per_class), 1),
            "unseen_texts_labelled_right": sum(a["label"] == y for a, y in unseen_texts) / len(unseen_texts),
            "known_accuracy_before": known_accuracy(before),
            "known_accuracy_after": known_accuracy(after),
            "per_class": per_class,
        },
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--held-out", type=int, default=20)
    a = ap.parse_args()
    results = []
    for seed in a.seeds:
        work = Path(tempfile.mkdtemp(prefix=f"clinc-unknowns-{seed}-"))
        try:
            results.append(run(seed, a.held_out, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({k: v for k, v in results[-1].items() if k not in ("groups", "test")}))
        print(json.dumps({k: v for k, v in results[-1]["test"].items() if k != "per_class"}))
    Path(a.out).write_text(json.dumps({"data": str(DATA), "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
