# syntax=docker/dockerfile:1
# The programs of seckill-kafka and config.yaml in a small image, run as a non-root
# user. `make docker-build` builds it as seckill-kafka:latest.

# ---- builder: the crate's build needs (librdkafka is built with CMake, against Debian's
# OpenSSL, libcurl and zlib, as on the dev machines: scripts/dev-stack.sh deps) ----
FROM rust:1.95-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake pkg-config python3 \
         libssl-dev libcurl4-openssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build

# Dependencies first, with placeholder sources, so this layer is reused until
# Cargo.toml / Cargo.lock change. build.rs needs schemas/ and migrations/.
COPY Cargo.toml Cargo.lock build.rs ./
COPY schemas schemas
COPY migrations migrations
COPY benches benches
COPY examples examples
RUN mkdir -p src/bin \
    && touch src/lib.rs \
    && for bin in client_kafka server_kafka log_worker seckill_admin seckill_gateway stream_sum zstd_producer schema_tool dev_broker; do \
         echo 'fn main() {}' > "src/bin/$bin.rs"; \
       done \
    && cargo build --release --bins \
    && rm -rf src

# The real sources.
COPY src src
RUN touch src/lib.rs build.rs \
    && cargo build --release \
         --bin client_kafka --bin server_kafka --bin log_worker --bin seckill_admin \
         --bin seckill_gateway --bin stream_sum --bin zstd_producer

# ---- runtime: the shared libraries the programs link (tests/deploy.rs checks the list
# against the built binaries) ----
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin seckill
WORKDIR /app
COPY --from=builder /build/target/release/client_kafka /build/target/release/server_kafka /build/target/release/log_worker /build/target/release/seckill_admin /build/target/release/seckill_gateway /build/target/release/stream_sum /build/target/release/zstd_producer /usr/local/bin/
COPY config.yaml /app/config.yaml
USER seckill
# Programs read /app/config.yaml (the working directory's config.yaml); the environment
# (KAFKA_BROKERS, REDIS_URL, DATABASE_URL, SECKILL_*) overrides it.
CMD ["server_kafka"]
