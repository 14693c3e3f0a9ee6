# syntax=docker/dockerfile:1
# The artifactstore image: built in the Rust image, run in slim Debian as a non-root user.
# Dependencies build in layers of their own (cargo-chef): a change to the sources rebuilds only
# the crate itself. The image carries PostgreSQL's server binaries, so its default command
# (`serve` without ARTIFACTSTORE_DATABASE_URL) runs the embedded private cluster under
# /var/lib/artifactstore; give ARTIFACTSTORE_DATABASE_URL to use a PostgreSQL service instead.
# Without tokens the server refuses to listen beyond loopback: set ARTIFACTSTORE_TOKENS_FILE.
# The blobs directory exists in the image, owned by the service's user, so that a volume
# mounted there starts with that owner. The metrics listener (9464) is open to the container's
# network for Prometheus: keep that network trusted (it shows every tenant's activity counts).

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency list only: unchanged sources keep the next stage's cache.
FROM chef AS planner
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY sdk/rust ./sdk/rust
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin artifactstore
# Only what the binary is built from; benches and tests keep their placeholders from `cook`.
COPY Cargo.toml Cargo.lock build.rs ./
COPY sql ./sql
COPY deploy/grafana ./deploy/grafana
COPY src ./src
# The Rust SDK (a workspace member the CLI uses) generates its client from the spec.
COPY openapi/artifactstore.json ./openapi/artifactstore.json
COPY sdk/rust ./sdk/rust
RUN cargo build --release --locked --bin artifactstore

FROM debian:bookworm-slim
# PostgreSQL's server binaries for the embedded default, without a cluster of Debian's own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates postgresql-common \
 && sed -ri 's/^#?\s*create_main_cluster.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 artifactstore \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/artifactstore --create-home artifactstore \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/artifactstore/blobs
COPY --from=build /src/target/release/artifactstore /usr/local/bin/artifactstore
USER 10001:10001
WORKDIR /var/lib/artifactstore
ENV ARTIFACTSTORE_LISTEN=0.0.0.0:8000 \
    ARTIFACTSTORE_METRICS_LISTEN=0.0.0.0:9464 \
    ARTIFACTSTORE_DATA_DIR=/var/lib/artifactstore \
    ARTIFACTSTORE_LOG_FORMAT=json
EXPOSE 8000 9464
# Liveness only: an outage of the database or of S3 must not mark the process unhealthy
# (readiness, /readyz, is for load balancers and for compose's depends_on).
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 \
  CMD ["artifactstore", "probe", "http://127.0.0.1:9464/livez"]
ENTRYPOINT ["artifactstore"]
CMD ["serve"]
