#!/usr/bin/env bash
# Runs a real Flower federation on localhost, with TLS, and the project's example app through the
# real `flwr` CLI:
#
#   a throwaway CA and server certificate (SANs localhost, 127.0.0.1, ::1, superlink)
#   one SuperLink (Control :9093, Fleet :9092, ServerAppIo :9091) with TLS
#   two SuperNodes with --root-certificates (ClientAppIo :9094 and :9096)
#   flwr run examples/numpy-fedavg local-deployment-tls --stream
#
# Which implementation runs each daemon:
#   SUPERLINK=ours|flower   (default: ours)
#   SUPERNODE=ours|flower   (default: ours)
# Other knobs: ROUNDS (3), MODEL_SIZE (1000), BASE_PORT (9091), KEEP=1 keeps the work directory,
# SUPERLINK_FLAGS (more flags for the SuperLink, e.g. "--serverappio-pull-hold 0").
#
# Everything it starts is stopped when it ends, also on Ctrl-C. Exit status 0 means the run
# completed and the final model equals the predicted one.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUPERLINK="${SUPERLINK:-ours}"
SUPERNODE="${SUPERNODE:-ours}"
ROUNDS="${ROUNDS:-3}"
MODEL_SIZE="${MODEL_SIZE:-1000}"
BASE_PORT="${BASE_PORT:-9091}"
serverappio=$BASE_PORT fleet=$((BASE_PORT + 1)) control=$((BASE_PORT + 2))
appio1=$((BASE_PORT + 3)) appio2=$((BASE_PORT + 5))

for tool in openssl cargo; do
  command -v "$tool" >/dev/null || { echo "federation: '$tool' is required" >&2; exit 1; }
done

work="$(mktemp -d -t flwr-federation.XXXXXX)"
pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  # Newest first: the SuperNodes leave the SuperLink before it stops.
  local i pid
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    pid=${pids[$i]}
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "federation: logs kept in $work" >&2; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "==> Python venv with flwr 1.28.0"
venv="$("$repo/scripts/python-env.sh")"
export PATH="$venv/bin:$PATH"
if [ "$SUPERLINK" = ours ] || [ "$SUPERNODE" = ours ]; then
  echo "==> Building superlink and supernode"
  (cd "$repo" && cargo build --quiet --bins)
fi
bin="$repo/target/debug"

echo "==> Certificates in $work/certificates"
certs="$work/certificates"
mkdir -p "$certs"
(
  cd "$certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 90 \
    -subj "/CN=flower-rs federation CA" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=superlink" -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,DNS:superlink,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\n' > san.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 \
    -extfile san.ext -out server.pem 2>/dev/null
)

start() { # name, command...
  local name=$1; shift
  setsid "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
}

wait_port() { # port, name
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "federation: $2 did not open port $1; its log:" >&2
  cat "$work/$2.log" >&2
  exit 1
}

echo "==> SuperLink ($SUPERLINK)"
case "$SUPERLINK" in
  ours) superlink_cmd=("$bin/superlink") ;;
  flower) superlink_cmd=(flower-superlink) ;;
  *) echo "SUPERLINK must be ours or flower" >&2; exit 1 ;;
esac
export FLWR_HOME="$work/flwr-home"
start superlink "${superlink_cmd[@]}" \
  --ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key" \
  --serverappio-api-address "127.0.0.1:$serverappio" --fleet-api-address "127.0.0.1:$fleet" \
  --control-api-address "127.0.0.1:$control" --storage-dir "$work/superlink-ffs" \
  ${SUPERLINK_FLAGS:-}
wait_port "$control" superlink
wait_port "$fleet" superlink

echo "==> Two SuperNodes ($SUPERNODE)"
case "$SUPERNODE" in
  ours) supernode_cmd=("$bin/supernode") ;;
  flower) supernode_cmd=(flower-supernode) ;;
  *) echo "SUPERNODE must be ours or flower" >&2; exit 1 ;;
esac
for i in 1 2; do
  port=$appio1; [ "$i" = 2 ] && port=$appio2
  FLWR_HOME="$work/supernode-$i" start "supernode-$i" "${supernode_cmd[@]}" \
    --root-certificates "$certs/ca.crt" --superlink "127.0.0.1:$fleet" \
    --clientappio-api-address "127.0.0.1:$port"
done

echo "==> flwr run (connection local-deployment-tls, as on the TLS page)"
flwr config list >/dev/null
cat >> "$FLWR_HOME/config.toml" <<TOML

[superlink.local-deployment-tls]
address = "127.0.0.1:$control"
root-certificates = "$certs/ca.crt"
TOML
flwr config list
out="$work/flwr-run.log"
flwr run "$repo/examples/numpy-fedavg" local-deployment-tls --stream \
  --run-config "num-server-rounds=$ROUNDS model-size=$MODEL_SIZE" 2>&1 | tee "$out"

echo "==> Result"
flwr ls local-deployment-tls 2>&1 | tail -n 5
grep -E "FEDAVG-ROUND" "$out" || true
if grep -q "FEDAVG-CHECK OK" "$out"; then
  grep "FEDAVG-CHECK OK" "$out"
  echo "federation: run completed with the predicted model"
else
  echo "federation: the run did not report FEDAVG-CHECK OK; logs in $work (set KEEP=1 to keep them)" >&2
  exit 1
fi
