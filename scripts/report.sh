#!/usr/bin/env bash
# Regenerate docs/REPORT.md and its figures (docs/report/): `moe report` scores every system (the
# served MoE, each algorithm family, the best-per-class MoE, the global baselines) on the test split
# through the serving runtime and writes docs/report/report.json; the trainer's `report` command
# draws the page from it and from the benchmark results (docs/bench/results.jsonl).
# Families and the best-per-class MoE need build/ (scripts/rebuild-models.sh); without it the
# report covers the committed models/ only. About 2 minutes with build/, 30 s without.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${MOE_DATA:-data/wikihow19_titles.csv}
.venv/bin/python -c "import matplotlib, scipy" 2>/dev/null || scripts/setup.sh --train
[ -x target/release/moe ] || cargo build --release --locked
export OMP_WAIT_POLICY=PASSIVE
target/release/moe report --models models --split test --data "$DATA" --out docs/report/report.json
(cd training && ../.venv/bin/python -m moe_training report --json ../docs/report/report.json \
   --bench ../docs/bench/results.jsonl --out ../docs/REPORT.md --figures ../docs/report)
