# The superlink with Python and flwr==1.28.0, so that `--isolation subprocess` can start the
# ServerApp (flwr-serverapp) inside the container. Runs as user `app` (UID/GID 49999) in /app.
#
#   docker build -f docker/superlink.Dockerfile --build-arg BASE=python:3.11-slim-bookworm <context>
#
# The build context holds the `superlink` binary (docker/build-images.sh prepares it). APP_DEPS
# installs what the apps need (for example APP_DEPS=numpy).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG FLWR_VERSION=1.28.0
# build-ca.crt: extra CA certificates pip needs behind a TLS-inspecting proxy (may be empty).
COPY build-ca.crt /tmp/build-ca.crt
RUN groupadd --gid 49999 app \
 && useradd --uid 49999 --gid 49999 --home-dir /app --create-home --shell /usr/sbin/nologin app \
 && if [ -s /tmp/build-ca.crt ]; then export PIP_CERT=/tmp/build-ca.crt; fi \
 && python3 -m venv /opt/flwr \
 && /opt/flwr/bin/pip install --no-cache-dir --disable-pip-version-check "flwr==${FLWR_VERSION}" \
 && chown -R app:app /opt/flwr
ENV PATH=/opt/flwr/bin:$PATH HOME=/app FLWR_DISABLE_UPDATE_CHECK=1
WORKDIR /app
ARG APP_DEPS=""
RUN if [ -s /tmp/build-ca.crt ]; then export PIP_CERT=/tmp/build-ca.crt; fi \
 && if [ -n "$APP_DEPS" ]; then /opt/flwr/bin/pip install --no-cache-dir --disable-pip-version-check $APP_DEPS; fi
COPY superlink /usr/local/bin/superlink
USER app
ENTRYPOINT ["/usr/local/bin/superlink"]
