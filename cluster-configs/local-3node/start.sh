#!/usr/bin/env bash
# Starts the three local nodes in the background, waits until PostgreSQL has a
# primary and two streaming replicas, prints `pgquorum ctl list` and keeps running
# until Ctrl-C, which stops all three cleanly (PostgreSQL included).
#
# Data and logs go to $PGQUORUM_LOCAL_DIR (default: beside this script). When run as
# root, PostgreSQL runs as the `postgres` OS user, which must be able to reach the
# data dir: if it cannot reach this directory, /var/tmp/pgquorum-local is used.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${PGQUORUM_BIN:-$here/../../target/release/pgquorum}"
[ -x "$bin" ] || { echo "build first: cargo build --release (or set PGQUORUM_BIN)" >&2; exit 1; }
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v pg_config >/dev/null || {
  echo "no PostgreSQL server binaries found: apt-get install postgresql-15 (or set postgresql.bin_dir)" >&2; exit 1; }
work="${PGQUORUM_LOCAL_DIR:-$here}"
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "running as root: create the OS user PostgreSQL runs as first: useradd --system postgres" >&2; exit 1; }
  if [ -z "${PGQUORUM_LOCAL_DIR:-}" ] && ! su -s /bin/sh postgres -c "test -x '$here'" 2>/dev/null; then
    work=/var/tmp/pgquorum-local
  fi
fi
mkdir -p "$work"
chmod 755 "$work"
[ "$work" = "$here" ] || cp "$here"/n[123].toml "$work"/
pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT INT TERM
for i in 1 2 3; do
  "$bin" node --config "$work/n$i.toml" 2>"$work/n$i.log" &
  pids+=($!)
done
echo "waiting for a primary and two streaming replicas (initdb + 2 x pg_basebackup)..."
for _ in $(seq 1 600); do
  out="$("$bin" ctl list 2>/dev/null || true)"
  if grep -q Leader <<<"$out" && [ "$(grep -c streaming <<<"$out")" = 2 ]; then break; fi
  sleep 0.2
done
"$bin" ctl list
echo
echo "PostgreSQL: 127.0.0.1:5433-5435 (user postgres, password change-me); REST: 127.0.0.1:8009-8011"
echo "logs: $work/n{1,2,3}.log   data: $work/data   stop: Ctrl-C"
wait
