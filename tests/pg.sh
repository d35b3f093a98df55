#!/usr/bin/env bash
# A private PostgreSQL cluster on 127.0.0.1 for the black-box tests on the PostgreSQL backend
# (tests/run.sh; POSTERN_TEST_PG in tests/conftest.py). The role `mail` (password `mailpass`) may
# create databases: every test server gets a fresh one.
#   tests/pg.sh start DIR   -> prints HOST:PORT; the cluster lives in DIR
#   tests/pg.sh stop DIR
#   tests/pg.sh down DIR / up DIR   -> stopped and started again on the same port (failure tests)
# With PG_TLS=CERTDIR (server.pem and server.key in it) at start: TLS on, and connections over
# TCP must use it (hostssl only).
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?directory}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL (Debian package postgresql) is not installed" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$cmd" in
start)
  mkdir -p "$dir/run"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
  as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >/dev/null
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # durable like production (fsync on); many connections: every test server keeps a pool
  # the settings go to the data directory's configuration, so that `up` starts it the same way
  printf "port = %s\nunix_socket_directories = '%s'\nlisten_addresses = '127.0.0.1'\nmax_connections = 400\n" \
    "$port" "$dir/run" >> "$dir/data/postgresql.conf"
  if [ -n "${PG_TLS:-}" ]; then
    install -m 0600 -o postgres "$PG_TLS/server.key" "$dir/data/server.key" 2>/dev/null \
      || install -m 0600 "$PG_TLS/server.key" "$dir/data/server.key"
    cp "$PG_TLS/server.pem" "$dir/data/server.crt"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/data/server.crt"
    printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" >> "$dir/data/postgresql.conf"
    sed -i 's/^host /hostssl /' "$dir/data/pg_hba.conf"
  fi
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w start >/dev/null
  as_pg psql -h "$dir/run" -p "$port" -U postgres -qc "CREATE ROLE mail LOGIN CREATEDB PASSWORD 'mailpass'" postgres
  as_pg psql -h "$dir/run" -p "$port" -U postgres -qc "CREATE DATABASE mail OWNER mail" postgres
  echo "127.0.0.1:$port"
  ;;
stop)
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
  ;;
down)   # stop, keeping the data and the port (for failure tests): `up` starts it again
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  ;;
up)
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w start >/dev/null
  ;;
*) echo "usage: $0 start|stop|down|up DIR" >&2; exit 2;;
esac
