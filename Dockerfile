# Multi-stage build: compile in the Rust image, run in a slim Debian image as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin artifactstore

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/artifactstore --create-home artifactstore
COPY --from=build /src/target/release/artifactstore /usr/local/bin/artifactstore
USER artifactstore
WORKDIR /var/lib/artifactstore
ENV ARTIFACTSTORE_LISTEN=0.0.0.0:8000 \
    ARTIFACTSTORE_DATA_DIR=/var/lib/artifactstore
EXPOSE 8000
ENTRYPOINT ["artifactstore"]
CMD ["serve"]
