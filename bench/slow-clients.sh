#!/usr/bin/env bash
# Slow clients from many addresses against `moe serve` on the shipped set (loopback only, each run
# bounded): half-sent heads and trickling bodies, 200 connections from 8 addresses against
# --max-connections 64, and 2,000 from 16 addresses at the defaults (1,024 connections, 128 per
# address), while a real client on another address sends one request per fresh connection.
# Writes docs/bench/slow-clients.jsonl (bench/slow_clients.py prints one line per run).
#   bench/slow-clients.sh [SECONDS]   (default 12 per run)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
S=${1:-12}
OUT=docs/bench/slow-clients.jsonl
: > "$OUT"
run() { # label max-connections clients addresses
  for mode in heads bodies; do
    target/release/moe serve --port 18190 --models models --state "$TMP/state-$1-$mode" \
      --max-connections "$2" > "$TMP/serve.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 300); do curl -sf -o /dev/null http://127.0.0.1:18190/readyz && break; sleep 0.2; done
    .venv/bin/python bench/slow_clients.py --port 18190 --mode "$mode" --clients "$3" --addresses "$4" \
      --seconds "$S" --warmup 3 |
      .venv/bin/python -c "import json,sys; d=json.load(sys.stdin); d.update(setting='$1', max_connections=$2); print(json.dumps(d))" |
      tee -a "$OUT"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
}
run max-connections-64 64 200 8
run defaults 1024 2000 16
