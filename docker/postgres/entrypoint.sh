#!/bin/sh
# Entry point of the p2p/postgres image (Debian's PostgreSQL 15 in a root
# made by debootstrap, see build-image.sh). It honours the same variables
# as the usual PostgreSQL images: on first start it creates the cluster in
# $PGDATA with superuser $POSTGRES_USER (password $POSTGRES_PASSWORD,
# scram-sha-256 over TCP), the database $POSTGRES_DB, and runs every
# /docker-entrypoint-initdb.d/*.sql; then it runs postgres as PID 1's
# child-free replacement so `docker stop` shuts it down cleanly.
set -eu
BIN=/usr/lib/postgresql/15/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
USER_NAME=${POSTGRES_USER:-postgres}
DB=${POSTGRES_DB:-$USER_NAME}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "p2p/postgres: set POSTGRES_PASSWORD (the superuser's password)" >&2
    exit 1
  fi
  mkdir -p "$PGDATA" /run/postgresql
  chown postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  chown postgres "$pwfile"
  as_postgres "$BIN/initdb" -D "$PGDATA" -U "$USER_NAME" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  # A private start on the Unix socket only, for the set-up SQL.
  as_postgres "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w -t 60 start >/dev/null
  if [ "$DB" != "postgres" ]; then
    as_postgres "$BIN/psql" -v ON_ERROR_STOP=1 -q -U "$USER_NAME" -d postgres \
      -c "CREATE DATABASE \"$DB\""
  fi
  for sql in /docker-entrypoint-initdb.d/*.sql; do
    [ -e "$sql" ] || continue
    echo "p2p/postgres: running $sql"
    as_postgres "$BIN/psql" -v ON_ERROR_STOP=1 -q -U "$USER_NAME" -d "$DB" -f "$sql"
  done
  as_postgres "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  echo "p2p/postgres: cluster created in $PGDATA"
fi
mkdir -p /run/postgresql
chown postgres:postgres /run/postgresql
exec setpriv --reuid=postgres --regid=postgres --init-groups "$BIN/postgres" -D "$PGDATA"
