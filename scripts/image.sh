#!/usr/bin/env bash
# Builds the service's image from the repository's Dockerfile with podman and tags it
# localhost/moe:dev (docs/OPERATIONS.md, "Containers").
#   scripts/image.sh [FLAGS]      build (installs podman, runc and debootstrap where missing);
#                                 FLAGS go to podman build (e.g. --no-cache)
#   scripts/image.sh bases        only the local stand-ins for the Dockerfile's bases (and etcd's)
# No image registry is reachable here, so the Dockerfile's three bases are made locally (a
# debootstrap --variant=minbase bookworm root, slimmed as debian:bookworm-slim is) and passed as
# build arguments: localhost/moe-base/debian:bookworm-slim, .../rust:1.95-bookworm (that root, gcc
# and this machine's Rust toolchain), .../python:3.11-slim-bookworm (that root and Debian's
# python3-pip). They are made once and kept; MOE_IMAGE_BASES=rebuild makes them again.
# Environment: MOE_IMAGE (localhost/moe:dev), CONTAINERS_CONF (default: scripts/podman-sandbox.conf,
# the runc runtime and lowered rlimits this sandbox needs). Prints the build time and image size.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${MOE_IMAGE:-localhost/moe:dev}
BASE=localhost/moe-base
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(pwd)/scripts/podman-sandbox.conf}
# The sandbox may not raise rlimits (podman build does not read them from containers.conf).
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
say() { echo "image: $*" >&2; }

install_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  [ -x /usr/sbin/runc ] || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

have() { podman image exists "$1" && [ "${MOE_IMAGE_BASES:-}" != rebuild ]; }

# debian:bookworm-slim's own trimming: no documentation, manuals or translations, no apt lists.
slim_root() { # ROOT
  cat >"$1/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$1/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$1"/usr/share/{man,info}/* "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin
  find "$1/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  # The host's apt settings (its mirror is a dated snapshot: no validity checks).
  cp /etc/apt/apt.conf.d/99* "$1/etc/apt/apt.conf.d/" 2>/dev/null || true
}

make_debian() {
  have "$BASE/debian:bookworm-slim" && return 0
  local root mirror
  root=$(mktemp -d /var/tmp/moe-base.XXXXXX)
  mirror=$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
  say "debootstrap --variant=minbase bookworm from ${mirror:=http://deb.debian.org/debian}"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; rm -rf "$root"; exit 1; }
  slim_root "$root"
  tar -C "$root" -c . | podman import -q - "$BASE/debian:bookworm-slim" >/dev/null
  rm -rf "$root" "$root.log"
}

# A build stage's base reaches crates.io and PyPI through this workplace's TLS proxy: the host's CA
# bundle is copied in (only into the build stand-ins, never into the runtime base).
stand_in() { # TAG, then the Containerfile on stdin; the host's CA bundle and toolchain are mounted
  have "$1" && return 0
  local toolchain context
  toolchain=$(rustc --print sysroot)
  context=$(mktemp -d)
  say "making $1"
  podman build -q "${LIMITS[@]}" --network host --pull=never -t "$1" \
    -v "$toolchain:/toolchain:ro" -v /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro -f - "$context" >/dev/null
  rmdir "$context"
}

make_bases() {
  make_debian
  stand_in "$BASE/rust:1.95-bookworm" <<EOF
FROM $BASE/debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* && cp /host-ca.crt /etc/ssl/certs/ca-certificates.crt \
 && mkdir -p /usr/local/rust /usr/local/cargo \
 && cp -a /toolchain/bin /toolchain/lib /toolchain/libexec /toolchain/etc /usr/local/rust/
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EOF
  stand_in "$BASE/python:3.11-slim-bookworm" <<EOF
FROM $BASE/debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED \
 && cp /host-ca.crt /etc/ssl/certs/ca-certificates.crt && ln -s python3 /usr/bin/python
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
EOF
  # The fleet check's etcd (tests/container): Debian's etcd-server, one member, on the network.
  stand_in "$BASE/etcd:bookworm" <<EOF
FROM $BASE/debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends etcd-server \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["etcd", "--data-dir", "/tmp/etcd", "--listen-client-urls", "http://0.0.0.0:2379", \
  "--advertise-client-urls", "http://127.0.0.1:2379"]
EOF
  local version
  version=$(podman run --rm "${LIMITS[@]}" "$BASE/rust:1.95-bookworm" rustc --version)
  [[ "$version" == "rustc 1.95."* ]] || { say "the Rust stand-in has $version, not 1.95"; exit 1; }
}

build() {
  local start size
  start=$(date +%s)
  say "podman build -t $IMAGE (bases: $BASE/*)"
  # --format docker: the OCI image format has no HEALTHCHECK, and podman would drop it silently.
  podman build "${LIMITS[@]}" --format docker --network host --pull=never -t "$IMAGE" \
    --build-arg RUST_IMAGE="$BASE/rust:1.95-bookworm" \
    --build-arg PYTHON_IMAGE="$BASE/python:3.11-slim-bookworm" \
    --build-arg RUNTIME_BASE="$BASE/debian:bookworm-slim" "$@" .
  size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
  say "built $IMAGE in $(($(date +%s) - start)) s: $((size / 1000000)) MB"
}

install_tools
make_bases
[ "${1:-}" = bases ] || build "$@"
