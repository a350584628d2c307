# Stand-in for the Dockerfile's Rust builder image (rust:X.Y-slim-bookworm), for machines where
# Docker Hub does not answer. scripts/check-docker builds it under that exact name, on its
# debian:bookworm-slim (itself a stand-in there), only when the real image cannot be pulled.
# Build context (made by the script): this file, the machine's CA bundle, and the machine's own
# Rust toolchain as toolchain/ (rustc --print sysroot, without its docs).

FROM debian:bookworm-slim

# What the official slim image adds to Debian for building: a C toolchain (rusqlite's bundled
# SQLite is C; cc is also the linker) and the CA certificates cargo needs for crates.io.
# Unpinned: the versions are those of the Debian release the base image is.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The machine's CA bundle over Debian's: cargo in `docker build` reaches crates.io through the
# same network as the machine, whose egress may present certificates of a local authority.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

# rustc finds its standard library next to its own binary, so the toolchain works from any
# directory; cargo calls the rustc on PATH. CARGO_HOME as in the official image.
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
