# moe: multi-stage image. CPU by default; for CUDA:
#   docker build --build-arg FEATURES=cuda --build-arg ORT_PACKAGE=onnxruntime-gpu==1.31.1 \
#     --build-arg RUNTIME_BASE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 .
# Same steps as scripts/setup.sh: cargo build --release --locked, ONNX Runtime from the PyPI wheel.
ARG RUNTIME_BASE=debian:bookworm-slim

FROM rust:1.95-bookworm AS build
# protoc and its includes (descriptor.proto, struct.proto): the etcd client compiles etcd's protobuf definitions at build time.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY openapi.yaml ./
ARG FEATURES=""
RUN cargo build --release --locked --features "${FEATURES}"

FROM python:3.11-slim-bookworm AS ort
ARG ORT_PACKAGE=onnxruntime==1.32.0
# The package is pinned through the build argument (name==version).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps --target /wheel "${ORT_PACKAGE}" \
 && mkdir -p /opt/onnxruntime \
 && cp -a /wheel/onnxruntime/capi/. /opt/onnxruntime/ \
 && ln -s "$(basename /opt/onnxruntime/libonnxruntime.so.*)" /opt/onnxruntime/libonnxruntime.so

FROM ${RUNTIME_BASE}
RUN useradd --system --uid 10001 --home /app moe
COPY --from=ort /opt/onnxruntime /opt/onnxruntime
COPY --from=build /src/target/release/moe /usr/local/bin/moe
COPY --chown=moe models /app/models
WORKDIR /app
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so \
    MOE_HOST=0.0.0.0 \
    MOE_PORT=8080 \
    MOE_MODELS=/app/models \
    RUST_LOG=info,ort=warn
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["moe", "serve"]
