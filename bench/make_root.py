"""Make a model root serving one algorithm for every class: copies `<class-slug>--<algorithm>` for
each class of models/registry.json from SRC (with the trunks they use) into DST and writes its
registry (uniform gate, probability scores). Used by bench/run.sh to serve the global classifier
(its column heads) and single-algorithm sets through the same service.

    python bench/make_root.py SRC DST ALGORITHM   (exit 3 when SRC lacks a bundle: skip the run)
"""

import json
import re
import shutil
import sys
from pathlib import Path

src, dst, algorithm = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
classes = sorted(json.loads(Path("models/registry.json").read_text())["experts"])
experts = {c: f"{re.sub(r'[^a-z0-9]+', '-', c.lower()).strip('-')}--{algorithm}" for c in classes}
missing = [b for b in experts.values() if not (src / b / "card.json").is_file()]
if missing:
    print(f"{src} lacks {len(missing)} {algorithm} bundles (e.g. {missing[0]})", file=sys.stderr)
    sys.exit(3)
if dst.exists():
    shutil.rmtree(dst)
(dst / "trunks").mkdir(parents=True)
for b in experts.values():
    shutil.copytree(src / b, dst / b)
    trunk = json.loads((src / b / "card.json").read_text()).get("trunk")
    if trunk and not (dst / "trunks" / trunk["id"]).exists():
        shutil.copytree(src / "trunks" / trunk["id"], dst / "trunks" / trunk["id"])
(dst / "registry.json").write_text(json.dumps({"schema": 1, "experts": experts, "gate": {"kind": "uniform"}}, indent=2))
print(sum(f.stat().st_size for f in dst.rglob("*.onnx")))
