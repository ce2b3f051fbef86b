# print-abort-worker: a small runtime image with the worker and the Graph simulator.
# Build: docker build -t print-abort-worker .

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && for bin in graph-sim bench; do echo 'fn main() {}' > "src/bin/$bin.rs"; done \
    && cargo build --release --locked --bins \
    && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin worker
COPY --from=build /src/target/release/print-abort-worker /src/target/release/graph-sim /usr/local/bin/
COPY config /app/config
WORKDIR /app
USER 10001
# /healthz, /readyz and /metrics when http.listen is set (see config/default.toml).
EXPOSE 9090
ENTRYPOINT ["print-abort-worker"]
CMD ["run"]
