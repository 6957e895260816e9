# Keychain server image. Build: docker build -t noetl/keychain:0.1.0 .
# The Helm chart (charts/keychain) runs it as user 10001 with a read-only root
# filesystem and an emptyDir at /tmp.

# --- build: a virtualenv with Keychain and its dependencies ---------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The lock first, so a code change does not invalidate the dependency layer. It
# holds the server's runtime dependencies only (no [local] extra: the cluster
# brings its own PostgreSQL), hash-checked: the versions the tests ran on. pip
# writes the .pyc files here, as the runtime's root filesystem is read-only.
COPY requirements/server.txt ./requirements/
RUN pip install --require-hashes -r requirements/server.txt
COPY pyproject.toml README.md ./
COPY app ./app
# app/migrations is a link to alembic/: the wheel takes the migrations from there.
COPY alembic ./alembic
# The lock brought every dependency; pip check fails the build if it no longer
# covers pyproject.toml (`make lock`).
RUN pip install --no-deps . && pip check

# --- runtime: the venv, nothing else (the migrations are in the wheel) ----
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KEYCHAIN_HOST=0.0.0.0 \
    KEYCHAIN_PORT=8082 \
    KEYCHAIN_LOG_FORMAT=json \
    KEYCHAIN_DATA_DIR=/tmp/keychain

# A numeric user, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 keychain \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin keychain

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
EXPOSE 8082
ENTRYPOINT ["keychain"]
CMD ["serve"]
