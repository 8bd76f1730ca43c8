"""CLINC150's open-world operating points under each trade-off an operator can state to `moe fit`
(`--max-in-scope-abstain B` or `--min-oos-recall R`): one fit per option on the same trunk (the
embeddings come from the fit's cache after the first), the rule each chose on val and its val and
test figures. Test is only reported: every choice is made on val.

Usage (from the repository root):
  .venv/bin/python training/scripts/trade_offs.py OUT.json [--trunk PATH_OR_ID] [--cache DIR] \
      '--min-oos-recall 0.8' '--max-in-scope-abstain 0.03' ...
"""

import argparse
import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

FIGURES = ("in_scope_accuracy", "in_scope_declined", "out_of_scope_recall", "out_of_scope_precision", "out_of_scope_f1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("trade_offs", nargs="+", help="one `moe fit` trade-off option with its value, quoted")
    ap.add_argument("--trunk", help="`moe fit --trunk` (default: its own default)")
    ap.add_argument("--data", default="data/clinc150/clinc150.csv")
    ap.add_argument("--cache", help="`moe fit --cache` (default: its own)")
    a = ap.parse_args()
    base = ["target/release/moe", "fit", "--data", a.data, "--oos-label", "oos", "--drop-conflicts"]
    base += ["--trunk", a.trunk] if a.trunk else []
    base += ["--cache", a.cache] if a.cache else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, option in enumerate(a.trade_offs):
            cmd = base + ["--out", f"{tmp}/{i}"] + shlex.split(option)
            t = time.monotonic()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            seconds = round(time.monotonic() - t, 1)
            report = json.loads(Path(f"{tmp}/{i}/fit-report.json").read_text())
            rule = report["gate"]["open_world"] or {}
            chosen = {k: v for k, v in (rule.get("chosen_by") or {}).items() if k != "table"}
            rows.append(
                {
                    "option": option,
                    "label_rule": report["gate"]["label_rule"],
                    "score": rule.get("score"),
                    "chosen_by": chosen,
                    "val": {k: report["val"]["open_world"].get(k) for k in FIGURES},
                    "test": {k: report["test"]["open_world"].get(k) for k in FIGURES + ("auroc_rule_score",)},
                    "seconds": seconds,
                }
            )
            t, v = rows[-1]["test"], rows[-1]["val"]
            print(
                f"{option}: val {v['in_scope_accuracy']:.4f} / {v['out_of_scope_recall']:.2f}, "
                f"test {t['in_scope_accuracy']:.4f} / {t['out_of_scope_recall']:.3f}"
            )
    command = " ".join(shlex.quote(c) for c in base + ["--out", "DIR"]) + " <option>"
    a.out.write_text(json.dumps({"command": command, "trunk": report["trunk"], "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
