#!/usr/bin/env bash
# Soak run (not in CI): mixed traffic for SOAK_SECONDS (default 1800) against `moe serve` on a copy of
# models/, while an admin loop swaps Travel back and forth (every 2 s), attaches and drops a shadow
# (every 10 s), starts a selection job (every 30 s) and uploads a bundle archive (every 60 s).
# Classify load: wrk, concurrency 8, in consecutive 30-second windows; after each window one JSON
# line (requests/s, non-2xx, p50/p99, the server's RSS, admin actions and their statuses) goes to
# docs/bench/soak.jsonl. Loopback only; everything stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL=${SOAK_SECONDS:-1800}
WINDOW=${SOAK_WINDOW:-30}
OUT=${SOAK_OUT:-docs/bench/soak.jsonl}
PORT=18400
TOKEN=soak-token
source bench/common.sh
tar czf "$TMP/upload.tar.gz" -C tests/fixtures/models travel--tokenbag
.venv/bin/python - "${MOE_DATA:-data/wikihow19_titles.csv}" "$TMP/texts.txt" <<'PY'
import csv, sys
rows = [r["title"] for r in csv.DictReader(open(sys.argv[1])) if r["split"] == "test"]
open(sys.argv[2], "w").write("\n".join(rows) + "\n")
PY
serve_admin $PORT $TOKEN
admin() { # every action's status code, one per line, into $TMP/admin.log
  local t=0
  while :; do
    if (( t % 2 == 0 )); then
      b=travel--kd19-logreg; (( (t / 2) % 2 == 0 )) && b=travel--global-ft19-logreg
      curl "${A[@]}" -X PUT $B/experts/Travel -H 'content-type: application/json' -d "{\"bundle\": \"$b\"}" | sed 's/^/swap /'
    fi
    if (( t % 20 == 5 )); then
      curl "${A[@]}" -X PUT $B/experts/Health/shadow -H 'content-type: application/json' \
        -d '{"bundle": "health--global-frozen-logreg"}' | sed 's/^/shadow /'
    fi
    if (( t % 20 == 15 )); then curl "${A[@]}" -X DELETE $B/experts/Health/shadow | sed 's/^/unshadow /'; fi
    if (( t % 30 == 7 )); then
      curl "${A[@]}" -X POST $B/experts/Youth/select -H 'content-type: application/json' \
        -d '{"candidates": ["youth--kd19-logreg", "youth--global-ft19-logreg"]}' | sed 's/^/select /'
    fi
    if (( t % 60 == 11 )); then
      curl "${A[@]}" -X PUT $B/experts/Travel -H 'content-type: application/gzip' --data-binary @"$TMP/upload.tar.gz" \
        | sed 's/^/upload /'
    fi
    sleep 1; t=$((t + 1))
  done >> "$TMP/admin.log"
}
admin & APID=$!
: > "$OUT"
start=$(date +%s)
while (( $(date +%s) - start < SECONDS_TOTAL )); do
  : > "$TMP/admin.log.window"; cp "$TMP/admin.log" "$TMP/admin.before" 2>/dev/null || : > "$TMP/admin.before"
  line=$(BATCH=1 BENCH_TEXTS=$TMP/texts.txt wrk -t 2 -c 8 -d "${WINDOW}s" --timeout 10s -s bench/classify.lua $B | tail -n 1)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$SPID/status)
  .venv/bin/python - "$line" "$rss" "$(( $(date +%s) - start ))" "$TMP/admin.before" "$TMP/admin.log" >> "$OUT" <<'PY'
import collections, json, sys
d = json.loads(sys.argv[1])
before = open(sys.argv[4]).read().splitlines()
now = open(sys.argv[5]).read().splitlines()
window = collections.Counter(now[len(before):])
d.update(elapsed_s=int(sys.argv[3]), rss_mb=round(int(sys.argv[2]) / 1024, 1), admin=dict(window))
print(json.dumps(d))
PY
  tail -n 1 "$OUT"
done
kill $APID 2>/dev/null || true
kill -0 $SPID && echo "server alive after ${SECONDS_TOTAL}s"
