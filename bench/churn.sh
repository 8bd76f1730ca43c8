#!/usr/bin/env bash
# Which admin action holds memory? One `moe serve` on a copy of models/; for each kind of action
# (head swap, shadow attach + drop, selection job, archive upload + swap back) N rounds back to
# back, a few classify requests after each, and the server's RSS before and after the group.
# Writes one JSON line per group to docs/bench/churn.jsonl (CHURN_OUT). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${CHURN_ROUNDS:-40}
OUT=${CHURN_OUT:-docs/bench/churn.jsonl}
PORT=18450
TOKEN=churn-token
source bench/common.sh
tar czf "$TMP/upload.tar.gz" -C tests/fixtures/models travel--tokenbag
serve_admin $PORT $TOKEN
J=(-H 'content-type: application/json')
rss() { awk '/VmRSS/ {print $2}' /proc/$SPID/status; }
traffic() { for _ in 1 2 3 4 5; do curl -s -o /dev/null "${J[@]}" -d '{"text": "how to pack for a trip"}' $B/classify; done; }
wait_job() { # id
  for _ in $(seq 1 600); do
    curl -s "$B/jobs/$1" | grep -q '"state":"\(succeeded\|failed\)"' && return 0
    sleep 0.1
  done
}
swap_head() {
  curl "${A[@]}" "${J[@]}" -X PUT $B/experts/Travel -d '{"bundle": "travel--global-ft19-logreg"}'; traffic
  curl "${A[@]}" "${J[@]}" -X PUT $B/experts/Travel -d '{"bundle": "travel--kd19-logreg"}'; traffic
}
shadow() {
  curl "${A[@]}" "${J[@]}" -X PUT $B/experts/Health/shadow -d '{"bundle": "health--global-frozen-logreg"}'; traffic
  curl "${A[@]}" -X DELETE $B/experts/Health/shadow; traffic
}
select_job() {
  id=$(curl -s -H "authorization: Bearer $TOKEN" "${J[@]}" -X POST $B/experts/Youth/select \
    -d '{"candidates": ["youth--kd19-logreg", "youth--global-ft19-logreg"]}' | sed 's/.*"id":\([0-9]*\).*/\1/')
  wait_job "$id"; traffic
}
upload() {
  curl "${A[@]}" -X PUT $B/experts/Travel -H 'content-type: application/gzip' --data-binary @"$TMP/upload.tar.gz"; traffic
  curl "${A[@]}" "${J[@]}" -X PUT $B/experts/Travel -d '{"bundle": "travel--kd19-logreg"}'; traffic
}
: > "$OUT"
traffic
for kind in swap_head shadow select_job upload; do
  before=$(rss)
  start=$(date +%s.%N)
  codes=$(for _ in $(seq 1 "$N"); do $kind; done | sort | uniq -c | tr -s ' ' | tr '\n' ';')
  sleep 1
  after=$(rss)
  echo "{\"action\": \"$kind\", \"rounds\": $N, \"rss_mb_before\": $((before / 1024)), \"rss_mb_after\": $((after / 1024)), \"seconds\": $(echo "$(date +%s.%N) - $start" | bc), \"answers\": \"$codes\"}" | tee -a "$OUT"
done
