#!/usr/bin/env bash
# A/B of service variants on the same machine in one run: each variant is a `moe serve` command line
# (binary + flags); every round runs each variant in turn (one server at a time, the same wrk load,
# test-split titles) at concurrency 1 and 16, so drift on a shared machine hits all alike.
#   bench/ab.sh OUT.jsonl ROUNDS NAME='BIN FLAGS' [NAME='BIN FLAGS' ...]
# e.g. bench/ab.sh docs/bench/ab.jsonl 3 before='/tmp/moe-old' after='target/release/moe'
# Each server gets a copy of models/ (hard links) unless its flags name --models, and a fresh state
# folder; loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1; ROUNDS=$2; shift 2
D=${BENCH_SECONDS:-8}
PORT=18280
source bench/common.sh
test_titles "$TMP/texts.txt"
: > "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for v in "$@"; do
    name=${v%%=*}; cmd=${v#*=}; bin=${cmd%% *}; flags=${cmd#"$bin"}
    # a variant whose flags name --models serves that root (read-only: the state folder is fresh)
    root="$TMP/models-$name-$round"; models=(--models "$root")
    if [[ " $flags " == *" --models "* ]]; then models=(); else cp -al models "$root"; fi
    # a binary from before the state folder keeps its registry in the model root (the copy)
    state=(); "$bin" serve --help | grep -q -- --state && state=(--state "$TMP/state-$name-$round")
    if curl -s -o /dev/null http://127.0.0.1:$PORT/; then echo "port $PORT is busy" >&2; exit 1; fi
    # shellcheck disable=SC2086 # flags: serve flags, word-split on purpose
    "$bin" serve $flags --port $PORT "${models[@]}" "${state[@]}" > "$TMP/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:$PORT/readyz && break; sleep 0.2; done
    kill -0 "$pid" || { echo "server $name did not start: $(tail -n 3 "$TMP/$name.log")" >&2; exit 1; }
    for c in 1 16; do
      line=$(BATCH=1 BENCH_TEXTS=$TMP/texts.txt wrk -t $(( c < 2 ? 1 : 2 )) -c $c -d "${D}s" --timeout 10s \
        -s bench/classify.lua http://127.0.0.1:$PORT | tail -n 1)
      echo "$line" | .venv/bin/python -c "import json,sys; d=json.loads(sys.stdin.read()); \
d.update(variant=sys.argv[1], round=int(sys.argv[2]), concurrency=int(sys.argv[3])); print(json.dumps(d))" \
        "$name" "$round" "$c" | tee -a "$OUT"
    done
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
PY
