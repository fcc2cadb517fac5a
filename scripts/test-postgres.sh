#!/usr/bin/env bash
# Starts (or stops) a throwaway PostgreSQL server for the test suite and
# prints the admin URL to export as P2P_TEST_POSTGRES_URL.
#
#   scripts/test-postgres.sh start   # installs PostgreSQL if missing, starts it
#   scripts/test-postgres.sh stop
#
# The cluster lives in ${P2P_PG_DIR:-/tmp/p2p-test-pg} and listens on
# 127.0.0.1:${P2P_PG_PORT:-55432} only, with trust auth: it is for tests.
set -euo pipefail

PG_DIR=${P2P_PG_DIR:-/tmp/p2p-test-pg}
PG_PORT=${P2P_PG_PORT:-55432}

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [[ -z "$dir" ]]; then
    echo "installing PostgreSQL from Debian's packages" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  echo "$dir"
}

run_as_postgres() {
  if [[ $(id -u) == 0 ]]; then
    su postgres -s /bin/bash -c "$*"
  else
    bash -c "$*"
  fi
}

case "${1:-start}" in
  start)
    BIN=$(pg_bin)
    if [[ ! -f "$PG_DIR/PG_VERSION" ]]; then
      mkdir -p "$PG_DIR"
      [[ $(id -u) == 0 ]] && chown postgres "$PG_DIR"
      run_as_postgres "'$BIN/initdb' -D '$PG_DIR' -U postgres --auth=trust -E UTF8 >/dev/null"
    fi
    if ! run_as_postgres "'$BIN/pg_ctl' -D '$PG_DIR' status >/dev/null 2>&1"; then
      run_as_postgres "'$BIN/pg_ctl' -D '$PG_DIR' -w -t 60 -l '$PG_DIR/server.log' \
        -o \"-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=off\" start >/dev/null"
    fi
    echo "postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    ;;
  stop)
    BIN=$(pg_bin)
    run_as_postgres "'$BIN/pg_ctl' -D '$PG_DIR' -m fast stop" || true
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
