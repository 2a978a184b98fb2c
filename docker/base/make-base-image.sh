#!/usr/bin/env bash
# Makes the base images the project's Dockerfiles build on, without any image registry:
#
#   flower-rs/debian:bookworm   Debian 12 (minbase) with ca-certificates
#   flower-rs/python:bookworm   the same with Python 3.11 and venv
#
# from Debian's package mirror with debootstrap, imported with `docker import`. Users with a
# registry can skip this and build on public images (debian:bookworm-slim, python:3.11-slim).
#
#   docker/base/make-base-image.sh            # builds both (skips images that exist)
#   FORCE=1 docker/base/make-base-image.sh    # rebuilds
#   MIRROR=http://deb.debian.org/debian       # the Debian mirror to use
set -euo pipefail
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
DEBIAN_IMAGE="${DEBIAN_IMAGE:-flower-rs/debian:bookworm}"
PYTHON_IMAGE="${PYTHON_IMAGE:-flower-rs/python:bookworm}"

for tool in docker debootstrap; do
  command -v "$tool" >/dev/null || { echo "make-base-image: '$tool' is required (Debian: apt-get install $tool)" >&2; exit 1; }
done
if [ "$(id -u)" != 0 ]; then
  echo "make-base-image: debootstrap needs root" >&2
  exit 1
fi
docker info >/dev/null 2>&1 || { echo "make-base-image: the Docker engine is not reachable (is dockerd running?)" >&2; exit 1; }

exists() { docker image inspect "$1" >/dev/null 2>&1; }

work="$(mktemp -d -t flower-rs-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT

build() { # image, extra packages
  local image=$1 packages=$2 root="$work/rootfs-${1//[:\/]/_}"
  if exists "$image" && [ "${FORCE:-0}" != 1 ]; then
    echo "make-base-image: $image exists"
    return
  fi
  echo "make-base-image: debootstrap $SUITE ($packages) for $image"
  debootstrap --variant=minbase --include="$packages" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
  }
  # Keep the image small: no package lists, caches, docs or man pages.
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*
  tar -C "$root" -c . | docker import \
    -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["/bin/bash"]' - "$image" >/dev/null
  echo "make-base-image: $image ($(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
}

build "$DEBIAN_IMAGE" ca-certificates
build "$PYTHON_IMAGE" ca-certificates,python3,python3-venv
