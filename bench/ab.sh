#!/usr/bin/env bash
# A/B of service variants on the same machine in one run: each variant is a `moe serve` command line
# (binary + flags); every round runs each variant in turn (one server at a time, the same wrk load,
# test-split titles) at concurrency 1 and 16, so drift on a shared machine hits all alike.
#   bench/ab.sh OUT.jsonl ROUNDS NAME='BIN FLAGS' [NAME='BIN FLAGS' ...]
# e.g. bench/ab.sh docs/bench/ab.jsonl 3 before='/tmp/moe-old' after='target/release/moe'
# Each server gets a copy of models/ (hard links) unless its flags name --models, and a fresh state
# folder; loopback only.
# TEI_DIR=FOLDER adds text-embeddings-inference as one more variant of every round ("tei": FOLDER/run.sh
# PORT starts it, with the .venv's libonnxruntime; wrk posts the same titles to /embed). The folder is
# not part of the project: it is read only when TEI_DIR names it.
# AB_BATCH=N sends N texts a request (default 1); MOE_DATA / MOE_TEXT_COL choose the texts (common.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1; ROUNDS=$2; shift 2
D=${BENCH_SECONDS:-8}
PORT=18280
source bench/common.sh
test_titles "$TMP/texts.txt"
: > "$OUT"
load() { # PORT NAME ROUND: wrk at concurrency 1 and 16, one JSON line each into $OUT
  for c in 1 16; do
    line=$(BATCH=${AB_BATCH:-1} BENCH_TEXTS=$TMP/texts.txt wrk -t $(( c < 2 ? 1 : 2 )) -c $c -d "${D}s" --timeout 10s \
      -s bench/classify.lua "http://127.0.0.1:$1" | tail -n 1)
    echo "$line" | .venv/bin/python -c "import json,sys; d=json.loads(sys.stdin.read()); \
d.update(variant=sys.argv[1], round=int(sys.argv[2]), concurrency=int(sys.argv[3]), texts_per_request=int(sys.argv[4])); \
print(json.dumps(d))" "$2" "$3" "$c" "${AB_BATCH:-1}" | tee -a "$OUT"
  done
}
VARIANTS=("$@")
if [ -n "${TEI_DIR:-}" ]; then
  VARIANTS+=("tei=TEI")
  ORT_LIB=$(realpath .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*)
fi
for round in $(seq 1 "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    name=${v%%=*}; cmd=${v#*=}; bin=${cmd%% *}; flags=${cmd#"$bin"}
    if curl -s -o /dev/null http://127.0.0.1:$PORT/; then echo "port $PORT is busy" >&2; exit 1; fi
    if [ "$cmd" = TEI ]; then
      pid=$(ORT_DYLIB_PATH=$ORT_LIB TMPDIR=$TMP "$TEI_DIR/run.sh" $PORT | tail -n 1)
      PEER=tei load $PORT "$name" "$round"
      kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
      continue
    fi
    # a variant whose flags name --models serves that root (read-only: the state folder is fresh)
    root="$TMP/models-$name-$round"; models=(--models "$root")
    if [[ " $flags " == *" --models "* ]]; then models=(); else cp -al models "$root"; fi
    # a binary from before the state folder keeps its registry in the model root (the copy)
    state=(); "$bin" serve --help | grep -q -- --state && state=(--state "$TMP/state-$name-$round")
    # shellcheck disable=SC2086 # flags: serve flags, word-split on purpose
    "$bin" serve $flags --port $PORT "${models[@]}" "${state[@]}" > "$TMP/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:$PORT/readyz && break; sleep 0.2; done
    kill -0 "$pid" || { echo "server $name did not start: $(tail -n 3 "$TMP/$name.log")" >&2; exit 1; }
    load $PORT "$name" "$round"
    kill "$pid" 2>/dev/null || echo "server $name exited early (log: $(tail -n 3 "$TMP/$name.log"))" >&2; wait "$pid" 2>/dev/null || true
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
variants = list(dict.fromkeys(r["variant"] for r in rows))
for c in (1, 16):
    print(f"concurrency {c}: median over rounds (req/s, p50 ms, p99 ms)")
    for v in variants:
        rs = [r for r in rows if r["variant"] == v and r["concurrency"] == c]
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"  {v:>16}: {med('requests_per_s'):8.1f} req/s  p50 {med('p50_ms'):6.2f}  p99 {med('p99_ms'):6.2f}"
              f"  (rounds: {', '.join(str(round(r['requests_per_s'])) for r in rs)})")
if "tei" in variants:  # issue 28's ratios, each round against TEI's in the same round
    def fig(v, c, k, rnd):
        return next(r[k] for r in rows if r["variant"] == v and r["concurrency"] == c and r["round"] == rnd)
    rounds = sorted({r["round"] for r in rows})
    print("against TEI, median over rounds: p50 at 1 (target <= 0.9), req/s at 16 (>= 1.3), p99 at 16 (<= 1)")
    for v in variants:
        if v != "tei":
            ratio = lambda c, k: statistics.median(fig(v, c, k, n) / fig("tei", c, k, n) for n in rounds)  # noqa: E731
            print(f"  {v:>16}: {ratio(1, 'p50_ms'):5.2f}  {ratio(16, 'requests_per_s'):5.2f}  {ratio(16, 'p99_ms'):5.2f}")
PY
