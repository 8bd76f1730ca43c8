#!/usr/bin/env bash
# What the image costs, recorded in docs/bench/image.jsonl (docs/BENCHMARKS.md, "The image"): a
# cold build (--no-cache; the local bases already made), a rebuild after a one-line change under
# crates/, the image's size with and without its models, and the time from `podman run -d` to
# /readyz answering 200 over N starts (default 5). Builds in a scratch copy of the build context,
# so the checkout is untouched; tags localhost/moe:bench and removes it at the end.
#   bench/image.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(pwd)/scripts/podman-sandbox.conf}
export MOE_IMAGE=localhost/moe:bench
N=${1:-5}
OUT=docs/bench/image.jsonl
TREE=$(mktemp -d /var/tmp/moe-image-bench.XXXXXX)
trap 'rm -rf "$TREE"; podman rmi -f "$MOE_IMAGE" >/dev/null 2>&1 || true' EXIT
bash scripts/image.sh bases
mkdir -p "$TREE/scripts" "$TREE/data"
cp -a Cargo.toml Cargo.lock src crates openapi.yaml models Dockerfile .dockerignore "$TREE/"
cp -a data/wikihow19_titles.csv "$TREE/data/"
cp -a scripts/image.sh scripts/podman-sandbox.conf "$TREE/scripts/"
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
timed() { local s; s=$(date +%s%N); "$@" >"$TREE/build.log" 2>&1; ms_since "$s"; }
cold=$(timed bash "$TREE/scripts/image.sh" --no-cache)
echo "// a one-line change" >>"$TREE/crates/server/src/lib.rs"
rebuild=$(timed bash "$TREE/scripts/image.sh")
size=$(podman image inspect --format '{{.Size}}' "$MOE_IMAGE")
models=$(du -sb models | cut -f1)
ready=()
for i in $(seq 1 "$N"); do
  port=$((18600 + i))
  start=$(date +%s%N)
  podman run -d --name "moe-bench-$i" -p "127.0.0.1:$port:8080" "$MOE_IMAGE" >/dev/null
  until curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; do sleep 0.02; done
  ready+=("$(ms_since "$start")")
  podman rm -f -v -t 0 "moe-bench-$i" >/dev/null
done
python3 - "$cold" "$rebuild" "$size" "$models" "${ready[@]}" <<'PY' | tee -a "$OUT"
import json, statistics, subprocess, sys
cold, rebuild, size, models, *ready = sys.argv[1:]
ready = [int(r) / 1000 for r in ready]
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
print(json.dumps({
    "cold_build_s": round(int(cold) / 1000, 1), "rebuild_one_line_s": round(int(rebuild) / 1000, 1),
    "image_mb": round(int(size) / 1e6, 1), "models_mb": round(int(models) / 1e6, 1),
    "image_without_models_mb": round((int(size) - int(models)) / 1e6, 1),
    "ready_s": [round(r, 2) for r in ready], "ready_median_s": round(statistics.median(ready), 2),
    "cores": 2, "cpu": model,
}))
PY
