# The herder itself, in a container that drives the host's Docker Engine
# through its socket. Multi-stage: a builder makes a venv, the final image
# keeps only Debian's python3 and that venv, and runs as a non-root user in
# the socket's group.
#
# The ordinary way (a registry and the package index reachable):
#   docker build --build-arg DOCKER_GID=$(stat -c %g /var/run/docker.sock) -t herder .
# Offline (as on our machines): scripts/build-herder-image makes a wheelhouse
# on the host with `pip wheel` and builds on herder/base:bookworm, so the
# build itself needs no package index.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# Lets scripts/build-herder-image find and remove stale builder images.
LABEL herder.stage=build
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates; \
    rm -rf /var/lib/apt/lists/*
COPY . /src
# With wheels in /src/wheelhouse, install only from them (no network); else from the index.
RUN set -eux; \
    python3 -m venv /opt/herder; \
    if ls /src/wheelhouse/*.whl >/dev/null 2>&1; then \
        /opt/herder/bin/pip install --no-cache-dir --no-index --find-links /src/wheelhouse herder; \
    else \
        /opt/herder/bin/pip install --no-cache-dir /src; \
    fi; \
    find /opt/herder -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE}
# The GID of the Docker socket on the host that will run this image.
ARG DOCKER_GID=999
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 ca-certificates; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log; \
    group=$(getent group "${DOCKER_GID}" | cut -d: -f1); \
    if [ -z "$group" ]; then group=docker-socket; groupadd --gid "${DOCKER_GID}" "$group"; fi; \
    useradd --system --uid 10001 --user-group --groups "$group" \
        --home-dir /var/lib/herder --create-home --shell /usr/sbin/nologin herder
COPY --from=build /opt/herder /opt/herder
# Bytecode made once here: the user herder cannot write it, and a CLI that
# recompiles on every start is too slow for the health check's 10 s.
RUN python3 -m compileall -q /opt/herder >/dev/null
ENV PATH=/opt/herder/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    HERDER_DATA_DIR=/var/lib/herder \
    HERDER_HOST=0.0.0.0 \
    HERDER_PORT=8080
USER herder
WORKDIR /var/lib/herder
VOLUME ["/var/lib/herder"]
EXPOSE 8080
# Shell form, so a HERDER_PORT given at `docker run` is the port checked.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD herder ping --url "http://127.0.0.1:${HERDER_PORT}"
ENTRYPOINT ["herder"]
CMD ["serve"]
