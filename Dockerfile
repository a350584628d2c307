# One builder compiles both servers; each ships in its own small image:
#   docker build --target front -t kv-front .
#   docker build --target back  -t kv-back  .
# docker-compose.yml builds and runs both with RabbitMQ. scripts/check-docker (part of .ci/run)
# lints this file with hadolint, then has a real Docker engine build both targets and run them
# with docker-compose.yml: healthy, a write and a read through the published port, the data kept
# across a new back-server container, a clean stop. Where Docker Hub does not answer, it builds
# stand-ins under this file's FROM names first (see docker/standin/).
# No `# syntax=` line: it makes BuildKit fetch a frontend image from Docker Hub (which fails
# offline); BuildKit's built-in frontend reads this file, and so does the classic builder.

# The toolchain CI builds and tests with (rustc 1.95; Cargo.toml's rust-version 1.89 is only the
# minimum), on Debian 12 like the runtime images below, so the binaries need no newer glibc than
# they find there. The slim Rust image has gcc, which rusqlite's bundled SQLite needs.
FROM rust:1.95-slim-bookworm AS dependencies
WORKDIR /src

# Dependency stage. cargo-chef would add a `cargo install` of minutes to every uncached build;
# BuildKit cache mounts live only on the machine that built (a CI builder starts empty, and
# --cache-to exports layers, not mounts). So: the manifests alone, with stub sources, and a build
# of the two servers that compiles every dependency into an ordinary layer. It is rebuilt only
# when Cargo.toml, Cargo.lock or a crate's manifest changes; an edit to the code reuses it. A
# stage of its own, so that `docker build --target dependencies -t NAME` can keep it by name
# (scripts/check-docker does) where a builder's cache is pruned.
# Every workspace member needs its manifest here ("crates/*" in Cargo.toml), even kv-bench, or
# the lockfile would not match and --locked would stop the build. One COPY line per crate, all
# together here: a new crate adds its line (scripts/check-docker says which one is missing).
COPY Cargo.toml Cargo.lock ./
COPY crates/protocol/Cargo.toml crates/protocol/
COPY crates/runtime/Cargo.toml crates/runtime/
COPY crates/front/Cargo.toml crates/front/
COPY crates/back/Cargo.toml crates/back/
COPY crates/bench/Cargo.toml crates/bench/
COPY crates/e2e/Cargo.toml crates/e2e/
# The stubs need no line per crate: every crate gets an empty src/lib.rs, and every target path
# its manifest names (`path = "src/main.rs"` of a [[bin]], say) gets `fn main() {}`.
RUN for crate in crates/*/; do \
        mkdir -p "${crate}src" && : > "${crate}src/lib.rs" \
        && sed -n 's/^path *= *"\(.*\)"$/\1/p' "${crate}Cargo.toml" > /tmp/targets \
        && while read -r target; do \
            mkdir -p "$(dirname "${crate}${target}")" && echo 'fn main() {}' > "${crate}${target}"; \
        done < /tmp/targets; \
    done \
    && rm /tmp/targets \
    && cargo build --release --locked -p front-server -p back-server

FROM dependencies AS builder
# The real sources. COPY keeps their modification times, which can be older than the stub build:
# cargo would then take the workspace crates as fresh and ship the stubs. Touching them makes
# cargo rebuild exactly our crates, and nothing else.
COPY crates crates
RUN find crates -type f -exec touch {} + \
    && cargo build --release --locked -p front-server -p back-server

# What both servers share: Debian 12 slim (the builder's glibc), a non-root user with a fixed id
# (kv, uid and gid 10001; USER gives the number, which runAsNonRoot-style checks can verify), and
# the probe used by HEALTHCHECK. Debian slim has no curl or wget; the probe is a bash script that
# sends a real HTTP request over bash's /dev/tcp and checks the status line, at no size cost.
# The binaries need only libc, libm and libgcc_s, all in the base image (TLS is rustls and SQLite
# is linked in), so nothing is installed. Both log one line per event to stderr, which
# `docker logs` shows. The one thing TLS needs from the system is a root store: `amqps://` URLs
# load the system's roots (then add AMQP_CA_FILE), and find none in Debian slim, so the builder's
# CA bundle (Debian's ca-certificates) is copied in.
FROM debian:bookworm-slim AS runtime
# Not --system: system ids end at 999, and useradd warns about 10001 there. --no-log-init: no
# lastlog/faillog entry, which for a high uid is a large sparse file in the layer.
RUN groupadd --gid 10001 kv \
    && useradd --no-log-init --uid 10001 --gid kv --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin kv
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# Executable in git; COPY keeps the mode (no --chmod, so the classic builder works too).
COPY docker/healthcheck /usr/local/bin/healthcheck

# The front-server. It must listen on all interfaces to be reachable through the published port.
# HEALTHCHECK asks /health (the process serves HTTP), not /ready: an orchestrator that restarts
# unhealthy containers would otherwise restart every front while RabbitMQ is down, which cures
# nothing (the front reconnects by itself). Load balancers should ask /ready.
# If FRONT_LISTEN's port is changed, change the HEALTHCHECK's URL too.
FROM runtime AS front
COPY --from=builder /src/target/release/front-server /usr/local/bin/front-server
ENV FRONT_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["healthcheck", "http://127.0.0.1:8080/health"]
# Exec form, no shell and no init: the server is PID 1, gets SIGTERM from `docker stop` itself,
# and has its own SIGTERM and SIGINT handlers (it finishes the requests in flight, then exits).
# It starts no child processes, so there are no zombies for an init to reap.
ENTRYPOINT ["/usr/local/bin/front-server"]

# The back-server. Its database lives in /data, owned by the kv user; Docker copies that
# ownership into a new named volume mounted there.
# HEALTHCHECK asks /health on the back-server's admin HTTP listener (ADMIN_LISTEN, default
# 127.0.0.1:8081, loopback: only this container's probe needs it), not /ready, for the same reason
# as the front's. If ADMIN_LISTEN's port is changed, change the HEALTHCHECK's URL too.
FROM runtime AS back
RUN mkdir /data && chown kv:kv /data
COPY --from=builder /src/target/release/back-server /usr/local/bin/back-server
ENV DB_PATH=/data/kv.db
VOLUME ["/data"]
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["healthcheck", "http://127.0.0.1:8081/health"]
ENTRYPOINT ["/usr/local/bin/back-server"]
