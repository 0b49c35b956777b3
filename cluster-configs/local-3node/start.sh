#!/usr/bin/env bash
# Starts the three local nodes in the background, waits for a leader, prints the
# cluster status and keeps running until Ctrl-C, which stops all three cleanly.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${PGQUORUM_BIN:-$here/../../target/release/pgquorum}"
[ -x "$bin" ] || { echo "build first: cargo build --release (or set PGQUORUM_BIN)" >&2; exit 1; }
pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT INT TERM
for i in 1 2 3; do
  "$bin" node --config "$here/n$i.toml" 2>"$here/n$i.log" &
  pids+=($!)
done
for _ in $(seq 1 100); do
  if "$bin" ctl status 2>/dev/null | grep -q '^\*'; then break; fi
  sleep 0.1
done
"$bin" ctl status
echo
echo "logs: $here/n{1,2,3}.log   stop: Ctrl-C"
wait
