#!/usr/bin/env bash
# .ci/postgres.sh -- a scratch PostgreSQL server on 127.0.0.1 for the relay's @pytest.mark.postgres tests (no systemd).
#
#   bash .ci/postgres.sh [start]         install (apt) if needed, initdb in $CI_PG_DIR, start, make role + db, print READY
#   bash .ci/postgres.sh url             the SQLAlchemy URL: postgresql+psycopg://balsam:...@127.0.0.1:PORT/balsam
#   bash .ci/postgres.sh stop            stop it and wipe the scratch dir
# Tuned for tests (fsync off). initdb/postgres refuse root, so as root they run as Debian's "postgres" user.
set -euo pipefail
ACTION=${1:-start}
DIR=${CI_PG_DIR:-/tmp/balsam-ci-postgres}
DATA=$DIR/data
USER_=balsam
PASS=${CI_PG_PASSWORD:-balsam-ci-only}
DB=balsam
die() { echo "FAILED postgres: $*" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
port() { cat "$DIR/port" 2>/dev/null || die "not started"; }
running() { [ -s "$DATA/PG_VERSION" ] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
  if [ -z "$(bindir)" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed (apt-get install postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  BIN=$(bindir)
  if ! running; then
    rm -rf "$DIR"; mkdir -p "$DIR"; chmod 0700 "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
    local p
    p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo "$p" > "$DIR/port"
    as_pg "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 --no-sync --auth-local=trust \
      --auth-host=scram-sha-256 >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DIR/log" -w -t 60 -s -o "-c listen_addresses=127.0.0.1 -p $p \
      -c unix_socket_directories=$DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start \
      || { tail -n 20 "$DIR/log" >&2; die "pg_ctl start failed"; }
  fi
  local su=(as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$(port)" -d postgres)
  "${su[@]}" -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='$USER_') THEN
      CREATE ROLE $USER_ LOGIN CREATEDB PASSWORD '$PASS'; END IF; END \$\$;" || die "cannot create the role"
  [ -n "$("${su[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'")" ] || "${su[@]}" -c "CREATE DATABASE $DB OWNER $USER_"
  echo "READY postgres $("$BIN/postgres" --version | awk '{print $3}') port=$(port) url=$(url)"
}
url() { echo "postgresql+psycopg://$USER_:$PASS@127.0.0.1:$(port)/$DB"; }
stop() {
  BIN=$(bindir)
  if [ -n "$BIN" ] && running; then as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -s stop || true; fi
  rm -rf "$DIR"; echo "STOPPED postgres"
}
case "$ACTION" in
  start) start ;; stop) stop ;; url) url ;;
  *) die "unknown action $ACTION (start|url|stop)" ;;
esac
