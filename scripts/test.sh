#!/usr/bin/env bash
# The project's test command: prepares the Python side (a venv with flwr==1.28.0), checks the
# system tools the tests use, and runs every test of the workspace. Extra arguments go to
# `cargo test` (for example a test name filter).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

missing=()
for tool in cargo openssl ssh-keygen setpriv python3 docker docker-compose debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test: missing tools: ${missing[*]}" >&2
  echo "test: on Debian: apt-get install openssl openssh-client util-linux python3 python3-venv docker.io docker-compose debootstrap" >&2
  exit 1
fi

if ! docker info >/dev/null 2>&1; then
  echo "test: the Docker engine is not reachable (the image tests need it): start dockerd" >&2
  exit 1
fi

FLWR_VENV="$("$repo/scripts/python-env.sh")"
export FLWR_VENV
cargo test --workspace --no-fail-fast "$@"
