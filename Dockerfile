# sitegpt-bridge: one process that receives SiteGPT's webhooks and delivers them.
# Build: docker compose build (or docker build -t sitegpt-bridge .)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package, installed the way a user would; `pip install .` also puts templates/ inside it.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY templates ./templates
RUN pip install . && rm -rf /src

# An unprivileged user that owns only the data volume.
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin bridge \
    && mkdir -p /data /config \
    && chown bridge:bridge /data
VOLUME /data

# Inside the container the bridge listens on every interface, on 8080, and keeps its store in
# the volume; these override settings.toml. Relative paths in settings.toml (a templates dir)
# are read from /config, where the settings file is mounted.
ENV BRIDGE_CONFIG=/config/settings.toml \
    BRIDGE_SERVER__HOST=0.0.0.0 \
    BRIDGE_SERVER__PORT=8080 \
    BRIDGE_STORE__URL=sqlite:////data/bridge.db
WORKDIR /config
USER bridge
EXPOSE 8080

# No curl in the slim image: Python's urllib fails on anything but a 2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

CMD ["sitegpt-bridge", "serve"]
