# The gm image: one binary, run as a non-root numeric user (65532:65532), no shell needed, a
# read-only root filesystem (gm writes only to its data directory, /var/lib/gm). The same image
# runs a GM node (`gm server`, the default command) and the sidecar.
#
#   docker build -t gm .                    # compiles gm from source on public base images
#   cargo build --release && docker build --target prebuilt -t gm .    # packages a gm built outside Docker
#
# Both targets share every instruction of `runtime-base`: only where the binary comes from differs.
# A binary built outside Docker must run on the runtime image's glibc (2.36 for Debian 12).
# CI (tests/docker/run.sh) builds `prebuilt` with a base image it makes locally, as no registry is
# reachable there: --build-arg RUNTIME_IMAGE=<local image> --build-arg GM_BINARY=<path in the context>.
#
# The stages are ordered for builders that build every stage before the target (the legacy
# builder, DOCKER_BUILDKIT=0, as in CI; kaniko without --skip-unused-stages): `prebuilt` comes
# before `builder`, so it needs no Rust image. Such a builder also builds `prebuilt` for a plain
# `docker build .`, and then needs target/release/gm in the context; BuildKit, the default
# builder since Docker 23, skips stages the target does not use.

# Builder and runtime must share a glibc: Debian 12 (bookworm) both.
ARG BUILDER_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# An empty directory: copied with --chown it makes the data directory, owned by gm's user, without
# a shell in the runtime image. A named volume mounted there starts with that owner.
FROM scratch AS empty-dir

FROM ${RUNTIME_IMAGE} AS runtime-base
ARG RUNTIME_IMAGE
LABEL org.opencontainers.image.title="gm" \
      org.opencontainers.image.description="Group membership service for Kubernetes, replicated with Raft" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=empty-dir --chown=65532:65532 / /var/lib/gm/
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    GM_DATA_DIR=/var/lib/gm
VOLUME ["/var/lib/gm"]
# The one writable place: relative paths land in the data directory.
WORKDIR /var/lib/gm
USER 65532:65532
# 8080: the REST API, /metrics, /healthz, /readyz. 7000: Raft and node-to-node traffic.
EXPOSE 8080 7000
ENTRYPOINT ["gm"]
CMD ["server"]

# gm built outside Docker: GM_BINARY is its path in the build context.
FROM runtime-base AS prebuilt
ARG GM_BINARY=target/release/gm
COPY ${GM_BINARY} /usr/local/bin/gm

FROM ${BUILDER_IMAGE} AS builder
# jemalloc (gm's allocator) is built with make, which the slim image lacks.
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# No debug info in the image (the release profile keeps some for profiling on a workstation).
RUN CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked --bin gm \
 && cp target/release/gm /usr/local/bin/gm

# The default target: gm compiled above.
FROM runtime-base AS runtime
COPY --from=builder /usr/local/bin/gm /usr/local/bin/gm
