#!/usr/bin/env bash
# Fuzz the service against its own openapi.yaml with schemathesis (every check: no 5xx, responses
# match the schema, schema-valid requests accepted, schema-violating ones refused), on a copy of the
# small fixture experts, with and without the admin token. Loopback only, bounded: a fixed seed,
# deterministic generation, N examples per operation, a time limit per run.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${ST_EXAMPLES:-100}
PORT=${ST_PORT:-18300}
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
[ -x .venv/bin/st ] || .venv/bin/pip install -q "schemathesis==4.32.5"
cp -r tests/fixtures/models "$TMP/models"
target/release/moe serve --port "$PORT" --models "$TMP/models" --state "$TMP/state" --admin-token st-token \
  > "$TMP/serve.log" 2>&1 &
for _ in $(seq 1 150); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.2; done
run() { # label, extra args
  local label=$1; shift
  echo "schemathesis ($label)"
  timeout 300 .venv/bin/st --config-file tests/schemathesis.toml run openapi.yaml --url "http://127.0.0.1:$PORT" \
    --checks all --max-examples "$N" --generation-deterministic --seed 1 --request-timeout 20 "$@"
}
run "no token"
run "admin token" -H "Authorization: Bearer st-token"
