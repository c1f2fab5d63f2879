# permitd container image: a release build in one stage, a small non-root
# runtime in the next. The build step is the same `cargo build --release
# --locked` that CI and the README use.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# permitd run uses the Rust client, a workspace member built from its path.
COPY clients/rust ./clients/rust
RUN cargo build --release --locked

# distroless "cc": glibc, libgcc, CA certificates and nothing else (no shell,
# no package manager, no curl), running as the unprivileged user 65532. The
# binary needs no OpenSSL (rustls), so this is all it links against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/permitd /usr/local/bin/permitd
USER nonroot:nonroot
ENV PERMITD_LISTEN=0.0.0.0:8080 \
    PERMITD_LOG_FORMAT=json
# Configuration is environment variables (every flag has one; see
# `permitd --help`). The ones a deployment usually sets:
#   REDIS_URL           redis://:password@redis:6379/0 shares semaphores
#                       between instances; without it the embedded,
#                       single-process store is used
#   PERMITD_API_TOKENS  comma-separated bearer tokens (or mount a file and
#                       set PERMITD_API_TOKEN_FILE); without one the API is open
EXPOSE 8080
# The binary checks itself: GET /healthz on 127.0.0.1 at the --listen port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/permitd", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/permitd"]
