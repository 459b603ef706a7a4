# kiln's container image. The contents are filled in by the install issue
# (multi-stage static build, non-root, with Packer for `kiln runner`); this
# stage builds the binary so the file already reads as what it will become.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --locked --release --bin kiln

FROM debian:bookworm-slim
COPY --from=build /src/target/release/kiln /usr/local/bin/kiln
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kiln"]
