#!/usr/bin/env bash
# Creates (or reuses) the Python venv the tests use: flwr==1.28.0 and the example app's
# dependencies, from tests/python/requirements.txt.
#
#   scripts/python-env.sh          # venv at $FLWR_VENV, default <repo>/.venv
#
# Prints the venv path on success. Fails loudly (non-zero) if Python 3.10+ or pip is missing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FLWR_VENV:-$repo/.venv}"
req="$repo/tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "python-env: $python not found; install Python 3.10 or newer (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "python-env: $("$python" --version) is too old; flwr 1.28.0 needs Python 3.10 or newer" >&2
  exit 1
fi

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/flwr" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$venv"
  exit 0
fi

echo "python-env: installing $(grep -v '^#' "$req" | xargs) into $venv" >&2
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" >&2 || {
    echo "python-env: cannot create a venv; install the venv module (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
"$venv/bin/flwr" --version >/dev/null
# Start Ray once (the simulation test's engine): its first start on a new venv is the slowest, and
# its raylet has a fixed 30 s to come up.
echo "python-env: starting Ray once to warm it up" >&2
"$venv/bin/python" -c 'import ray; ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False); ray.shutdown()' >&2 \
  || echo "python-env: warning: Ray did not start; the simulation test will say why" >&2
echo "$want" > "$stamp"
echo "$venv"
