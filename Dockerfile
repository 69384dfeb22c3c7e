# iota serve in a container: built in one stage, run as a non-root user in a slim one.
#
#   docker build -t iota .
#   docker run -p 3000:3000 iota                      # modules in the container's data directory
#   docker run -p 3000:3000 -e IOTA_STORE=s3://bucket/prefix -e AWS_REGION=... \
#       -e AWS_ACCESS_KEY_ID=... -e AWS_SECRET_ACCESS_KEY=... iota   # a fleet on one store
#
# deploy/kubernetes.yaml runs it behind a Service; README "Several servers" describes the setup.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin iota

FROM debian:bookworm-slim
# CA certificates for an S3 store and a collector over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/iota --create-home iota
COPY --from=build /src/target/release/iota /usr/local/bin/iota
USER 10001:10001
WORKDIR /var/lib/iota
# The data directory: the modules, or with IOTA_STORE the local cache of the store, and the
# compile workers' scratch space.
ENV IOTA_ADDR=0.0.0.0:3000 \
    IOTA_DATA_DIR=/var/lib/iota/data
VOLUME /var/lib/iota/data
EXPOSE 3000
ENTRYPOINT ["iota", "serve"]
