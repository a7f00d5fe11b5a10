# The silobreak image: `silobreak` ingest (`up`), streams API, simulator and setup commands.
# Built by docker-compose.yml; Grafana, the broker and the databases use their own images.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY devices/ devices/
COPY store/ store/
COPY ingest/ ingest/
COPY streams/ streams/
COPY firmware_sim/ firmware_sim/
COPY grafana/ grafana/
COPY silobreak/ silobreak/
COPY deploy/ deploy/
RUN pip install . && rm -rf build

# Group 0, as in Grafana's image: the Grafana roles' password files this image writes (mode
# 0640) are readable by Grafana (uid 472, gid 0) through a shared volume, and by nobody else.
RUN useradd --system --uid 10001 --gid 0 --home-dir /app silobreak \
    && mkdir -p /run/silobreak /mosquitto/config \
    && chown 10001:0 /run/silobreak /mosquitto/config
USER 10001:0

ENTRYPOINT ["silobreak"]
CMD ["--help"]
