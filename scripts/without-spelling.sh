#!/usr/bin/env bash
# Copy a model root's registry set (and the global column heads on its trunk, if any) to a new root
# whose trunks name no spelling lexicon, and calibrate it there: the comparison system "the same set
# without spelling correction" of docs/REPORT.md. Usage: scripts/without-spelling.sh SRC DST
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$1 DST=$2
DATA=${MOE_DATA:-data/wikihow19_titles.csv}
rm -rf "$DST" && mkdir -p "$DST/trunks"
.venv/bin/python - "$SRC" "$DST" <<'PY'
import json, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
reg = json.loads((src / "registry.json").read_text())
trunks = {json.loads((src / b / "card.json").read_text())["trunk"]["id"] for b in reg["experts"].values()}
bundles = set(reg["experts"].values())
for d in src.glob("*--global-ft19-logreg"):  # the global model on the same trunk
    if json.loads((d / "card.json").read_text()).get("trunk", {}).get("id") in trunks:
        bundles.add(d.name)
shutil.copy(src / "registry.json", dst / "registry.json")
for b in sorted(bundles):
    shutil.copytree(src / b, dst / b)
for t in trunks:
    shutil.copytree(src / "trunks" / t, dst / "trunks" / t)
    card = json.loads((dst / "trunks" / t / "trunk.json").read_text())
    lexicon = card.pop("spelling", None)
    (dst / "trunks" / t / "trunk.json").write_text(json.dumps(card, indent=2) + "\n")
    if lexicon:
        (dst / "trunks" / t / lexicon["file"]).unlink()
print(f"{dst}: {len(bundles)} bundles on {len(trunks)} trunk(s), no spelling lexicon")
PY
target/release/moe calibrate --models "$DST" --data "$DATA"
