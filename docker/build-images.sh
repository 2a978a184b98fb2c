#!/usr/bin/env bash
# Builds the project's images:
#
#   flower-rs/superlink, flower-rs/supernode            binary + Python + flwr (subprocess mode)
#   flower-rs/superlink-slim, flower-rs/supernode-slim  the binary alone (process mode)
#   flower-rs/serverapp, flower-rs/clientapp            flwr-serverapp / flwr-clientapp
#   flower-rs/postgres, flower-rs/haproxy               Debian's PostgreSQL 15 and HAProxy 2.6,
#                                                       for high availability (compose-ha.yml)
#   flower-rs/prometheus                                Debian's Prometheus 2.42 (compose-ha.yml's
#                                                       `monitoring` profile)
#
# Settings (environment):
#   BASE_PYTHON   base of the Python images   (default python:3.11-slim-bookworm)
#   BASE_DEBIAN   base of the slim images     (default debian:bookworm-slim)
#   APP_DEPS      pip packages the apps need  (default numpy, for the example app)
#   TAG           image tag                   (default latest)
#   PROFILE       cargo profile of the binaries: release (default) or debug
#   BUILD_CA_BUNDLE  CA bundle for pip during the build (default: $PIP_CERT or $SSL_CERT_FILE)
#
# Without a registry, make the bases first (docker/base/make-base-image.sh) and use
#   BASE_PYTHON=flower-rs/python:bookworm BASE_DEBIAN=flower-rs/debian:bookworm
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_PYTHON="${BASE_PYTHON:-python:3.11-slim-bookworm}"
BASE_DEBIAN="${BASE_DEBIAN:-debian:bookworm-slim}"
APP_DEPS="${APP_DEPS-numpy}"
TAG="${TAG:-latest}"
PROFILE="${PROFILE:-release}"

docker info >/dev/null 2>&1 || { echo "build-images: the Docker engine is not reachable" >&2; exit 1; }
case "$PROFILE" in
  release) (cd "$repo" && cargo build --release --bins) ;;
  debug) (cd "$repo" && cargo build --bins) ;;
  *) echo "build-images: PROFILE must be release or debug" >&2; exit 1 ;;
esac

context="$(mktemp -d -t flower-rs-images.XXXXXX)"
trap 'rm -rf "$context"' EXIT
cp "$repo/target/$PROFILE/superlink" "$repo/target/$PROFILE/supernode" "$context/"
# pip inside the build trusts the CA bundle pip trusts here (a TLS-inspecting proxy's CA, say).
ca="${BUILD_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-}}}"
if [ -n "$ca" ] && [ -f "$ca" ]; then cp "$ca" "$context/build-ca.crt"; else : > "$context/build-ca.crt"; fi
cp "$repo/docker/ha/haproxy.cfg" "$repo/docker/ha/postgres-entrypoint.sh" "$repo/docker/monitoring/prometheus.yml" "$context/"

build() { # name, dockerfile, base
  echo "build-images: flower-rs/$1:$TAG"
  docker build -q -t "flower-rs/$1:$TAG" -f "$repo/docker/$2" \
    --build-arg "BASE=$3" --build-arg "APP_DEPS=$APP_DEPS" "$context" >/dev/null
}

build superlink superlink.Dockerfile "$BASE_PYTHON"
build supernode supernode.Dockerfile "$BASE_PYTHON"
build serverapp serverapp.Dockerfile "$BASE_PYTHON"
build clientapp clientapp.Dockerfile "$BASE_PYTHON"
build superlink-slim superlink-slim.Dockerfile "$BASE_DEBIAN"
build supernode-slim supernode-slim.Dockerfile "$BASE_DEBIAN"
build postgres postgres.Dockerfile "$BASE_DEBIAN"
build haproxy haproxy.Dockerfile "$BASE_DEBIAN"
build prometheus prometheus.Dockerfile "$BASE_DEBIAN"

echo
docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep "^flower-rs/" | grep -E "(superlink|supernode|serverapp|clientapp|postgres|haproxy|prometheus)(-slim)?:$TAG" | sort
