#!/usr/bin/env bash
# The service at 19, 150 and 1,000 experts (issue 27): for each model root, in interleaved rounds
# (one server at a time, the same wrk load, the same test titles): time from start to /readyz, RSS
# when ready and after the load, p50 at concurrency 1, requests/s and p99 at concurrency 16.
#   bench/scale.sh OUT.jsonl ROUNDS NAME=ROOT [NAME=ROOT ...]
# e.g. after `moe fit --data data/clinc150/clinc150.csv --oos-label oos --drop-conflicts --out /tmp/clinc-fit`:
#   .venv/bin/python bench/scale_root.py /tmp/clinc-fit 1000 /tmp/scale-1000
#   bench/scale.sh docs/bench/scale.jsonl 3 e19=models e150=/tmp/clinc-fit e1000=/tmp/scale-1000
# Answers are the default view (?experts=top) unless EXPERTS is set (bench/classify.lua).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1; ROUNDS=$2; shift 2
D=${BENCH_SECONDS:-10}
PORT=18380
BIN=${MOE_BIN:-target/release/moe}
source bench/common.sh
test_titles "$TMP/texts.txt"
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
: > "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for v in "$@"; do
    name=${v%%=*}; root=${v#*=}
    if curl -s -o /dev/null http://127.0.0.1:$PORT/; then echo "port $PORT is busy" >&2; exit 1; fi
    start=$(date +%s.%N)
    "$BIN" serve --models "$root" --state "$TMP/state-$name-$round" --port $PORT > "$TMP/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 4000); do curl -sf -o /dev/null http://127.0.0.1:$PORT/readyz && break; sleep 0.05; done
    ready=$(date +%s.%N)
    kill -0 "$pid" || { echo "server $name did not start: $(tail -n 3 "$TMP/$name.log")" >&2; exit 1; }
    experts=$(curl -s http://127.0.0.1:$PORT/readyz | .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)['experts'])")
    rss_ready=$(rss_mb "$pid")
    bytes=$(curl -s -H 'content-type: application/json' -d '{"text": "how to set an alarm for 7 am"}' \
      "http://127.0.0.1:$PORT/classify${EXPERTS:+?experts=$EXPERTS}" | wc -c)
    c1=$(BATCH=1 BENCH_TEXTS=$TMP/texts.txt wrk -t1 -c1 -d "${D}s" --timeout 10s -s bench/classify.lua \
      http://127.0.0.1:$PORT | tail -n 1)
    c16=$(BATCH=1 BENCH_TEXTS=$TMP/texts.txt wrk -t2 -c16 -d "${D}s" --timeout 10s -s bench/classify.lua \
      http://127.0.0.1:$PORT | tail -n 1)
    rss_loaded=$(rss_mb "$pid")
    .venv/bin/python - "$name" "$round" "$experts" "$start" "$ready" "$rss_ready" "$rss_loaded" "$bytes" \
      "$c1" "$c16" <<'PY' | tee -a "$OUT"
import json, sys
name, rnd, experts, start, ready, rss_ready, rss_loaded, nbytes, c1, c16 = sys.argv[1:]
c1, c16 = json.loads(c1), json.loads(c16)
print(json.dumps({"variant": name, "round": int(rnd), "experts": int(experts),
                  "ready_s": round(float(ready) - float(start), 2), "rss_ready_mb": float(rss_ready),
                  "rss_after_load_mb": float(rss_loaded), "answer_bytes": int(nbytes),
                  "c1_p50_ms": c1["p50_ms"], "c1_requests_per_s": c1["requests_per_s"],
                  "c16_requests_per_s": c16["requests_per_s"], "c16_p99_ms": c16["p99_ms"],
                  "non_2xx": c1["non_2xx"] + c16["non_2xx"], "socket_errors": c1["socket_errors"] + c16["socket_errors"]}))
PY
    kill "$pid" 2>/dev/null || echo "server $name exited early (log: $(tail -n 3 "$TMP/$name.log"))" >&2
    wait "$pid" 2>/dev/null || true
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("median over rounds: experts, ready s, RSS ready / after load MB, answer bytes, c1 p50 ms, c16 req/s, c16 p99 ms")
for v in dict.fromkeys(r["variant"] for r in rows):
    rs = [r for r in rows if r["variant"] == v]
    med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
    print(f"  {v:>8}: {rs[0]['experts']:5d}  {med('ready_s'):6.2f}  {med('rss_ready_mb'):6.1f} / {med('rss_after_load_mb'):6.1f}"
          f"  {med('answer_bytes'):7.0f}  {med('c1_p50_ms'):6.2f}  {med('c16_requests_per_s'):7.1f}  {med('c16_p99_ms'):6.2f}"
          f"  (c16 rounds: {', '.join(str(round(r['c16_requests_per_s'])) for r in rs)})")
PY
