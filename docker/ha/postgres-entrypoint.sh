#!/bin/bash
# Entry point of flower-rs/postgres: makes the cluster on first start, then runs PostgreSQL in the
# foreground (Docker's stop signal, SIGTERM, is PostgreSQL's "smart" shutdown).
set -euo pipefail
user="${POSTGRES_USER:-flwr}"
pwfile="${POSTGRES_PASSWORD_FILE:-}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "$pwfile" ] || [ ! -r "$pwfile" ]; then
    echo "postgres: POSTGRES_PASSWORD_FILE must name a readable file holding the password of role '$user' (got '${pwfile}')" >&2
    exit 1
  fi
  echo "postgres: first start: making the cluster in $PGDATA (role and database '$user')"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" \
    --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # The role's own database, made before the server listens on the network.
  postgres --single -D "$PGDATA" postgres <<<"CREATE DATABASE \"$user\" OWNER \"$user\";" >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
