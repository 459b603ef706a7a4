# kiln's container image: the controller, and `kiln runner` for build Jobs.
#
#   docker build -t ghcr.io/kiln-dev/kiln:0.1.0 .
#
# Stage 1 builds a static kiln (musl links statically by default). Stage 2
# builds Packer and the cloud plugins from their Go modules with
# hack/packer/setup.sh, the script the tests use, so the image and the tests
# run the same versions. The result is distroless/static, non-root (65532),
# with nothing but kiln, Packer, the plugins and CA certificates. kiln is
# built without the `demo` feature, so the test control plane is not in it.
#
# Packer: 1.16.0 with the amazon, googlecompute, azure, openstack and
# digitalocean plugins preinstalled in /usr/local/share/packer/plugins
# (PACKER_PLUGIN_PATH); versions in hack/packer/setup.sh, overridable with
# --build-arg PACKER_VERSION=v1.x.y, PLUGIN_AMAZON_VERSION=..., and
# KILN_PACKER_PLUGINS="amazon openstack" to ship fewer plugins. `kiln runner`
# runs `packer init` for templates that declare required_plugins, but never
# downloads: a plugin not preinstalled fails the build with a message saying
# how to add it (docs/packer.md). Packer >= 1.10 is BUSL-1.1 (the plugins are
# MPL-2.0); see docs/packer.md before publishing this image.

ARG RUST_VERSION=1.95
ARG GO_VERSION=1.26

FROM rust:${RUST_VERSION}-alpine AS build
# A C toolchain for ring and aws-lc-sys.
RUN apk add --no-cache musl-dev gcc g++ make cmake perl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin kiln \
    && cp target/release/kiln /kiln

# Packer and its plugins from the Go module proxy (GOPROXY applies), static
# (CGO_ENABLED=0), as hack/packer/setup.sh builds them for the tests.
FROM golang:${GO_VERSION}-bookworm AS packer
ARG PACKER_VERSION
ARG PLUGIN_AMAZON_VERSION
ARG PLUGIN_GOOGLECOMPUTE_VERSION
ARG PLUGIN_AZURE_VERSION
ARG PLUGIN_OPENSTACK_VERSION
ARG PLUGIN_DIGITALOCEAN_VERSION
ARG KILN_PACKER_PLUGINS
COPY hack/packer/setup.sh /usr/local/bin/kiln-packer-setup
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    KILN_CACHE_DIR=/out kiln-packer-setup \
    && /out/packer-current/bin/packer version \
    && PACKER_PLUGIN_PATH=/out/packer-current/plugins /out/packer-current/bin/packer plugins installed

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /kiln /usr/local/bin/kiln
COPY --from=packer /out/packer-current/bin/packer /usr/local/bin/packer
# Owned by the image's user so that an image built FROM this one can add a
# plugin with `RUN ["packer", "plugins", "install", ...]` without switching
# users; at run time the root filesystem is read-only and Packer only reads it.
COPY --from=packer --chown=65532:65532 /out/packer-current/plugins /usr/local/share/packer/plugins
# HOME=/tmp: Packer's config dir ($HOME/.config/packer) is on the writable
# /tmp (an emptyDir in build Jobs, which set HOME and TMPDIR to it too).
ENV HOME=/tmp \
    CHECKPOINT_DISABLE=1 \
    KILN_PACKER=/usr/local/bin/packer \
    PACKER_PLUGIN_PATH=/usr/local/share/packer/plugins
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kiln"]
CMD ["controller"]
