# Sourced by the bench scripts (ab.sh, scale.sh, churn.sh, soak.sh, train-load.sh): a temporary
# folder removed at exit together with every background job, the test titles, and (for those that
# drive one `moe serve` with an admin token on a copy of models/) the server itself.
# shellcheck shell=bash
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT

# test_titles OUT: the test-split texts of $MOE_DATA (default: the wikiHow file; column $MOE_TEXT_COL,
# default title), one per line.
test_titles() {
  .venv/bin/python - "${MOE_DATA:-data/wikihow19_titles.csv}" "$1" "${MOE_TEXT_COL:-title}" <<'PY'
import csv, sys
rows = [r[sys.argv[3]] for r in csv.DictReader(open(sys.argv[1])) if r["split"] == "test"]
open(sys.argv[2], "w").write("\n".join(rows) + "\n")
PY
}

# serve_admin PORT TOKEN: `moe serve` on a hard-linked copy of models/ with a fresh state folder and
# the admin token, logging to $TMP/serve.log; sets SPID (its pid), B (its base URL) and A (curl flags
# that send the token and print the status); waits up to 60 s for /readyz.
serve_admin() {
  cp -al models "$TMP/models"
  target/release/moe serve --port "$1" --models "$TMP/models" --state "$TMP/state" --admin-token "$2" \
    > "$TMP/serve.log" 2>&1 &
  SPID=$!
  B=http://127.0.0.1:$1
  A=(-s -o /dev/null -w '%{http_code}\n' -H "authorization: Bearer $2")
  for _ in $(seq 1 300); do curl -sf -o /dev/null "$B/readyz" && break; sleep 0.2; done
}
