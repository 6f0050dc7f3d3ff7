#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for tests and CI (Debian): installs the `postgresql` package when its tools are
# missing, initialises a cluster in a temp dir owned by a non-root user (postgres refuses to run as root),
# starts it on 127.0.0.1:<free port> and prints shell `export` lines for TEST_POSTGRES_URL and MSK_PG_DIR.
#
#   eval "$(deploy/postgres-dev.sh start)"      # exports TEST_POSTGRES_URL and MSK_PG_DIR
#   deploy/postgres-dev.sh stop "$MSK_PG_DIR"    # stops the cluster and removes its directory
#
# Everything goes to stderr except the export lines, so `eval` sees only those.
set -euo pipefail

DB_NAME="${MSK_PG_DATABASE:-msk_cds_test}"
DB_USER="${MSK_PG_USER:-msk}"

log() { printf 'postgres-dev: %s\n' "$*" >&2; }

find_bindir() {
  # Debian keeps the server tools out of PATH (/usr/lib/postgresql/<major>/bin); take the newest major.
  local candidate
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
    if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

install_postgres() {
  if [ "$(id -u)" -ne 0 ]; then
    log "PostgreSQL server tools not found and not root: install the 'postgresql' package"
    exit 1
  fi
  log "installing Debian package postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
}

free_port() {
  python3 - <<'PY'
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
PY
}

# Run a command as the cluster owner: as-is when not root, else as the `postgres` system user.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$OWNER" -- "$@"
  else
    "$@"
  fi
}

start() {
  local bindir port dir base
  bindir="$(find_bindir || true)"
  if [ -z "$bindir" ]; then
    install_postgres
    bindir="$(find_bindir)"
  fi
  if [ "$(id -u)" -eq 0 ]; then
    OWNER=postgres
    id "$OWNER" >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin "$OWNER"
  else
    OWNER="$(id -un)"
  fi
  # As root the cluster owner is another user, who must be able to reach the directory: use /tmp itself.
  if [ "$(id -u)" -eq 0 ]; then base=/tmp; else base="${TMPDIR:-/tmp}"; fi
  dir="$(mktemp -d "$base/msk-pg.XXXXXX")"
  chmod 0755 "$dir"
  mkdir -p "$dir/data" "$dir/socket"
  if [ "$(id -u)" -eq 0 ]; then chown -R "$OWNER" "$dir"; fi
  port="${MSK_PG_PORT:-$(free_port)}"

  log "initdb in $dir/data ($bindir)"
  as_owner "$bindir/initdb" -D "$dir/data" -U "$DB_USER" --auth=trust --encoding=UTF8 --no-sync >/dev/null
  # Throwaway cluster: loopback only, no fsync, socket inside the temp dir (no /var/run/postgresql needed).
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/socket -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >&2
  as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB_NAME"
  echo "$bindir" > "$dir/bindir"
  echo "$OWNER" > "$dir/owner"
  log "ready on 127.0.0.1:$port database $DB_NAME"
  echo "export TEST_POSTGRES_URL=postgresql+psycopg://$DB_USER@127.0.0.1:$port/$DB_NAME"
  echo "export MSK_PG_DIR=$dir"
}

stop() {
  local dir="${1:-${MSK_PG_DIR:-}}"
  if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then
    log "no cluster directory given"
    exit 1
  fi
  OWNER="$(cat "$dir/owner")"
  as_owner "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  rm -rf "$dir"
  log "stopped and removed $dir"
}

case "${1:-start}" in
  start) start ;;
  stop) shift; stop "$@" ;;
  *) log "usage: $0 start | stop <dir>"; exit 2 ;;
esac
