# aggregator in a container: `docker build -t aggregator .`, then see compose.yaml.
# The store lives on the /data volume; settings are /etc/aggregator/settings.toml (mount
# your own over it) and any AGGREGATOR_<SECTION>__<KEY> variable. The root file system
# can be read-only: the daemon writes only under /data (and Python under /tmp).

FROM python:3.11-slim AS build
# A virtual environment is one folder to copy into the runtime image, without pip's
# build-time dependencies (hatchling) or caches.
RUN python -m venv /opt/aggregator
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aggregator ./aggregator
COPY migrations ./migrations
COPY seeds ./seeds
RUN /opt/aggregator/bin/pip install --no-cache-dir .

FROM python:3.11-slim
ENV PATH=/opt/aggregator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    AGGREGATOR_CONFIG=/etc/aggregator/settings.toml \
    AGGREGATOR_STORE__DATA_DIR=/data \
    AGGREGATOR_LOG__FORMAT=json
# A fixed uid/gid, so a volume or a bind-mounted directory can be chowned to it on the host.
RUN groupadd --system --gid 10001 aggregator \
    && useradd --system --uid 10001 --gid aggregator --no-create-home --home-dir /data \
       --shell /usr/sbin/nologin aggregator \
    && mkdir -p /data /etc/aggregator \
    && chown aggregator:aggregator /data
COPY --from=build /opt/aggregator /opt/aggregator
COPY settings.toml /etc/aggregator/settings.toml
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# The daemon stops cleanly on SIGTERM within daemon.shutdown_grace (10s by default).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["aggregator", "health"]
# Exec form: the daemon is PID 1 and gets SIGTERM itself (it installs its own handlers).
ENTRYPOINT ["aggregator"]
CMD ["run"]
