#!/usr/bin/env bash
# Where the service's CPU goes at concurrency 16 (single-title and 16-title requests): perf samples of
# the `moe serve` process by shared object, written to docs/bench/profile.txt (bench/report.py quotes it).
# Needs `perf` and a built target/release/moe; about 40 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=18201 OUT=docs/bench/profile.txt
command -v perf >/dev/null || { echo "perf not installed" >&2; exit 1; }
target/release/moe serve --state "$(mktemp -d)" --port $PORT --models models > /dev/null 2>&1 & P=$!
trap 'kill $P 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.2; done
[ -s docs/bench/texts.txt ] || { echo "run bench/run.sh first (docs/bench/texts.txt)" >&2; exit 1; }
: > "$OUT"
for batch in 1 16; do
  BATCH=$batch BENCH_TEXTS=docs/bench/texts.txt wrk -t2 -c16 -d12s -s bench/classify.lua "http://127.0.0.1:$PORT" > /tmp/moe-profile-wrk.txt &
  W=$!
  sleep 3
  perf record -F 999 -g -p $P -o /tmp/moe-perf.data -- sleep 6 > /dev/null 2>&1
  wait $W
  {
    echo "# perf record -F 999 -p <moe serve> for 6 s during wrk -c16, $batch title(s) per request, $(date -u +%FT%TZ)"
    echo "# load: $(tail -n 1 /tmp/moe-profile-wrk.txt)"
    echo "# share of the service's CPU samples by shared object:"
    perf report -i /tmp/moe-perf.data --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -6
  } >> "$OUT"
done
cat "$OUT"
