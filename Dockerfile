# syntax=docker/dockerfile:1
#
# The portcullis image: one static binary on distroless/static, run as a non-root user.
#
#   docker build -t portcullis .        (BuildKit; linux/amd64 only, see the cargo command)
#
# `cargo xtask image` (part of `cargo xtask test`) runs this file's cargo command outside
# Docker and checks the result: that it is static, that the build reads nothing .dockerignore
# leaves out, and that it serves traffic as the USER below in an otherwise empty root. It also
# fails if this file's cargo command and its own drift apart, so change both together.

# Debian 12, the glibc the static binary links in (and the same as the CI machine's).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The whole context, filtered by .dockerignore: every workspace member's manifest has to be
# there for cargo to load the workspace, and src/main.rs includes examples/demo.yaml.
COPY . .
# Static glibc rather than musl: aws-lc-rs (the TLS crypto, C code) and the allocator keep
# glibc's performance, and no musl toolchain is needed. The explicit --target makes
# RUSTFLAGS apply only to the binary, so build scripts and proc-macros stay ordinary dynamic
# host programs. The target directory is a cache mount, so the binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu -p portcullis \
    && cp target/x86_64-unknown-linux-gnu/release/portcullis /portcullis

# distroless/static has no libc and no shell, which the static binary does not need: CA
# certificates, /etc/passwd with nonroot (65532), /etc/nsswitch.conf (hosts: files dns, so
# /etc/hosts answers before DNS), /tmp, and tzdata. Kubernetes mounts /etc/hosts and
# /etc/resolv.conf. The process writes no files, so readOnlyRootFilesystem: true works.
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.source="https://example.invalid/portcullis" \
      org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="A Kubernetes ingress controller and in-process proxy data plane" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /portcullis /portcullis
# Numeric, so that runAsNonRoot can verify it; the Helm chart's runAsUser/runAsGroup.
USER 65532:65532
# https (TCP, and UDP for HTTP/3), the http redirect, metrics, admin (probes).
EXPOSE 8443/tcp 8443/udp 8080/tcp 9902/tcp 9901/tcp
ENTRYPOINT ["/portcullis"]
CMD ["controller"]
