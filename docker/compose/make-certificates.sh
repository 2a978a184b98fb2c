#!/usr/bin/env bash
# Makes a throwaway CA and a SuperLink certificate for the TLS federation, as the Flower TLS page
# expects them: ca.crt, server.pem, server.key. SANs: superlink (the Compose service), localhost,
# 127.0.0.1 and ::1.
#
#   docker/compose/make-certificates.sh [DIR]     # default ./superlink-certificates
#
# The containers run as UID 49999: as root, the script gives the files to that user (the
# `chown -R 49999:49999` step of the TLS page); otherwise it makes them readable for everyone.
set -euo pipefail
dir="${1:-superlink-certificates}"
command -v openssl >/dev/null || { echo "make-certificates: openssl is required" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 365 \
  -subj "/CN=flower-rs TLS federation CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=superlink" \
  -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:superlink,DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\n' > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
  -extfile san.ext -out server.pem 2>/dev/null
rm -f server.csr san.ext ca.srl
if [ "$(id -u)" = 0 ]; then
  chown -R 49999:49999 .
else
  chmod a+r ./*
fi
echo "make-certificates: ca.crt, server.pem and server.key in $(pwd)"
