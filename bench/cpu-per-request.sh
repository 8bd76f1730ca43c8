#!/usr/bin/env bash
# CPU time per request at concurrency 16, the service's and wrk's (they share the machine's cores):
# /proc/PID/stat of `moe serve` and /usr/bin/time of wrk around three 10 s windows, one test title
# per request, written to docs/bench/cpu-per-request.txt (bench/report.py quotes it). Needs
# target/release/moe, wrk and /usr/bin/time (Debian: time); about 45 s. The server takes its
# settings from the environment (e.g. MOE_HTTP_THREADS=2); CPU_OUT=FILE writes elsewhere.
# (bench/run.sh records the server's CPU share of each of its loads too, `server_cpu_percent`.)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=18203 OUT=${CPU_OUT:-docs/bench/cpu-per-request.txt}
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian: apt-get install time)" >&2; exit 1; }
source bench/common.sh
test_titles "$TMP/texts.txt"
target/release/moe serve --state "$TMP/state" --port $PORT --models models > "$TMP/serve.log" 2>&1 &
P=$!
for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.2; done
load() {
  BATCH=1 BENCH_TEXTS=$TMP/texts.txt /usr/bin/time -f "%U %S" -o "$TMP/wrk.time" \
    wrk -t2 -c16 -d"$1" -s bench/classify.lua "http://127.0.0.1:$PORT" | tail -n 1 > "$TMP/wrk.json"
}
load 3s  # warm-up
echo "# $(date -u +%FT%TZ): $(nproc) cores, concurrency 16, one test title per request, MOE_HTTP_THREADS=${MOE_HTTP_THREADS:-default}" > "$OUT"
for _ in 1 2 3; do
  a=$(awk '{print $14 + $15}' "/proc/$P/stat"); t0=$(date +%s.%N)
  load 10s
  b=$(awk '{print $14 + $15}' "/proc/$P/stat"); t1=$(date +%s.%N)
  .venv/bin/python - "$a" "$b" "$(getconf CLK_TCK)" "$t0" "$t1" "$TMP" <<'PY' | tee -a "$OUT"
import json, sys
a, b, tck, t0, t1, w = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
load = json.load(open(f"{w}/wrk.json"))
user, system = map(float, open(f"{w}/wrk.time").read().split())
n, served = load["requests"], (b - a) / tck
print(f"requests/s {load['requests_per_s']:.0f}: service {served / n * 1e6:.0f} us CPU a request, wrk {(user + system) / n * 1e6:.0f} us; "
      f"{(served + user + system) / (t1 - t0):.2f} cores busy")
PY
done
