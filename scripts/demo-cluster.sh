#!/usr/bin/env bash
# The demo map on several processes sharing one map through Redis (what `make demo-cluster` runs):
# a redis-server of its own on a loopback port (no persistence), then PROCESSES demo processes
# on PORT, PORT+1, ... with the embedded SQLite store. Ctrl-C stops them all.
# Usage: scripts/demo-cluster.sh [extra flags for every process]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
port="${PORT:-8080}"
processes="${PROCESSES:-2}"
redis_port="${REDIS_PORT:-6399}"
state=".cache/demo-cluster"

say() { printf '\033[1m[demo-cluster]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[demo-cluster] %s\033[0m\n' "$*" >&2; exit 1; }

scripts/bootstrap.sh python web
command -v redis-server >/dev/null || scripts/bootstrap.sh system \
  || die "redis-server is needed (Debian: sudo apt-get install redis-server)"
mkdir -p "$state"

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --hz 100 \
  --dir "$state" --logfile "$root/$state/redis.log" --daemonize no &
pids+=($!)
for _ in $(seq 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$redis_port" ping >/dev/null 2>&1 || die "redis-server did not start: see $state/redis.log"
say "redis-server on 127.0.0.1:$redis_port"

for i in $(seq 0 $((processes - 1))); do
  .venv/bin/python -m synkworld.demo --port $((port + i)) --redis "redis://127.0.0.1:$redis_port/0" \
    --node "demo-$((port + i))" --db "$state/world.sqlite3" "$@" &
  pids+=($!)
done
say "open http://127.0.0.1:$port/ and http://127.0.0.1:$((port + 1))/: one map, $processes processes"
wait -n "${pids[@]}"
