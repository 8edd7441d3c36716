# aofd container image: slim Python, non-root, state and audit on volumes.
#
#   PID 1 is tini: it forwards SIGTERM to aofd and reaps orphaned grandchildren of kubectl.
#   docker stop -t 60 (or compose stop_grace_period: 60s): aofd drains in-flight runs for
#   drain_grace_seconds (30 s by default) after SIGTERM; Docker's default 10 s would cut it short.
#
# /etc/aofd/aofd.yaml is mounted by the operator. In a container it must set
# `listen: 0.0.0.0:8080` to take webhooks from outside, and leave `admin` at its default
# 127.0.0.1:8081: the HEALTHCHECK below polls /readyz there, from inside the container.
# kubectl is not in this image: mount it read-only at the path in `executables.paths.kubectl`
# or build FROM this image and COPY it in.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aofd ./aofd
RUN python -m venv /opt/aofd/venv \
    && /opt/aofd/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# Debian point releases replace these versions; pinning them would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates tini gnupg openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 aofd \
    && useradd --system --uid 10001 --gid aofd --home-dir /var/lib/aofd --shell /usr/sbin/nologin aofd \
    && mkdir -p /var/lib/aofd /var/log/aofd /var/cache/aofd /etc/aofd \
    && chown aofd:aofd /var/lib/aofd /var/log/aofd /var/cache/aofd \
    && chmod 0700 /var/lib/aofd \
    && chmod 0750 /var/log/aofd
COPY --from=build /opt/aofd/venv /opt/aofd/venv
# HOME and KUBECACHEDIR mirror the unit's CacheDirectory (aofd sets per-Context ones for kubectl)
ENV PATH=/opt/aofd/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/var/cache/aofd \
    KUBECACHEDIR=/var/cache/aofd/kube
# numeric, so Kubernetes runAsNonRoot can check it
USER 10001:10001
VOLUME ["/var/lib/aofd", "/var/log/aofd"]
# trigger webhooks; the admin API (8081) stays on loopback and is not published
EXPOSE 8080
STOPSIGNAL SIGTERM
# ProxyHandler({}): an HTTP(S)_PROXY set for egress must not capture the loopback probe
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8081/readyz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]
ENTRYPOINT ["tini", "--", "aofd"]
CMD ["serve", "--config", "/etc/aofd/aofd.yaml"]
