#!/usr/bin/env bash
# Builds the Debian packages flwr-superlink and flwr-supernode with cargo-deb (installed from
# crates.io when missing, at the version below): the binaries, hardened systemd units
# (flwr-superlink.service, flwr-supernode@.service), their flags in /etc/flwr/, and the `flwr`
# system user. See the README, "Install on a server".
#
#   scripts/package.sh                      # release binaries, packages in target/debian/
#   PROFILE=debug OUT=/tmp/debs scripts/package.sh   # the debug binaries (as the tests do)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PROFILE="${PROFILE:-release}"
OUT="${OUT:-$repo/target/debian}"
CARGO_DEB_VERSION=3.8.0

if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
  echo "package: installing cargo-deb $CARGO_DEB_VERSION from crates.io"
  cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi
case "$PROFILE" in
  release) cargo build --release --bins; profile=() ;;
  # cargo-deb warns that it is meant for release builds; the packages are the same otherwise.
  debug) cargo build --bins; profile=(--profile dev) ;;
  *) echo "package: PROFILE must be release or debug" >&2; exit 1 ;;
esac
mkdir -p "$OUT"
for pkg in flwr-superlink flwr-supernode; do
  cargo deb -p "$pkg" --no-build "${profile[@]}" --fast -o "$OUT/" 2> >(grep -v -e "dev profile is not supported" -e "To enable debug symbols" >&2)
done
ls "$OUT"/*.deb
