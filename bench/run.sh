#!/usr/bin/env bash
# Benchmark harness: the in-process limit, the service at several concurrencies (single-text and
# batch requests, batching on and off), and the Python peers, on the same machine in one run, with
# test-split titles as input. Loopback only; every run is bounded in time.
#   bench/run.sh            full run (about 10 minutes), writes docs/bench/results.json and docs/BENCHMARKS.md
#   bench/run.sh --smoke    1-second runs into a temp folder (CI: it must run, not meet a number)
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
D=${BENCH_SECONDS:-8}; [ $SMOKE = 1 ] && D=1; export D
OUT=docs/bench; [ $SMOKE = 1 ] && OUT=$(mktemp -d)
mkdir -p "$OUT"
RES="$OUT/results.jsonl"; : > "$RES"
DATA=${MOE_DATA:-data/wikihow19_titles.csv}
MOE=target/release/moe
command -v wrk >/dev/null || { apt-get install -y -q wrk >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null); }
.venv/bin/pip install -q -r bench/requirements.txt
TEXTS="$OUT/texts.txt"
.venv/bin/python - "$DATA" "$TEXTS" <<'PY'
import csv, sys
rows = [r["title"] for r in csv.DictReader(open(sys.argv[1])) if r["split"] == "test"]
open(sys.argv[2], "w").write("\n".join(rows) + "\n")
PY
# Every server gets a fresh state folder, so it serves exactly the registry of the root it is given
# (exec: the background job is the server itself, so $! is its PID).
STATES=$(mktemp -d)
moe_serve() { exec $MOE serve --state "$(mktemp -d -p "$STATES")" "$@"; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$STATES"; }
trap cleanup EXIT
record() { # name, json line on stdin
  .venv/bin/python -c "import json,sys; d=json.loads(sys.stdin.read()); d['name']=sys.argv[1]; print(json.dumps(d))" "$1" >> "$RES"
}
wait_http() { for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done; echo "no answer from $1" >&2; return 1; }
cpu_ticks() { # user+system ticks of a process and its children (uvicorn's workers)
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do t=$(( t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done
  echo "$t"
}
load() { # name url conc batch pid
  local t0 c0 out
  t0=$(date +%s.%N); c0=$(cpu_ticks "$5")
  out=$(EXPERTS=${EXPERTS:-} BATCH=$4 BENCH_TEXTS=$TEXTS wrk -t $(( $3 < 2 ? 1 : 2 )) -c "$3" -d "${D}s" --timeout 10s -s bench/classify.lua "$2" | tail -n 1)
  local cpu; cpu=$(awk -v a="$c0" -v b="$(cpu_ticks "$5")" -v t0="$t0" -v t1="$(date +%s.%N)" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.1f", 100 * (b - a) / hz / (t1 - t0)}')
  echo "$out" | .venv/bin/python -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(concurrency=$3, server_cpu_percent=$cpu); print(json.dumps(d))" | record "$1"
  echo "$1 c=$3 batch=$4: $out"
}

PORT=18180
serve_load() { # name root concurrencies... (EXTRA: more serve flags); records service-<name>
  local name=$1 root=$2; shift 2
  # shellcheck disable=SC2086 # EXTRA: more serve flags, word-split on purpose
  moe_serve --port $PORT --models "$root" ${EXTRA:-} > "$OUT/serve-$name.log" 2>&1 & PIDS+=($!); SPID=$!
  wait_http http://127.0.0.1:$PORT/readyz
  for c in "$@"; do load "service-$name" http://127.0.0.1:$PORT "$c" 1 $SPID; done
  kill $SPID; wait $SPID 2>/dev/null || true
}
inproc() { # record-name root batches [in-flight calls, default 4]: `moe bench`, no HTTP
  $MOE bench --models "$2" --seconds "$D" --batch "$3" --concurrency "${4:-4}" --data "$DATA" 2>/dev/null | while read -r l; do echo "$l" | record "$1"; done
}

# 1. The limit: the expert set through the service's executors, no HTTP.
# concurrency 1: the latency of one request; concurrency 4 (>= sessions per graph): the throughput limit.
inproc inproc-latency models 1 1
inproc inproc models 1,8,32,64
root1=$(mktemp -d); cp -r models/. "$root1/"
.venv/bin/python - "$root1/registry.json" <<'PY'
import json, sys
p = sys.argv[1]; r = json.load(open(p)); k = sorted(r["experts"])[0]
r["experts"] = {k: r["experts"][k]}; r["gate"] = {"kind": "uniform"}; r.pop("history", None)
json.dump(r, open(p, "w"))
PY
inproc inproc-one-head "$root1" 1,8,32,64

# Full-model experts against shared-trunk heads: the best-per-class set over every algorithm
# (build/models-all from scripts/rebuild-models.sh: two trunks plus per-class fine-tuned MiniLMs).
if [ -f build/models-all/registry.json ]; then
  inproc inproc-models-all build/models-all 1,8
fi

# 2. The service.
moe_serve --port $PORT --models models > "$OUT/serve.log" 2>&1 & PIDS+=($!); SPID=$!
wait_http http://127.0.0.1:$PORT/readyz
for c in 1 4 16 64; do load service http://127.0.0.1:$PORT "$c" 1 $SPID; done
load service-batch16 http://127.0.0.1:$PORT 16 16 $SPID
# The lighter responses (?experts=passed|none): the same decisions without the 19-row table.
for v in passed none; do for c in 1 16; do EXPERTS=$v load "service-experts-$v" http://127.0.0.1:$PORT "$c" 1 $SPID; done; done
.venv/bin/python -c "import json, re, sys; t = open(sys.argv[1]).read(); print(json.dumps({k: int(re.search(k + r':\s+(\d+)', t).group(1)) for k in ('VmHWM', 'VmRSS')}))" "/proc/$SPID/status" | record service-memory-kb
kill $SPID; wait $SPID 2>/dev/null || true
EXTRA="--max-batch 1" serve_load no-batching models 16
EXTRA="--sessions 1 --intra-threads $(nproc)" serve_load 1-session models 1 16

# 3. Other expert sets through the same service and in-process: the global classifier (19 column
# heads of one 19-way model; on the MoE's own trunk, and the fine-tuned 19-way MiniLM), the fp32 vs
# int8 frozen trunk (trunk-logreg heads; build/fp32 from `moe_training build --trunk-precision fp32`),
# and the full-model best-per-class set. Sets whose bundles are absent are skipped.
ROOTS=$(mktemp -d)
mkroot() { .venv/bin/python bench/make_root.py "$1" "$ROOTS/$3" "$2" > /dev/null 2>&1; }
# Heads on executor threads instead of inline on the request's thread (--inline-heads false).
EXTRA="--inline-heads false" serve_load threaded-heads models 16
MOE_INLINE_HEADS=false inproc inproc-threaded-heads models 1,32
if mkroot models global-ft19-logreg global-ft19; then
  inproc inproc-global-ft19 "$ROOTS/global-ft19" 1,8,32,64; serve_load global-ft19 "$ROOTS/global-ft19" 1 16
fi
if mkroot models global-finetune global-finetune; then
  inproc inproc-global-finetune "$ROOTS/global-finetune" 1,32; serve_load global-finetune "$ROOTS/global-finetune" 16
fi
if mkroot build/candidates trunk-logreg int8-frozen && mkroot build/fp32 trunk-logreg fp32-frozen; then
  for p in int8-frozen fp32-frozen; do inproc "inproc-$p" "$ROOTS/$p" 1,8,32,64; serve_load "$p" "$ROOTS/$p" 16; done
fi
if [ -f build/models-all/registry.json ]; then serve_load models-all build/models-all 1 16; fi
# The accurate set (MPNet-base, scripts/rebuild-accurate.sh) and the 19-way MPNet it is compared with.
if [ -f build/accurate-set/registry.json ]; then
  serve_load accurate build/accurate-set 1 16
  inproc inproc-accurate build/accurate-set 1,8
  if [ -f build/accurate-fp32-set/registry.json ]; then serve_load accurate-fp32 build/accurate-fp32-set 1 16; fi
  if mkroot build/accurate-set global-finetune accurate-global-finetune; then
    serve_load accurate-global-finetune "$ROOTS/accurate-global-finetune" 1 16
  fi
fi
rm -rf "$ROOTS" "$root1"

# 4. The Python peers, same experts, same inputs.
MOE_MODELS=models .venv/bin/uvicorn --log-level warning --workers "$(nproc)" --port 18190 bench.peers.ort_fastapi:app > "$OUT/peer-b.log" 2>&1 & PIDS+=($!); BPID=$!
wait_http http://127.0.0.1:18190/docs
for c in 1 16; do load peer-b-onnxruntime-fastapi http://127.0.0.1:18190 "$c" 1 $BPID; done
kill $BPID; wait $BPID 2>/dev/null || true
MOE_MODELS=models .venv/bin/uvicorn --log-level warning --port 18191 bench.peers.torch_fastapi:app > "$OUT/peer-a.log" 2>&1 & PIDS+=($!); APID=$!
wait_http http://127.0.0.1:18191/docs
for c in 1 16; do load peer-a-torch-notebook http://127.0.0.1:18191 "$c" 1 $APID; done
kill $APID; wait $APID 2>/dev/null || true

# 5. The ratios the targets name, measured interleaved (service, peer b, in-process limit, service
# with batch requests; three rounds) so that drift on a shared machine hits both sides alike.
moe_serve --port $PORT --models models > "$OUT/serve-paired.log" 2>&1 & PIDS+=($!); SPID=$!
MOE_MODELS=models .venv/bin/uvicorn --log-level warning --workers "$(nproc)" --port 18190 bench.peers.ort_fastapi:app > "$OUT/peer-b-paired.log" 2>&1 & PIDS+=($!); BPID=$!
wait_http http://127.0.0.1:$PORT/readyz; wait_http http://127.0.0.1:18190/docs
for round in 1 2 3; do
  load paired-service http://127.0.0.1:$PORT 16 1 $SPID
  load paired-peer-b http://127.0.0.1:18190 16 1 $BPID
  load paired-service-batch16 http://127.0.0.1:$PORT 16 16 $SPID
  inproc paired-inproc models 32
  echo "paired round $round done"
done
kill $SPID $BPID; wait $SPID $BPID 2>/dev/null || true

.venv/bin/python - <<'PY' | record graph-bytes
import json
from pathlib import Path
m = Path("models"); trunks = set(); total = 0
for b in json.loads((m / "registry.json").read_text())["experts"].values():
    card = json.loads((m / b / "card.json").read_text())
    total += (m / b / card["graph"]["file"]).stat().st_size
    if card.get("trunk"): trunks.add(card["trunk"]["id"])
print(json.dumps({"bytes": total + sum((m / "trunks" / t / "trunk.onnx").stat().st_size for t in trunks)}))
PY
.venv/bin/python - <<'PY' | record machine
import json, os, platform, subprocess
import onnxruntime
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
print(json.dumps({"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "onnxruntime": onnxruntime.__version__,
                  "git": rev, "wrk": (wrk.stdout + wrk.stderr).split("\n")[0], "seconds_per_run": int(os.environ.get("D", "0") or 0)}))
PY
if [ $SMOKE = 0 ]; then
  if command -v perf >/dev/null; then bash bench/profile.sh > /dev/null || echo "profile skipped" >&2; fi
  bash bench/cpu-per-request.sh > /dev/null || echo "CPU per request skipped" >&2
  .venv/bin/python bench/report.py "$RES" > docs/BENCHMARKS.md
  echo "wrote docs/BENCHMARKS.md"
else
  echo "bench smoke: $(wc -l < "$RES") results in $RES"
fi
