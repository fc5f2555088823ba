# evmesh's container image: a release build in a Rust image, then a slim Debian runtime with
# only the binary, run as a non-root user, the data directory a volume.
#
#   docker build -t evmesh .
#   docker run -p 10105:10105 -p 10106:10106 -p 10000:10000 -v evmesh-data:/var/lib/evmesh evmesh
#
# runtime/bin/tests/packaging.rs runs the build and start commands below outside a container.

FROM rust:1.95-bookworm AS build
# librdkafka is built from source by rdkafka's build script (C compiler, make, OpenSSL headers).
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p evmesh --bin evmesh

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 evmesh \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/evmesh evmesh \
    && mkdir -p /var/lib/evmesh && chown evmesh:evmesh /var/lib/evmesh
COPY --from=build /src/target/release/evmesh /usr/local/bin/evmesh
USER 10001:10001
WORKDIR /var/lib/evmesh
VOLUME /var/lib/evmesh
# Inside a container the listeners take every interface (the defaults are loopback).
ENV EVMESH_SERVER__HTTP=0.0.0.0:10105 \
    EVMESH_SERVER__ADMIN=0.0.0.0:10106 \
    EVMESH_SERVER__TCP=0.0.0.0:10000
EXPOSE 10105 10106 10000
ENTRYPOINT ["evmesh"]
CMD ["--log-format", "json", "serve", "--data-dir", "/var/lib/evmesh"]
