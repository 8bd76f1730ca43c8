"""A model root with N experts for the scale benchmark (bench/scale.sh), from a fitted root.

Usage: python bench/scale_root.py FITTED_ROOT N OUT

The first len(fitted) experts are the fitted ones; beyond that, every fitted bundle is served again
under a new class name ("<class> (k)", version "<version>-xk"): the same head file (hard link, so
its hash still matches), the same trunk, the same self-test. Serving cost per expert is that of a
real fitted linear head; only the class names are synthetic. Nothing is trained.
"""

import json
import os
import shutil
import sys
from pathlib import Path


def link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_dir():
            link_tree(p, dst / p.name)
        else:
            os.link(p, dst / p.name)


def main(fitted: Path, n: int, out: Path) -> None:
    reg = json.loads((fitted / "registry.json").read_text())
    bundles = sorted(reg["experts"].values())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    link_tree(fitted / "trunks", out / "trunks")
    experts = {}
    for i in range(n):
        src = fitted / bundles[i % len(bundles)]
        k = i // len(bundles)
        card = json.loads((src / "card.json").read_text())
        name = src.name if k == 0 else f"{src.name}-x{k}"
        (out / name).mkdir()
        for f in src.iterdir():
            if f.name != "card.json":
                os.link(f, out / name / f.name)
        if k:
            card["class"] = f"{card['class']} ({k})"
            card["version"] = f"{card['version']}-x{k}"
        (out / name / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        experts[card["class"]] = name
    # The fitted root's gate (a fitted gate, if any, names only the fitted classes: uniform then).
    gate = reg["gate"] if n <= len(bundles) or reg["gate"].get("kind") == "uniform" else {"kind": "uniform"}
    doc = {**reg, "experts": experts, "gate": gate, "history": {}}
    (out / "registry.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{out}: {len(experts)} experts on {len(bundles)} fitted heads")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
