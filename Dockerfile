# aofd container image: slim Python, non-root, state and audit on volumes.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aofd ./aofd
RUN python -m venv /opt/aofd/venv \
    && /opt/aofd/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system aofd \
    && useradd --system --gid aofd --home-dir /var/lib/aofd --shell /usr/sbin/nologin aofd \
    && mkdir -p /var/lib/aofd /var/log/aofd /etc/aofd \
    && chown aofd:aofd /var/lib/aofd /var/log/aofd
COPY --from=build /opt/aofd/venv /opt/aofd/venv
ENV PATH=/opt/aofd/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KUBECACHEDIR=/var/lib/aofd/kube-cache
USER aofd
VOLUME ["/var/lib/aofd", "/var/log/aofd"]
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["aofd"]
CMD ["serve", "--config", "/etc/aofd/aofd.yaml"]
