#!/usr/bin/env bash
# Quick start: install what is missing, build, and serve the default experts in models/.
# Flags are passed to `moe serve` (e.g. --port 9000); every flag also has an env variable.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec target/release/moe serve "$@"
