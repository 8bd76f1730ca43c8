#!/usr/bin/env bash
# What online training costs live traffic: one `moe serve` on a copy of models/, wrk at concurrency
# C on test titles, in interleaved rounds of two windows: "quiet" (nothing else) and "training"
# (POST /experts/Youth/train jobs back to back for the whole window: its ~270 training titles + 1000
# default negatives). Prints p50 / p99 / req/s per window and how many jobs finished.
#   bench/train-load.sh OUT.jsonl [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1; ROUNDS=${2:-3}
D=${BENCH_SECONDS:-15}; C=${BENCH_CONCURRENCY:-4}; PORT=18290
source bench/common.sh
.venv/bin/python - data/wikihow19_titles.csv "$TMP" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
open(f"{sys.argv[2]}/texts.txt", "w").write("\n".join(r["title"] for r in rows if r["split"] == "test") + "\n")
pos = [r["title"] for r in rows if r["split"] == "train" and r["label"] == "Youth"]
json.dump({"positives": pos, "mode": "install"}, open(f"{sys.argv[2]}/train.json", "w"))
PY
serve_admin $PORT bench
trainer() { # post jobs back to back until killed; count finished ones
  local n=0
  while true; do
    id=$(curl -s -X POST http://127.0.0.1:$PORT/experts/Youth/train -H 'authorization: Bearer bench' \
      -H 'content-type: application/json' --data-binary @"$TMP/train.json" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    while curl -s http://127.0.0.1:$PORT/jobs/"$id" | grep -q '"state":"running"'; do sleep 0.1; done
    n=$((n + 1)); echo $n > "$TMP/jobs"
  done
}
: > "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for window in quiet training; do
    echo 0 > "$TMP/jobs"
    tpid=
    if [ "$window" = training ]; then trainer & tpid=$!; sleep 0.5; fi
    line=$(BATCH=1 BENCH_TEXTS=$TMP/texts.txt wrk -t 2 -c "$C" -d "${D}s" --timeout 10s -s bench/classify.lua \
      http://127.0.0.1:$PORT | tail -n 1)
    [ -n "$tpid" ] && { kill "$tpid"; wait "$tpid" 2>/dev/null || true; }
    echo "$line" | .venv/bin/python -c "import json,sys; d=json.loads(sys.stdin.read()); \
d.update(window=sys.argv[1], round=int(sys.argv[2]), concurrency=int(sys.argv[3]), jobs=int(sys.argv[4])); print(json.dumps(d))" \
      "$window" "$round" "$C" "$(cat "$TMP/jobs")" | tee -a "$OUT"
    sleep 2
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for w in ("quiet", "training"):
    rs = [r for r in rows if r["window"] == w]
    med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
    print(f"{w:>9}: {med('requests_per_s'):7.1f} req/s  p50 {med('p50_ms'):5.2f} ms  p99 {med('p99_ms'):6.2f} ms  "
          f"non-2xx {sum(r['non_2xx'] for r in rs)}  jobs {sum(r['jobs'] for r in rs)}  "
          f"(p99 rounds: {', '.join(str(r['p99_ms']) for r in rs)})")
PY
