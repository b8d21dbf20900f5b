# syntax=docker/dockerfile:1
# One image, both binaries: /usr/local/bin/weir-operator (the operator, crate weir-operator) and
# /usr/local/bin/weir (the workers run `weir worker`; also `weir run` and `weir kafka`; crate
# weir-worker). The entrypoint is `weir`: the worker pods the operator creates pass only
# arguments; the chart's Deployment names /usr/local/bin/weir-operator as its command.
#
#   docker build -t ghcr.io/weir-dev/weir:0.1.0 .        (from the repository root)
#
# operator/tests/chart.rs checks that the binaries and packages named here exist in the
# workspace, that USER is the UID the chart and the worker pods run as, and that the build stage
# installs what scripts/deps installs to build librdkafka.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# librdkafka is built from source by rdkafka-sys (features ssl and zstd): a C toolchain,
# OpenSSL and zlib headers. The same packages as scripts/deps.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p weir-worker --bin weir -p weir-operator --bin weir-operator

# glibc 2.36 as in the build stage (both Debian 12), libssl3 and CA certificates; no shell, no
# package manager. zlib is copied from the build stage: the distroless cc image may lack it and
# librdkafka links it dynamically.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /lib/*-linux-gnu/libz.so.1 /lib/
COPY --from=build /src/target/release/weir /src/target/release/weir-operator /usr/local/bin/
# At most 4 glibc malloc arenas (weir_worker::MALLOC_ARENA_MAX; a worker test checks this line).
# glibc's default is 8 per core of the node, whatever the pod's CPU limit. A worker's Kafka
# clients free memory on threads other than those that allocated it, and each arena keeps what
# was freed in it. A two-stage worker peaked at 192–211 MB with 16 arenas on 2 cores, and at
# 166–185 MB with 4, for about 5% more CPU (docs/running.md, "Memory"). A StreamJob's
# spec.worker.env may set it otherwise.
ENV MALLOC_ARENA_MAX=4
# The distroless nonroot user; numeric so that runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/weir"]
