# print-abort-worker: a small runtime image with the worker and the Graph simulator.
# Build: docker build -t print-abort-worker .

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them: every workspace member's
# manifest with empty sources, built once.
# The commit the build_info metric names (there is no .git in the build context).
ARG PRINT_ABORT_COMMIT=unknown
COPY Cargo.toml Cargo.lock build.rs ./
COPY crates/graph-sim/Cargo.toml crates/graph-sim/
COPY crates/bench/Cargo.toml crates/bench/
RUN for dir in . crates/graph-sim crates/bench; do \
        mkdir -p "$dir/src" && echo 'fn main() {}' > "$dir/src/main.rs" && echo '' > "$dir/src/lib.rs"; \
    done \
    && cargo build --release --locked -p print-abort-worker -p graph-sim \
    && rm -rf src crates/graph-sim/src crates/bench/src
COPY src src
COPY crates crates
RUN touch src/main.rs src/lib.rs crates/graph-sim/src/main.rs crates/graph-sim/src/lib.rs \
    && cargo build --release --locked -p print-abort-worker -p graph-sim

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
