# kiln's container image: the controller, and `kiln runner` for build Jobs.
#
#   docker build -t ghcr.io/kiln-dev/kiln:0.1.0 .
#
# Stage 1 builds a static kiln (musl links statically by default); stage 2 takes Packer from
# HashiCorp's official image; the result is distroless/static, non-root
# (65532), with nothing but the two binaries and CA certificates. kiln is
# built without the `demo` feature, so the test control plane is not in it.
#
# Packer: 1.16.0, see PACKER_VERSION. Releases since 1.10 bundle no plugins;
# `kiln runner` runs `packer init` for templates that declare
# required_plugins, downloading them into $HOME (/tmp in build Jobs, an
# emptyDir, since the root filesystem is read-only).

ARG RUST_VERSION=1.95
ARG PACKER_VERSION=1.16.0

FROM rust:${RUST_VERSION}-alpine AS build
# A C toolchain for ring and aws-lc-sys.
RUN apk add --no-cache musl-dev gcc g++ make cmake perl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin kiln \
    && cp target/release/kiln /kiln

FROM hashicorp/packer:${PACKER_VERSION} AS packer

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /kiln /usr/local/bin/kiln
COPY --from=packer /bin/packer /usr/local/bin/packer
ENV HOME=/tmp \
    CHECKPOINT_DISABLE=1 \
    KILN_PACKER=/usr/local/bin/packer
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kiln"]
CMD ["controller"]
