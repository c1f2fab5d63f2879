# permitd container image: a release build in one stage, a small non-root
# runtime in the next. The build step is the same `cargo build --release
# --locked` that CI and the README use.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home permitd
COPY --from=build /src/target/release/permitd /usr/local/bin/permitd
USER permitd
ENV PERMITD_LISTEN=0.0.0.0:8080
# Set REDIS_URL (e.g. redis://redis:6379) to share semaphores between
# instances; without it the embedded, single-process store is used.
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/permitd"]
