#!/usr/bin/env bash
# The README's first command on a bare Debian root, as a new user meets it: debootstrap
# --variant=minbase bookworm, then only python3, python3-venv, git, ca-certificates, curl and a C
# toolchain (gcc, libc6-dev); the host's Rust toolchain mounted read-only. The repository is
# cloned there at COMMIT (default HEAD), `scripts/serve.sh` runs, and one POST /classify must
# answer with a label. Anything else fails loudly (exit 1, with the log's tail).
#   scripts/fresh-check.sh [COMMIT]     FRESH_TRAIN=1 also runs `scripts/setup.sh --train` there
# Needs root (debootstrap, chroot, mounts); about 51 s for the root, then a cold release build.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
REF=$(git rev-parse "${1:-HEAD}")
PORT=${FRESH_PORT:-18480}
WORK=$(mktemp -d /var/tmp/moe-fresh.XXXXXX)
ROOT=$WORK/root
LOG=$WORK/serve.log
say() { echo "fresh-check: $*" >&2; }
MOUNTED=()
cleanup() {
  set +e
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  # Whatever the chroot still runs (the service, a build) holds the mounts: end it first.
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && kill -9 "${p#/proc/}" 2>/dev/null
  done
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[$i]}"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
bind() { # SRC DST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  MOUNTED+=("$2")
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$2"
  return 0
}
CA=/etc/ssl/certs/ca-certificates.crt
in_root() { chroot "$ROOT" /usr/bin/env HOME=/root PATH=/root/.cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo SSL_CERT_FILE="${SSL_CERT_FILE:-$CA}" \
  PIP_CERT="${PIP_CERT:-$CA}" REQUESTS_CA_BUNDLE="${REQUESTS_CA_BUNDLE:-$CA}" "$@"; }

command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
MIRROR=$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
MIRROR=${MIRROR:-http://deb.debian.org/debian}
start=$(date +%s)
say "debootstrap --variant=minbase bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
  { tail -20 "$WORK/debootstrap.log"; say "FAILED: debootstrap"; exit 1; }
# The host's apt settings (e.g. a snapshot mirror's validity checks) and name resolution.
cp /etc/apt/apt.conf.d/99* "$ROOT/etc/apt/apt.conf.d/" 2>/dev/null || true
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
mount -t proc proc "$ROOT/proc"
MOUNTED+=("$ROOT/proc")
bind /dev "$ROOT/dev"
in_root sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  python3 python3-venv git ca-certificates curl gcc libc6-dev' >"$WORK/apt.log" 2>&1 ||
  { tail -20 "$WORK/apt.log"; say "FAILED: the base packages"; exit 1; }
say "bare root ready in $(($(date +%s) - start)) s"
# The registries are reached through this workplace's TLS proxy: the host's CA bundle, read-only.
bind /etc/ssl/certs "$ROOT/etc/ssl/certs" ro
# Rust: the host's toolchains read-only, the proxies copied; CARGO_HOME stays writable inside.
bind "${RUSTUP_HOME:-$HOME/.rustup}" "$ROOT/root/.rustup" ro
mkdir -p "$ROOT/root/.cargo/bin"
for b in cargo rustc rustup; do cp "${CARGO_HOME:-$HOME/.cargo}/bin/$b" "$ROOT/root/.cargo/bin/"; done
bind "$REPO" "$ROOT/src" ro
in_root git config --global --add safe.directory '*'
in_root git clone -q --no-hardlinks /src /repo
in_root git -C /repo checkout -q "$REF"
say "cloned $REF; scripts/serve.sh --port $PORT (installs, builds, serves)"
in_root sh -c "cd /repo && exec scripts/serve.sh --port $PORT --state /tmp/moe-state" >"$LOG" 2>&1 &
SERVER=$!
ready=
for _ in $(seq 1 1800); do
  if ! kill -0 "$SERVER" 2>/dev/null; then break; fi
  if curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz"; then ready=1; break; fi
  sleep 1
done
if [ -z "$ready" ]; then
  tail -40 "$LOG" >&2
  say "FAILED: scripts/serve.sh did not serve on a fresh root (log above)"
  exit 1
fi
say "serving after $(($(date +%s) - start)) s"
answer=$(curl -sf "http://127.0.0.1:$PORT/classify" -H 'content-type: application/json' \
  -d '{"text": "How to cook pasta like a chef"}') || { say "FAILED: POST /classify"; exit 1; }
echo "$answer" | grep -q '"label"' || { echo "$answer" >&2; say "FAILED: no label in the answer"; exit 1; }
say "POST /classify answered: $(echo "$answer" | grep -o '"label":"[^"]*"' | head -1)"
if [ "${FRESH_TRAIN:-}" = 1 ]; then
  kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; SERVER=
  in_root sh -c 'cd /repo && scripts/setup.sh --train' >"$WORK/train.log" 2>&1 ||
    { tail -40 "$WORK/train.log" >&2; say "FAILED: scripts/setup.sh --train"; exit 1; }
  say "scripts/setup.sh --train passed"
fi
say "passed in $(($(date +%s) - start)) s"
