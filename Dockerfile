# qd in a container: multi-stage build, non-root user, data in a volume, a health check.
#   docker build -t qd .
#   docker run -p 7700:7700 -p 7701:7701 -v qd-data:/data \
#     --mount type=bind,src=./qd-secret,dst=/run/secrets/qd_secret,ro qd
# It listens on all interfaces (protocol on 7700, dashboard and /metrics on 7701), so it
# needs a secret: by default from the file /run/secrets/qd_secret (a Docker/Compose/Kubernetes
# secret), or set QD_SECRET. Without one it refuses to start and says so.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p qd && strip target/release/qd

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data qd && mkdir /data && chmod 0700 /data && chown qd /data
COPY --from=build /src/target/release/qd /usr/local/bin/qd
USER 10001
VOLUME /data
EXPOSE 7700 7701
# QD_SECRET_FILE names a file; the secret itself is never baked into the image.
# hadolint ignore=DL3064
ENV QD_LISTEN=0.0.0.0:7700 QD_HTTP=0.0.0.0:7701 QD_DATA=/data QD_ADDR=127.0.0.1:7700 \
    QD_SECRET_FILE=/run/secrets/qd_secret
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD ["qd", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["qd"]
CMD ["serve"]
