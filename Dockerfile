# moe: multi-stage image. CPU by default; for CUDA:
#   docker build --build-arg FEATURES=cuda --build-arg ORT_PACKAGE=onnxruntime-gpu==1.31.1 \
#     --build-arg RUNTIME_BASE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 .
# Same steps as scripts/setup.sh: cargo build --release --locked, ONNX Runtime from the PyPI wheel.
# scripts/image.sh builds it with podman on locally made stand-ins for the three bases (CI does).
# Runs as uid 10001; writes only under /app/models (uploads, training) and /var/lib/moe (state).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# protoc and its includes (descriptor.proto, struct.proto): the etcd client compiles etcd's protobuf definitions at build time.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ARG FEATURES=""
# The dependencies in a layer of their own: the manifests with empty crates, built once; a change
# under src/ or crates/ rebuilds only the workspace's four crates (docs/OPERATIONS.md, "Containers").
COPY Cargo.toml Cargo.lock ./
COPY crates/core/Cargo.toml crates/core/
COPY crates/server/Cargo.toml crates/server/
COPY crates/tools/Cargo.toml crates/tools/
RUN mkdir -p src crates/core/src crates/server/src crates/tools/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch crates/core/src/lib.rs crates/server/src/lib.rs crates/tools/src/lib.rs \
 && cargo build --release --locked --features "${FEATURES}" \
 && rm -rf src crates/*/src
COPY openapi.yaml ./
COPY src ./src
COPY crates ./crates
# COPY keeps the files' own times, which may be older than the empty crates' build: touch them.
# Debug line tables out (67 -> 16 MB); the symbols stay, so a backtrace still names functions.
# target/ goes in the same step: each rebuild's layer then holds the binary alone, not 1 GB.
RUN find src crates -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --features "${FEATURES}" \
 && strip --strip-debug -o /usr/local/bin/moe target/release/moe \
 && rm -rf target

FROM ${PYTHON_IMAGE} AS ort
ARG ORT_PACKAGE=onnxruntime==1.32.0
# Only the shared libraries: the wheel's Python binding (37 MB) is not needed.
# The package is pinned through the build argument (name==version).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps --target /wheel "${ORT_PACKAGE}" \
 && mkdir -p /opt/onnxruntime \
 && cp -a /wheel/onnxruntime/capi/libonnxruntime*.so* /opt/onnxruntime/ \
 && ln -s "$(basename /opt/onnxruntime/libonnxruntime.so.*)" /opt/onnxruntime/libonnxruntime.so

FROM ${RUNTIME_BASE}
# The folders the service writes are made here, owned by its user, so that no builder's way of
# creating a parent decides whether the service can start (state under a named volume keeps them).
RUN groupadd --system --gid 10001 moe \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home moe \
 && install -d -o 10001 -g 10001 /app /app/models /app/data /var/lib/moe
COPY --from=ort /opt/onnxruntime /opt/onnxruntime
COPY --from=build /usr/local/bin/moe /usr/local/bin/moe
COPY --chown=10001:10001 data/wikihow19_titles.csv /app/data/
COPY --chown=10001:10001 models /app/models
WORKDIR /app
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so \
    MOE_HOST=0.0.0.0 \
    MOE_PORT=8080 \
    MOE_MODELS=/app/models \
    MOE_STATE=/var/lib/moe \
    MOE_DATA=/app/data/wikihow19_titles.csv \
    RUST_LOG=info,ort=warn
VOLUME ["/var/lib/moe"]
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${MOE_PORT:-8080} && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["moe", "serve"]
