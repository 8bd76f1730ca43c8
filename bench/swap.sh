#!/usr/bin/env bash
# Swap latency (PUT request to installed) for a small bundle (a head on the already-loaded trunk)
# and a large one (a per-class fine-tuned MiniLM, 23 MB, its own session), and classify latency at
# concurrency 16 in steady state against during back-to-back swaps. Needs build/candidates
# (scripts/rebuild-models.sh). Loopback only, bounded. Writes docs/bench/swap.json.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${BENCH_SECONDS:-8}
C=build/candidates
[ -d "$C/travel--finetune-minilm" ] || { echo "bench/swap.sh: needs $C (scripts/rebuild-models.sh)"; exit 0; }
root=$(mktemp -d)
cp -r models/. "$root/"
cp -r "$C/travel--finetune-minilm" "$C/travel--tokenbag" "$root/"
TEXTS=$(mktemp)
.venv/bin/python - "${MOE_DATA:-data/wikihow19_titles.csv}" "$TEXTS" <<'PY'
import csv, sys
open(sys.argv[2], "w").write("\n".join(r["title"] for r in csv.DictReader(open(sys.argv[1])) if r["split"] == "test") + "\n")
PY
PORT=18280 TOKEN=bench-token
target/release/moe serve --state "$(mktemp -d)" --port $PORT --models "$root" --admin-token $TOKEN > /tmp/moe-swap-bench.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$root" "$TEXTS"' EXIT
for _ in $(seq 1 150); do curl -sf -o /dev/null http://127.0.0.1:$PORT/readyz && break; sleep 0.2; done
swap() { curl -s -X PUT "http://127.0.0.1:$PORT/experts/Travel" -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d "{\"bundle\": \"$1\"}" | .venv/bin/python -c "import json,sys; d=json.load(sys.stdin); print(d['took_ms']) if 'took_ms' in d else sys.exit(f'swap failed: {d}')"; }
times() { # bundle-a bundle-b rounds -> took_ms of every swap to bundle-a
  for _ in $(seq 1 "$3"); do swap "$1"; swap "$2" > /dev/null; done; }
small=$(times travel--tokenbag travel--ft19-logreg 5 | tr '\n' ' ')
large=$(times travel--finetune-minilm travel--ft19-logreg 5 | tr '\n' ' ')
steady=$(BENCH_TEXTS=$TEXTS wrk -t 2 -c 16 -d "${D}s" -s bench/classify.lua http://127.0.0.1:$PORT | tail -n 1)
( end=$((SECONDS + D)); n=0; while [ $SECONDS -lt $end ]; do
    b=travel--finetune-minilm; [ $((n % 2)) = 1 ] && b=travel--ft19-logreg; swap $b > /dev/null; n=$((n + 1)); done; echo $n > /tmp/moe-swap-count ) &
SWAPPER=$!
during=$(BENCH_TEXTS=$TEXTS wrk -t 2 -c 16 -d "${D}s" -s bench/classify.lua http://127.0.0.1:$PORT | tail -n 1)
wait $SWAPPER
.venv/bin/python - "$small" "$large" "$steady" "$during" "$(cat /tmp/moe-swap-count)" <<'PY' | tee docs/bench/swap.json
import json, statistics, sys
small, large = ([float(x) for x in a.split()] for a in sys.argv[1:3])
print(json.dumps({
    "swap_ms_small_bundle": {"bundle": "travel--tokenbag (8 MB token-bag full model)", "median": statistics.median(small), "all": small},
    "swap_ms_large_bundle": {"bundle": "travel--finetune-minilm (23 MB int8 MiniLM)", "median": statistics.median(large), "all": large},
    "classify_c16_steady": json.loads(sys.argv[3]), "classify_c16_during_swaps": json.loads(sys.argv[4]),
    "swaps_during_load": int(sys.argv[5])}, indent=1))
PY
